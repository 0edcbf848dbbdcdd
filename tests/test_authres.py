"""
Tests for L{AuthVerifier}: verdicts before the user's hooks, the
Authentication-Results header in what hooks and deliveries receive, policy,
composition, DNS trouble, and flat memory for a 50 MiB message.

The in-memory tests answer DNS from L{ZoneResolver} directly; L{RealDNSTests}
ask a C{twisted.names} server on 127.0.0.1 over UDP.
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import tempfile
import tracemalloc
from typing import Any, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import _authzone as z
from tests._dnszone import ZoneResolver, serve
from txsmtpsrv import AuthResults, AuthVerifier, MaildirDelivery, Reply, SMTPError, SMTPServer
from txsmtpsrv._authres._dns import make_resolver, parse_nameserver
from txsmtpsrv._authres._results import DKIMVerdict, SPFVerdict, authserv_id_of
from txsmtpsrv.testing import TestClient, make_server


class Recorder:
    """User hooks: remember what on_rcpt_to and on_data saw; optionally refuse on DMARC fail."""

    def __init__(self, refuse_dmarc_fail: bool = False) -> None:
        self.refuse = refuse_dmarc_fail
        self.rcpt_auth: List[Optional[AuthResults]] = []
        self.rcpt_dkim: List[Any] = []
        self.messages: List[bytes] = []
        self.auth: List[AuthResults] = []

    def on_rcpt_to(self, session: Any, address: Any) -> None:
        self.rcpt_auth.append(session.envelope.auth)
        self.rcpt_dkim.append(list(session.envelope.auth.dkim))

    async def on_data(self, session: Any, stream: Any) -> Any:
        auth = session.envelope.auth
        if self.refuse and auth.dmarc is not None and auth.dmarc.result == "fail":
            raise SMTPError(550, "DMARC says no", "5.7.1")
        self.messages.append(await stream.content())
        self.auth.append(auth)
        return Reply(250, "stored", "2.0.0")


def verifier(inner: Any = None, clock: Any = None, resolver: Any = None, **kw: Any) -> AuthVerifier:
    return AuthVerifier(inner, authserv_id="mx.test", resolver=resolver or ZoneResolver(z.zone()),
                        reactor=clock or Clock(), **kw)


def send(hooks: Any, mail_from: str, msg: bytes, helo: str = "client.test", peer: str = z.CLIENT_IP) -> Any:
    server, _ = make_server(hooks)
    client = TestClient(server, peer=(peer, 40000))
    return client.sendmail(mail_from, ["bob@example.org"], msg, ehlo=helo)


class HeaderAndVerdictTests(SynchronousTestCase):
    def test_all_pass(self) -> None:
        user = Recorder()
        msg = z.seal(z.sign(z.message()), "forwarder.test")
        replies = send(verifier(user), "alice@mail.test", msg)
        self.assertEqual((replies[-1].code, replies[-1].text), (250, "stored"))
        received = user.messages[0]
        head = received.partition(b"\r\n\r\n")[0]
        self.assertTrue(received.startswith(b"Authentication-Results: mx.test;\r\n\t"))
        self.assertTrue(received.endswith(msg.partition(b"\r\n\r\n")[2]))
        for needle in [b"smtp.mailfrom=alice@mail.test", b"dkim=pass header.d=mail.test header.s=sel",
                       b"arc=pass (i=1)", b"dmarc=pass (p=reject dis=none) header.from=mail.test",
                       b"smtp.helo=client.test"]:
            self.assertIn(needle, head)
        auth = user.auth[0]
        self.assertEqual(auth.spf_mailfrom, SPFVerdict("pass", "mailfrom", "mail.test", "alice@mail.test",
                                                       "mail.test: matched ip4"))
        self.assertEqual([(d.result, d.domain) for d in auth.dkim], [("pass", "mail.test")])
        assert auth.dmarc is not None and auth.arc is not None
        self.assertEqual((auth.dmarc.result, auth.dmarc.spf_aligned, auth.dmarc.dkim_aligned), ("pass", True, True))
        self.assertEqual(auth.arc.result, "pass")
        # What the user's hook got is the message with exactly our field in front.
        ours = auth.header("mx.test")
        self.assertEqual(received, ours + msg)

    def test_unsigned_message_is_dkim_none(self) -> None:
        user = Recorder()
        send(verifier(user), "alice@mail.test", z.message())
        self.assertEqual([(d.result, d.domain) for d in user.auth[0].dkim], [("none", "")])
        self.assertIn(b"dkim=none (no signature);", user.messages[0])

    def test_spf_known_at_rcpt(self) -> None:
        user = Recorder()
        send(verifier(user), "x@softfail.test", z.message(from_addr="x@softfail.test"))
        [auth] = user.rcpt_auth
        assert auth is not None and auth.spf_mailfrom is not None
        self.assertEqual(auth.spf_mailfrom.result, "softfail")
        self.assertEqual(user.rcpt_dkim, [[]])  # the body has not come yet when RCPT is answered

    def test_null_sender_uses_the_helo_identity(self) -> None:
        user = Recorder()
        send(verifier(user), "", z.message(), helo="helo.test")
        auth = user.auth[0]
        assert auth.spf_mailfrom is not None and auth.spf_helo is not None
        self.assertEqual((auth.spf_mailfrom.result, auth.spf_mailfrom.identity, auth.spf_mailfrom.sender),
                         ("pass", "mailfrom", "postmaster@helo.test"))
        self.assertEqual((auth.spf_helo.result, auth.spf_helo.domain), ("pass", "helo.test"))

    def test_each_question_is_asked_once(self) -> None:
        resolver = ZoneResolver(z.zone())
        send(verifier(Recorder(), resolver=resolver), "alice@mail.test", z.sign(z.message()), helo="mail.test")
        self.assertEqual(len(resolver.queries), len(set(resolver.queries)))
        self.assertIn(("_dmarc.mail.test", 16), resolver.queries)

    def test_every_spf_result_in_the_header(self) -> None:
        for domain, result in [("pass.test", "pass"), ("fail.test", "fail"), ("softfail.test", "softfail"),
                               ("neutral.test", "neutral"), ("nospf.test", "none"),
                               ("permerror.test", "permerror"), ("temperror.test", "temperror")]:
            user = Recorder()
            send(verifier(user), f"a@{domain}", z.message(from_addr=f"a@{domain}"))
            self.assertIn(f"spf={result} (".encode(), user.messages[0].split(b"\r\n\r\n")[0], domain)

    def test_dkim_failures_and_dmarc_fail(self) -> None:
        user = Recorder()
        msg = z.sign(z.message(from_addr="alice@mail.test")).replace(b"Hello there.", b"Hello, changed.")
        replies = send(verifier(user), "bounce@other.test", msg)
        self.assertEqual(replies[-1].code, 250)  # policy is off by default
        auth = user.auth[0]
        assert auth.dmarc is not None
        self.assertEqual([d.result for d in auth.dkim], ["fail"])
        self.assertEqual((auth.dmarc.result, auth.dmarc.policy, auth.dmarc.disposition), ("fail", "reject", "reject"))
        self.assertIn(b"dmarc=fail (p=reject dis=reject) header.from=mail.test", user.messages[0])

    def test_dmarc_strict_and_relaxed_alignment(self) -> None:
        user = Recorder()
        relaxed = z.sign(z.message(from_addr="alice@mail.test"), domain="sub.mail.test")
        send(verifier(user), "bounce@nospf.test", relaxed)
        strict = z.sign(z.message(from_addr="alice@strict.test"), domain="sub.strict.test")
        send(verifier(user), "bounce@nospf.test", strict)
        self.assertEqual([a.dmarc.result for a in user.auth if a.dmarc], ["pass", "fail"])

    def test_smtputf8_sender(self) -> None:
        user = Recorder()
        server, _ = make_server(verifier(user))
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        msg = z.message(from_addr="jörg@bücher.test").replace(b"\xc3\xb6", "ö".encode())
        replies = client.sendmail("jörg@bücher.test", ["bob@example.org"], msg, mail_params="SMTPUTF8")
        self.assertEqual(replies[-1].code, 250)
        auth = user.auth[0]
        assert auth.spf_mailfrom is not None and auth.dmarc is not None
        self.assertEqual((auth.spf_mailfrom.result, auth.dmarc.result, auth.dmarc.from_domain),
                         ("pass", "pass", "xn--bcher-kva.test"))
        head = user.messages[0].split(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(auth.header("mx.test")) and auth.header("mx.test").isascii())
        self.assertIn(b"header.from=xn--bcher-kva.test", head)

    def test_dmarc_temperror(self) -> None:
        user = Recorder()
        send(verifier(user), "a@nospf.test", z.message(from_addr="a@temp.test"))
        assert user.auth[0].dmarc is not None
        self.assertEqual(user.auth[0].dmarc.result, "temperror")

    def test_forged_results_with_our_id_are_removed(self) -> None:
        user = Recorder()
        forged = (b"Authentication-Results: MX.test; dkim=pass header.d=bank.example\r\n"
                  b"Authentication-Results: other.example; spf=pass\r\n" + z.message())
        send(verifier(user), "alice@mail.test", forged)
        received = user.messages[0]
        self.assertNotIn(b"bank.example", received)
        self.assertIn(b"Authentication-Results: other.example; spf=pass\r\n", received)
        self.assertEqual(received.count(b"Authentication-Results:"), 2)

    def test_only_some_methods(self) -> None:
        user = Recorder()
        send(verifier(user, verify=["dkim"]), "alice@mail.test", z.sign(z.message()))
        auth = user.auth[0]
        self.assertEqual((auth.spf_mailfrom, auth.dmarc, auth.arc), (None, None, None))
        self.assertEqual([d.result for d in auth.dkim], ["pass"])

    def test_bad_arguments(self) -> None:
        with self.assertRaises(ValueError):
            verifier(verify=["spf", "sender-id"])
        with self.assertRaises(ValueError):
            AuthVerifier(None, authserv_id="mx test", resolver=ZoneResolver({}), reactor=Clock())

    def test_authserv_id_of(self) -> None:
        self.assertEqual(authserv_id_of(b" (comment) Example.COM; spf=pass"), "example.com")
        self.assertEqual(authserv_id_of(b"\r\n\tmx.test 1; none"), "mx.test")

    def test_header_sanitises_values(self) -> None:
        auth = AuthResults(spf_mailfrom=SPFVerdict("fail", "mailfrom", "x", "evil\r\nBcc: me@x (y);", "r\r\n(z)"),
                           dkim=[DKIMVerdict("pass", "d;\"x", "s s")])
        field = auth.header("mx.test")
        self.assertEqual(field.count(b"\r\n"), 3)
        self.assertNotIn(b"\r\nBcc", field)


class PolicyTests(SynchronousTestCase):
    def test_user_hook_refuses_before_the_final_reply(self) -> None:
        user = Recorder(refuse_dmarc_fail=True)
        replies = send(verifier(user), "bounce@other.test", z.message(from_addr="alice@mail.test"))
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (550, "5.7.1"))
        self.assertEqual(user.messages, [])

    def test_reject_dmarc_option(self) -> None:
        user = Recorder()
        replies = send(verifier(user, reject_dmarc=True), "bounce@other.test", z.message(from_addr="alice@mail.test"))
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (550, "5.7.1"))
        self.assertEqual(user.messages, [])
        replies = send(verifier(user, reject_dmarc=True), "alice@mail.test", z.message(from_addr="alice@mail.test"))
        self.assertEqual(replies[-1].code, 250)  # SPF aligned: pass

    def test_reject_spf_fail_option(self) -> None:
        user = Recorder()
        replies = send(verifier(user, reject_spf_fail=True), "a@fail.test", z.message())
        self.assertEqual([(r.code, r.enhanced) for r in replies[1:3]], [(250, "2.1.0"), (550, "5.7.1")])
        self.assertEqual(user.rcpt_auth, [])  # refused before the user's hook
        replies = send(verifier(user, reject_spf_fail=True), "a@explained.test", z.message())
        self.assertEqual((replies[2].code, replies[2].text),
                         (550, "192.0.2.10 is not one of explained.test's mail servers (192.0.2.10, mx.test); see a"))
        replies = send(verifier(user, reject_spf_fail=True), "a@softfail.test", z.message())
        self.assertEqual(replies[-1].code, 250)


class CompositionTests(SynchronousTestCase):
    def test_alone(self) -> None:
        replies = send(verifier(), "alice@mail.test", z.sign(z.message()))
        self.assertEqual(replies[-1].code, 250)

    def test_in_front_of_a_delivery(self) -> None:
        path = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(f) for f in glob.glob(os.path.join(path, "*", "*"))])
        replies = send(verifier(MaildirDelivery(path, "mx.test")), "alice@mail.test", z.sign(z.message()))
        self.assertEqual(replies[-1].code, 250)
        [stored] = glob.glob(os.path.join(path, "new", "*"))
        with open(stored, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <alice@mail.test>\nReceived: from client.test"))
        self.assertIn(b"\nAuthentication-Results: mx.test;\n\tspf=pass", data)
        self.assertIn(b"dkim=pass", data)

    def test_other_hooks_pass_through(self) -> None:
        class Hooks:
            def on_helo(self, session: Any, hostname: str) -> None:
                if hostname == "bad.test":
                    raise SMTPError(550, "go away", "5.7.1")

            def on_data(self, session: Any, stream: Any) -> Reply:
                return Reply(250, "not read", "2.0.0")  # never reads: the replay is discarded

        v = verifier(Hooks())
        self.assertEqual(send(v, "alice@mail.test", z.message(), helo="bad.test")[0].code, 550)
        self.assertEqual(send(v, "alice@mail.test", z.message())[-1].text, "not read")
        self.assertFalse(hasattr(v, "on_auth"))

    def test_bdat(self) -> None:
        user = Recorder()
        server, _ = make_server(verifier(user))
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        msg = z.sign(z.message())
        half = len(msg) // 2
        client.send(b"EHLO client.test\r\nMAIL FROM:<alice@mail.test>\r\nRCPT TO:<bob@example.org>\r\n"
                    + f"BDAT {half}\r\n".encode() + msg[:half]
                    + f"BDAT {len(msg) - half} LAST\r\n".encode() + msg[half:])
        self.assertEqual([r.code for r in client.replies()], [250, 250, 250, 250, 250])
        self.assertEqual(user.messages, [user.auth[0].header("mx.test") + msg])
        self.assertEqual([d.result for d in user.auth[0].dkim], ["pass"])

    def test_lmtp_answers_per_recipient_pass_through(self) -> None:
        class PerRecipient:
            async def on_data(self, session: Any, stream: Any) -> List[Any]:
                await stream.content()
                return [None, SMTPError(452, "full", "4.2.2")]

        server, _ = make_server(verifier(PerRecipient()), lmtp=True)
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        client.send(b"LHLO client.test\r\nMAIL FROM:<alice@mail.test>\r\nRCPT TO:<a@example.org>\r\n"
                    b"RCPT TO:<b@example.org>\r\nDATA\r\n" + z.message() + b".\r\n")
        self.assertEqual([r.code for r in client.replies()][-2:], [250, 452])

    def test_message_too_large(self) -> None:
        server, _ = make_server(verifier(Recorder()), size=1000)
        client = TestClient(server)
        replies = client.sendmail("alice@mail.test", ["bob@example.org"], z.message(body=b"x" * 2000 + b"\r\n"))
        self.assertEqual(replies[-1].code, 552)


class DNSTroubleTests(SynchronousTestCase):
    def test_hanging_dns_gives_temperror(self) -> None:
        clock = Clock()
        data = z.zone()
        data["hang.test"] = [("HANG", None)]
        data["sel._domainkey.hang.test"] = [("HANG", None)]
        data["_dmarc.hang.test"] = [("HANG", None)]
        user = Recorder()
        server, _ = make_server(verifier(user, clock, ZoneResolver(data), dns_timeout=2.0))
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        replies = client.sendmail("a@hang.test", ["bob@example.org"], z.sign(z.message(from_addr="a@hang.test"),
                                                                              domain="hang.test", key_name="mail.test"))
        self.assertEqual([r.code for r in replies], [250, 250])  # RCPT waits for SPF
        clock.advance(2.0)
        replies = client.replies()
        self.assertEqual([r.code for r in replies][:2], [250, 354])
        clock.advance(2.0)
        clock.advance(2.0)
        replies += client.replies()
        self.assertEqual(replies[-1].code, 250)
        auth = user.auth[0]
        assert auth.spf_mailfrom is not None and auth.dmarc is not None
        self.assertEqual((auth.spf_mailfrom.result, [d.result for d in auth.dkim], auth.dmarc.result),
                         ("temperror", ["temperror"], "temperror"))

    def test_check_timeout_caps_everything(self) -> None:
        clock = Clock()
        data = z.zone()
        data["hang.test"] = [("HANG", None)]
        user = Recorder()
        server, _ = make_server(verifier(user, clock, ZoneResolver(data), dns_timeout=100, check_timeout=3))
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        client.sendmail("a@hang.test", ["bob@example.org"], z.message())
        clock.advance(3)
        clock.advance(3)
        replies = client.replies()
        self.assertEqual(replies[-1].code, 250)
        assert user.auth[0].spf_mailfrom is not None
        self.assertEqual(user.auth[0].spf_mailfrom.result, "temperror")

    def test_lookup_budget(self) -> None:
        user = Recorder()
        data = {f"chain{i}.test": [("TXT", f"v=spf1 include:chain{i + 1}.test -all")] for i in range(8)}
        resolver = ZoneResolver(data)
        send(verifier(user, resolver=resolver, dns_budget=3, verify=["spf"]), "a@chain0.test", z.message())
        assert user.auth[0].spf_mailfrom is not None
        self.assertEqual(user.auth[0].spf_mailfrom.result, "temperror")
        self.assertLessEqual(len(resolver.queries), 3)

    def test_parse_nameserver(self) -> None:
        self.assertEqual(parse_nameserver("127.0.0.1"), ("127.0.0.1", 53))
        self.assertEqual(parse_nameserver("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_nameserver("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_nameserver("::1"), ("::1", 53))
        for bad in ("", ":53", "host:port", "host:70000"):
            with self.assertRaises(ValueError):
                parse_nameserver(bad)


class MemoryTests(SynchronousTestCase):
    def test_50_mib_message_in_flat_memory(self) -> None:
        """A signed 50 MiB message is verified and replayed with a few MiB of Python memory at most."""
        import dkim

        line = b"0123456789abcdef " * 58 + b"\r\n"  # 988 bytes
        count = 50 * 1024 * 1024 // len(line)
        block = line * 64
        blocks, rest = divmod(count, 64)
        head = z.message(body=b"")
        whole = head + line * count
        signature = dkim.sign(whole, b"sel", b"mail.test", z.key("mail.test"), include_headers=[b"from", b"to"])
        del whole

        got = hashlib.sha256()
        seen: List[AuthResults] = []

        class Sink:
            async def on_data(self, session: Any, stream: Any) -> None:
                seen.append(session.envelope.auth)
                await stream.collect(got.update)

        clock = Clock()
        server, _ = make_server(verifier(Sink(), clock), size=0)
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        client.send(b"EHLO client.test\r\nMAIL FROM:<alice@mail.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        tracemalloc.start()
        try:
            client.send(signature + head)
            for _ in range(blocks):
                client.send(block)
            client.send(line * rest + b".\r\n")
            for _ in range(100000):
                if not clock.getDelayedCalls():
                    break
                clock.advance(0)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual([r.code for r in client.replies()][-1], 250)
        self.assertLess(peak, 8 * 1024 * 1024, f"peak {peak} bytes")
        [auth] = seen
        self.assertEqual([d.result for d in auth.dkim], ["pass"])
        expected = hashlib.sha256(auth.header("mx.test") + signature + head)
        for _ in range(blocks):
            expected.update(block)
        expected.update(line * rest)
        self.assertEqual(got.hexdigest(), expected.hexdigest())


class RealDNSTests(TestCase):
    """Over UDP to a twisted.names server on 127.0.0.1, with the real reactor."""

    def setUp(self) -> None:
        self.udp, self.zone = serve(z.zone(), reactor)
        self.addCleanup(self.udp.stopListening)
        self.nameserver = f"127.0.0.1:{self.udp.getHost().port}"

    async def transaction(self, hooks: Any, mail_from: str, msg: bytes) -> Any:
        server = SMTPServer(hooks, reactor=reactor, name="mx.test", disable_reverse_lookup=True)
        client = TestClient(server, peer=(z.CLIENT_IP, 40000))
        self.addCleanup(client.disconnect)
        client.sendmail(mail_from, ["bob@example.org"], msg)
        replies: List[Any] = []
        for _ in range(200):
            replies += client.replies()
            if len(replies) >= 3:
                return replies
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"no final reply: {replies}")

    async def test_over_udp(self) -> None:
        user = Recorder()
        resolver = make_resolver([self.nameserver], reactor)
        v = AuthVerifier(user, authserv_id="mx.test", resolver=resolver)
        replies = await self.transaction(v, "alice@mail.test", z.seal(z.sign(z.message()), "forwarder.test"))
        self.assertEqual(replies[-1].code, 250)
        head = user.messages[0].split(b"\r\n\r\n")[0]
        for needle in [b"spf=pass", b"dkim=pass", b"arc=pass", b"dmarc=pass"]:
            self.assertIn(needle, head)
        self.assertTrue(any(name == "sel._domainkey.mail.test" for name, _ in self.zone.queries))

    async def test_many_signatures_are_checked_in_a_thread(self) -> None:
        """Over inline_signatures signature fields, dkimpy runs in the thread pool, not the reactor thread."""
        import threading

        from txsmtpsrv._authres import _verify

        threads: List[str] = []
        original = _verify.verify_dkim

        def recording(*args: Any, **kw: Any) -> Any:
            threads.append(threading.current_thread().name)
            return original(*args, **kw)

        self.patch(_verify, "verify_dkim", recording)
        user = Recorder()
        v = AuthVerifier(user, authserv_id="mx.test", resolver=make_resolver([self.nameserver], reactor))
        once = z.seal(z.sign(z.sign(z.message()), domain="other.test"), "forwarder.test")
        twice = z.seal(once, "second.test", srv_id="second.test", results="arc=pass")  # 2 DKIM + 6 ARC fields
        await self.transaction(v, "alice@mail.test", twice)
        await self.transaction(v, "alice@mail.test", z.sign(z.message()))  # 1 field: inline
        auth = user.auth[0]
        assert auth.arc is not None
        self.assertEqual(([d.result for d in auth.dkim], auth.arc.result, auth.arc.instances),
                         (["pass", "pass"], "pass", 2))
        self.assertNotEqual(threads[0], threading.current_thread().name)
        self.assertEqual(threads[1], threading.current_thread().name)

    async def test_reverse_lookups_share_the_resolver(self) -> None:
        """What --nameserver gives SMTPServer(resolver=...) for client host names."""
        from txsmtpsrv._rdns import reverse_lookup

        self.zone.zone["10.2.0.192.in-addr.arpa"] = [("PTR", "client.mail.test")]
        resolver = make_resolver([self.nameserver], reactor)
        self.assertEqual(await reverse_lookup(z.CLIENT_IP, resolver, 2.0, reactor), "client.mail.test")

    async def test_servfail_and_silent_server(self) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        user = Recorder()
        resolver = make_resolver([f"127.0.0.1:{silent.getsockname()[1]}"], reactor)
        v = AuthVerifier(user, authserv_id="mx.test", resolver=resolver, dns_timeout=0.3)
        replies = await self.transaction(v, "alice@mail.test", z.sign(z.message()))
        self.assertEqual(replies[-1].code, 250)
        auth = user.auth[0]
        assert auth.spf_mailfrom is not None and auth.dmarc is not None
        self.assertEqual((auth.spf_mailfrom.result, auth.dkim[0].result, auth.dmarc.result),
                         ("temperror", "temperror", "temperror"))
        user = Recorder()
        v = AuthVerifier(user, authserv_id="mx.test", resolver=make_resolver([self.nameserver], reactor))
        await self.transaction(v, "a@temperror.test", z.sign(z.message(), selector="temp", key_name="mail.test"))
        auth = user.auth[0]
        assert auth.spf_mailfrom is not None
        self.assertEqual((auth.spf_mailfrom.result, auth.dkim[0].result), ("temperror", "temperror"))
