# -*- test-case-name: tests.test_tls_dialogue -*-
"""
STARTTLS and implicit TLS in the SMTP dialogue, end to end: real sockets on
127.0.0.1, real OpenSSL. What is checked is what a client on the network
sees: advertisement, the RFC 3207 state reset, the CVE-2011-0411 injection
defence, needs_upgrade, the handshake timeout, the greeting under implicit
TLS and the development certificate there, the C{on_secure} hook and
REQUIRETLS.

The server is an L{SMTPServer} listening on port 0; clients are Python's
C{ssl}/C{smtplib} run in reactor worker threads (every socket operation has a
timeout and every wait on a thread is bounded); see C{tests/_tls.py}.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from typing import Any, List, Tuple

from cryptography import x509
from twisted.internet import reactor, task
from twisted.logger import LogLevel, capturedLogs

from tests._certs import common_name
from tests._tls import (
    IO_TIMEOUT,
    AuthRecorder,
    Conn,
    Recorder,
    Reply,
    _TLSTestCase,
    client_context,
    esc,
    keywords,
    material,
    mx_config,
)
from txsmtpsrv import SMTPError


class StartTLSTests(_TLSTestCase):
    """STARTTLS (RFC 3207) with real handshakes."""

    async def test_smtplib_starttls_advertisement(self) -> None:
        """smtplib: STARTTLS offered in plaintext; after starttls() EHLO shows REQUIRETLS and AUTH, not STARTTLS."""
        hooks = AuthRecorder()
        _, port = await self.start(hooks)

        def client() -> Tuple[dict, dict, Tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.ehlo("client.test")
                before = dict(s.esmtp_features)
                s.starttls(context=client_context())
                s.ehlo("client.test")
                after = dict(s.esmtp_features)
                login = s.login("alice", "pw")
                s.sendmail("a@example.test", ["r@example.test"], b"Subject: t\r\n\r\nhi\r\n")
                return before, after, login

        before, after, login = await self.thread(client)
        self.assertIn("starttls", before)
        self.assertNotIn("requiretls", before)
        self.assertNotIn("auth", before)
        self.assertNotIn("starttls", after)
        self.assertIn("requiretls", after)
        self.assertEqual(after.get("auth", "").split(), ["PLAIN", "LOGIN"])
        self.assertEqual(login[0], 235)
        [(kind, secure, body)] = hooks.messages
        self.assertEqual((kind, secure), ("ESMTPSA", True))
        [info] = hooks.secure
        self.assertTrue(info.version.startswith("TLSv1."))

    async def test_state_forgotten_after_starttls(self) -> None:
        """After STARTTLS: the open transaction and the plaintext AUTH are gone (MAIL, RCPT: 530)."""
        hooks = AuthRecorder()
        _, port = await self.start(hooks, allow_insecure_auth=True)

        def client() -> List[Any]:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.ehlo("client.test")
                out: List[Any] = [s.login("alice", "pw")[0], s.mail("a@example.test")[0],
                                  s.rcpt("r@example.test")[0]]
                s.starttls(context=client_context())
                out.append(s.docmd("MAIL", "FROM:<a@example.test>"))  # no EHLO yet
                out.append(s.docmd("RCPT", "TO:<r@example.test>"))  # transaction gone
                s.ehlo("client.test")
                out.append(s.docmd("MAIL", "FROM:<a@example.test>"))  # authentication gone
                return out

        out = await self.thread(client)
        self.assertEqual(out[:3], [235, 250, 250])
        # Authentication is gone with TLS, so MAIL and RCPT are refused with 530 (RFC 4954 6, issue 10).
        self.assertEqual(out[3][0], 530)
        self.assertTrue(out[3][1].startswith(b"5.7.0"))
        self.assertEqual(out[4][0], 530)
        self.assertEqual(out[5][0], 530)
        self.assertEqual(hooks.mail, ["a@example.test"])

    async def test_plaintext_injection_is_discarded(self) -> None:
        """
        STARTTLS and MAIL in ONE segment, then the handshake: MAIL is never executed.

        This is the CVE-2011-0411 class (Postfix, qmail, Cyrus ... in 2011;
        Twisted's own twisted.mail.smtp.ESMTP still has it): a server that
        keeps the plaintext it had already read after STARTTLS runs it as if
        it came inside TLS, letting a man in the middle inject commands into
        the protected session.
        """
        hooks = Recorder()
        _, port = await self.start(hooks)

        def client() -> List[Reply]:
            conn = Conn(port)
            try:
                conn.cmd("EHLO client.test")
                conn.send(b"STARTTLS\r\nMAIL FROM:<x@y.test>\r\n")  # one send, TCP_NODELAY: one segment
                ready = conn.reply()
                # Had the server answered MAIL in plaintext, these bytes would
                # break the handshake here; had it kept them, NOOP's reply
                # would come second.
                assert conn._buf == b""
                conn.sock = client_context().wrap_socket(conn.sock)
                return [ready, conn.cmd("NOOP"), conn.cmd("MAIL FROM:<x@y.test>"), conn.cmd("RCPT TO:<r@y.test>")]
            finally:
                conn.close()

        with capturedLogs() as events:
            ready, noop, mail, rcpt = await self.thread(client)
        # The server read MAIL together with STARTTLS and dropped exactly it.
        [dropped] = [e for e in events if "discarded" in e.get("log_format", "")]
        self.assertEqual(dropped["n"], len(b"MAIL FROM:<x@y.test>\r\n"))
        self.assertEqual(esc(ready), (220, "2.0.0"))
        self.assertEqual(esc(noop), (250, "2.0.0"))
        self.assertEqual(esc(mail), (503, "5.5.1"))  # as if nothing was sent: no EHLO inside TLS yet
        self.assertEqual(esc(rcpt), (503, "5.5.1"))
        self.assertEqual(hooks.mail, [])
        self.assertEqual(len(hooks.secure), 1)

    async def test_starttls_errors(self) -> None:
        """STARTTLS with an argument: 501 5.5.4; inside TLS: 503 5.5.1; the session goes on."""
        _, port = await self.start(Recorder())

        def client() -> List[Reply]:
            conn = Conn(port)
            try:
                out = [conn.cmd("EHLO client.test"), conn.cmd("STARTTLS please")]
                conn.starttls(client_context())
                out += [conn.cmd("EHLO client.test"), conn.cmd("STARTTLS"), conn.cmd("NOOP")]
                return out
            finally:
                conn.close()

        ehlo, arg, ehlo2, again, noop = await self.thread(client)
        self.assertIn("STARTTLS", keywords(ehlo))
        self.assertEqual(esc(arg), (501, "5.5.4"))
        self.assertNotIn("STARTTLS", keywords(ehlo2))
        self.assertEqual(esc(again), (503, "5.5.1"))
        self.assertEqual(noop[0], 250)

    async def test_hide_starttls(self) -> None:
        """hide_starttls: not advertised, 502 5.5.1."""
        _, port = await self.start(Recorder(), hide_starttls=True)

        def client() -> List[Reply]:
            conn = Conn(port)
            try:
                return [conn.cmd("EHLO client.test"), conn.cmd("STARTTLS"), conn.cmd("NOOP")]
            finally:
                conn.close()

        ehlo, starttls, noop = await self.thread(client)
        self.assertNotIn("STARTTLS", keywords(ehlo))
        self.assertEqual(esc(starttls), (502, "5.5.1"))
        self.assertEqual(noop[0], 250)

    async def test_needs_upgrade(self) -> None:
        """needs_upgrade: MAIL and AUTH get 530 5.7.0 before STARTTLS and work after."""
        hooks = AuthRecorder()
        _, port = await self.start(hooks, needs_upgrade=True, allow_insecure_auth=True)

        def client() -> List[Any]:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.ehlo("client.test")
                out: List[Any] = [s.docmd("MAIL", "FROM:<a@example.test>"),
                                  s.docmd("AUTH", "PLAIN AGFsaWNlAHB3")]  # \0alice\0pw
                s.starttls(context=client_context())
                s.ehlo("client.test")
                out.append(s.login("alice", "pw")[0])
                out.append(s.mail("a@example.test")[0])
                return out

        mail, auth, login, mail2 = await self.thread(client)
        self.assertEqual(mail[0], 530)
        self.assertTrue(mail[1].startswith(b"5.7.0"))
        self.assertEqual(auth[0], 530)
        self.assertTrue(auth[1].startswith(b"5.7.0"))
        self.assertEqual((login, mail2), (235, 250))
        self.assertEqual(hooks.mail, ["a@example.test"])

    async def test_starttls_handshake_timeout(self) -> None:
        """A client that says STARTTLS and then nothing is dropped after handshake_timeout."""
        _, port = await self.start(Recorder(), tls=mx_config(handshake_timeout=0.5))

        def client() -> Tuple[float, str]:
            conn = Conn(port)
            try:
                assert conn.cmd("STARTTLS")[0] == 220
                start = time.monotonic()
                try:
                    data = conn.sock.recv(100)
                    outcome = f"recv {data!r}"
                except ConnectionResetError:
                    outcome = "reset"
                return time.monotonic() - start, outcome
            finally:
                conn.close()

        elapsed, outcome = await self.thread(client)
        self.assertIn(outcome, ("recv b''", "reset"))
        self.assertGreater(elapsed, 0.3)
        self.assertLess(elapsed, IO_TIMEOUT - 1)


class ImplicitTLSTests(_TLSTestCase):
    """secure=True: TLS from the first byte (port 465 style)."""

    async def test_smtp_ssl(self) -> None:
        """SMTP_SSL: greeting after the handshake, no STARTTLS, AUTH offered; ESMTPS then ESMTPSA."""
        hooks = AuthRecorder()
        _, port = await self.start(hooks, secure=True, auth_optional=True)

        def client() -> Tuple[Any, dict, List[int]]:
            s = smtplib.SMTP_SSL(context=client_context(), timeout=IO_TIMEOUT)
            s._host = "127.0.0.1"  # type: ignore[attr-defined]  # connect() alone leaves it "" (no SNI for IPs anyway)
            try:
                greeting = s.connect("127.0.0.1", port)
                version = s.sock.version()
                s.ehlo("client.test")
                features = dict(s.esmtp_features)
                s.sendmail("a@example.test", ["r@example.test"], b"Subject: 1\r\n\r\none\r\n")
                codes = [s.login("alice", "pw")[0], s.docmd("STARTTLS")[0]]
                s.sendmail("a@example.test", ["r@example.test"], b"Subject: 2\r\n\r\ntwo\r\n")
                return (greeting, version), features, codes
            finally:
                s.close()

        (greeting, version), features, codes = await self.thread(client)
        self.assertEqual(greeting, (220, b"mx.test ESMTP"))
        self.assertTrue(version.startswith("TLSv1."))
        self.assertNotIn("starttls", features)
        self.assertIn("requiretls", features)
        self.assertEqual(features.get("auth", "").split(), ["PLAIN", "LOGIN"])
        self.assertEqual(codes, [235, 503])
        self.assertEqual([(k, s) for k, s, _ in hooks.messages], [("ESMTPS", True), ("ESMTPSA", True)])
        [info] = hooks.secure
        self.assertEqual(info.version, version)

    async def test_handshake_timeout(self) -> None:
        """A client that connects to the implicit-TLS port and sends nothing is dropped after handshake_timeout."""
        _, port = await self.start(Recorder(), secure=True, tls=mx_config(handshake_timeout=0.5))

        def client() -> Tuple[float, str]:
            sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
            start = time.monotonic()
            try:
                try:
                    outcome = f"recv {sock.recv(100)!r}"
                except ConnectionResetError:
                    outcome = "reset"
                return time.monotonic() - start, outcome
            finally:
                sock.close()

        elapsed, outcome = await self.thread(client)
        self.assertIn(outcome, ("recv b''", "reset"))  # no greeting in plaintext, just the close
        self.assertGreater(elapsed, 0.3)
        self.assertLess(elapsed, IO_TIMEOUT - 1)

    async def test_on_connect_rejection_after_handshake(self) -> None:
        """An on_connect rejection reaches the client inside TLS, as the first reply."""

        class Hooks:
            def on_connect(self, session: Any) -> None:
                raise SMTPError(554, "go away", "5.7.1")

        _, port = await self.start(Hooks(), secure=True)

        def client() -> Tuple[Reply, str]:
            conn = Conn(port, client_context())
            try:
                try:
                    conn.reply()
                    rest = "more"
                except (EOFError, OSError):
                    rest = "closed"
                return conn.greeting, rest
            finally:
                conn.close()

        self.assertEqual(await self.thread(client), ((554, ["5.7.1 go away"]), "closed"))

    async def test_slow_on_connect_does_not_use_up_handshake_timeout(self) -> None:
        """A client that handshakes at once is not dropped because on_connect takes longer than handshake_timeout."""

        class Hooks:
            def on_connect(self, session: Any) -> Any:
                return task.deferLater(reactor, 1.0, lambda: None)  # e.g. a DNSBL lookup

        _, port = await self.start(Hooks(), secure=True, tls=mx_config(handshake_timeout=0.5))

        def client() -> Any:
            try:
                conn = Conn(port, client_context())
            except (OSError, EOFError, ssl.SSLError) as e:
                return f"{type(e).__name__}: {e}"
            try:
                return conn.greeting
            finally:
                conn.close()

        self.assertEqual(await self.thread(client), (220, ["mx.test ESMTP"]))

    async def test_development_certificate_implicit(self) -> None:
        """secure=True without certificates: a development certificate, with a warning, at listen()."""
        with capturedLogs() as events:
            _, port = await self.start(Recorder(), secure=True, tls=None)
        self.assertTrue(any(e.get("log_level") == LogLevel.warn and "development" in e.get("log_format", "")
                            for e in events))

        def client() -> x509.Certificate:
            conn = Conn(port, client_context(verify=False))
            try:
                return conn.peer_cert()
            finally:
                conn.close()

        cert = await self.thread(client)
        self.assertEqual(common_name(cert), "mx.test")
        self.assertEqual(cert.issuer, cert.subject)


class OnSecureTests(_TLSTestCase):
    """The on_secure hook against real handshakes."""

    async def test_sees_tls_facts(self) -> None:
        """on_secure sees version, cipher and SNI name; session.secure is already True."""
        seen: List[Any] = []

        class Hooks:
            async def on_secure(self, session: Any) -> None:
                seen.append((session.secure, session.tls))

        m = material()
        _, port = await self.start(Hooks(), tls=mx_config(sni={"a.test": (m.a.key_pem, m.a.cert_pem)}))

        def client() -> Tuple[str, str]:
            conn = Conn(port)
            try:
                conn.starttls(client_context(), "a.test")
                assert conn.cmd("NOOP")[0] == 250
                return conn.sock.version(), conn.sock.cipher()[0]  # type: ignore[attr-defined]
            finally:
                conn.close()

        version, cipher = await self.thread(client)
        [(secure, info)] = seen
        self.assertTrue(secure)
        self.assertEqual((info.version, info.cipher, info.server_name), (version, cipher, "a.test"))
        self.assertEqual(info.version, "TLSv1.3")
        self.assertIsNone(info.peer_certificate)

    async def test_rejects(self) -> None:
        """An SMTPError from on_secure is the next reply and the connection closes."""

        class Hooks:
            def on_secure(self, session: Any) -> None:
                raise SMTPError(554, "No TLS for you", "5.7.1")

        _, port = await self.start(Hooks())

        def client() -> Tuple[Reply, str]:
            conn = Conn(port)
            try:
                conn.starttls(client_context())
                conn.send(b"EHLO client.test\r\n")
                reply = conn.reply()
                try:
                    conn.reply()
                    rest = "more"
                except (EOFError, OSError):
                    rest = "closed"
                return reply, rest
            finally:
                conn.close()

        reply, rest = await self.thread(client)
        self.assertEqual(reply, (554, ["5.7.1 No TLS for you"]))
        self.assertEqual(rest, "closed")


class RequireTLSTests(_TLSTestCase):
    """REQUIRETLS (RFC 8689) over real connections."""

    async def test_requiretls(self) -> None:
        """Not offered in plaintext and refused with 530 5.7.10; offered inside TLS and recorded."""
        hooks = Recorder()
        _, port = await self.start(hooks)

        def client() -> List[Any]:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.ehlo("client.test")
                out: List[Any] = [s.has_extn("requiretls"), s.mail("a@example.test", ["REQUIRETLS"])]
                s.starttls(context=client_context())
                s.ehlo("client.test")
                out += [s.has_extn("requiretls"), s.mail("a@example.test", ["REQUIRETLS"])[0],
                        s.rcpt("r@example.test")[0]]
                return out

        plain_offered, plain_mail, tls_offered, mail, rcpt = await self.thread(client)
        self.assertFalse(plain_offered)
        self.assertEqual(plain_mail[0], 530)
        self.assertTrue(plain_mail[1].startswith(b"5.7.10"))
        self.assertTrue(tls_offered)
        self.assertEqual((mail, rcpt), (250, 250))
        self.assertEqual(hooks.rcpt, [("r@example.test", True)])

    async def test_hide_requiretls(self) -> None:
        """hide_requiretls: not offered inside TLS either, and the parameter is refused."""
        hooks = Recorder()
        _, port = await self.start(hooks, secure=True, hide_requiretls=True)

        def client() -> Tuple[bool, int]:
            with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(), timeout=IO_TIMEOUT) as s:
                s.ehlo("client.test")
                return s.has_extn("requiretls"), s.mail("a@example.test", ["REQUIRETLS"])[0]

        offered, code = await self.thread(client)
        self.assertFalse(offered)
        self.assertEqual(code, 555)
        self.assertEqual(hooks.mail, [])
