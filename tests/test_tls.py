# -*- test-case-name: tests.test_tls -*-
"""
STARTTLS and implicit TLS end to end: real sockets on 127.0.0.1, real OpenSSL.

The server is an L{SMTPServer} listening on port 0; clients are Python's
C{ssl}/C{smtplib} run in reactor worker threads (every socket operation has a
timeout and every wait on a thread is bounded), plus C{swaks} and
C{openssl s_client}. What is checked is what a client on the network sees:
advertisement, the RFC 3207 state reset, the CVE-2011-0411 injection
defence, certificate choice (files, PEM bytes, chains, SNI, reload), client
certificates, version limits, the handshake timeout, the development
certificate, the C{on_secure} hook and REQUIRETLS.
"""

from __future__ import annotations

import functools
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from cryptography import x509
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from tests import _certs
from tests._certs import CA, Leaf, common_name, make_ca, pem_dir, write_leaf, write_pem
from tests._support import tool_path
from txsmtpsrv import SMTPError, SMTPServer
from txsmtpsrv._tls import TLSConfig

IO_TIMEOUT = 5.0  # seconds; every blocking socket operation of a test client
THREAD_TIMEOUT = 20.0  # seconds; every wait for a client thread

Reply = Tuple[int, List[str]]


# --------------------------------------------------------------------------
# Certificates, generated once per run


@dataclass(frozen=True)
class Material:
    """Keys and certificates for every test; some also written to files."""

    dir: str
    ca: CA
    inter: CA
    foreign: CA
    mx: Leaf  # issued by the intermediate: only verifies if the chain is sent
    mx2: Leaf  # for reload
    a: Leaf
    b: Leaf
    cb: Leaf
    client: Leaf
    foreign_client: Leaf
    paths: dict = field(default_factory=dict)


@functools.cache
def material() -> Material:
    d = pem_dir("txsmtpsrv-test-tls-")
    ca = make_ca("SMTP Test Root CA")
    inter = ca.intermediate("SMTP Test Intermediate CA")
    foreign = make_ca("Foreign CA")
    m = Material(
        dir=d, ca=ca, inter=inter, foreign=foreign,
        mx=inter.issue("mx.test"),
        mx2=ca.issue("mx2.test"),
        a=ca.issue("a.test"),
        b=ca.issue("b.test"),
        cb=ca.issue("cb.test"),
        client=ca.issue("client.test", client=True),
        foreign_client=foreign.issue("intruder.test", client=True),
    )
    for name in ("mx", "client", "foreign_client"):
        m.paths.update(write_leaf(d, name, getattr(m, name)))
    return m


def mx_config(**kw: Any) -> TLSConfig:
    """mx.test (with its intermediate) from PEM bytes, plus C{kw}."""
    m = material()
    kw.setdefault("key", m.mx.key_pem)
    kw.setdefault("cert", m.mx.cert_pem)
    kw.setdefault("chain", m.mx.chain_pem)
    return TLSConfig(**kw)


def client_context(*, verify: bool = True, cert: Optional[str] = None,
                   max_version: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
    """A client context trusting the test root, presenting the C{cert} client certificate (by name) if given."""
    m = material()
    files = (m.paths[cert + ".crt"], m.paths[cert + ".key"]) if cert is not None else None
    return _certs.client_context(m.ca, verify=verify, cert=files, max_version=max_version)


# --------------------------------------------------------------------------
# A blocking SMTP client for worker threads


class Conn:
    """A minimal SMTP client on a raw socket (TLS via C{ssl}), for full control over bytes."""

    def __init__(self, port: int, ctx: Optional[ssl.SSLContext] = None, sni: Optional[str] = None,
                 greeting: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = raw
        self._buf = b""
        try:
            if ctx is not None:
                self.sock = ctx.wrap_socket(raw, server_hostname=sni)
            self.greeting = self.reply() if greeting else None
        except BaseException:
            self.close()
            raise

    def _line(self) -> str:
        while b"\n" not in self._buf:
            if len(self._buf) > 100_000:
                raise AssertionError(f"no line end in {self._buf[:100]!r}")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("server closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8")

    def reply(self) -> Reply:
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> Reply:
        self.send(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def starttls(self, ctx: ssl.SSLContext, sni: Optional[str] = None) -> Reply:
        reply = self.cmd("STARTTLS")
        assert reply[0] == 220, reply
        assert self._buf == b"", self._buf  # nothing in plaintext after the 220
        self.sock = ctx.wrap_socket(self.sock, server_hostname=sni)
        return reply

    def peer_cert(self) -> x509.Certificate:
        der = self.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        return x509.load_der_x509_certificate(der)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def esc(reply: Reply) -> Tuple[int, str]:
    """The code and enhanced status code of a reply."""
    return reply[0], reply[1][0].split(" ", 1)[0]


def keywords(reply: Reply) -> List[str]:
    """EHLO extension keywords."""
    return [line.split(" ", 1)[0].upper() for line in reply[1][1:]]


def handshake_error(port: int, ctx: ssl.SSLContext, starttls: bool, sni: Optional[str] = None) -> Optional[str]:
    """
    Try TLS and one command; the error the client saw, or None if all worked.

    With TLS 1.3 the client finishes its side of the handshake before the
    server has checked the client certificate, so a refusal shows up on the
    first read after it: that read is part of the attempt.
    """
    conn = None
    try:
        if starttls:
            conn = Conn(port)
            conn.starttls(ctx, sni)
        else:
            conn = Conn(port, ctx, sni)
        reply = conn.cmd("NOOP")
        assert reply[0] == 250, reply
        return None
    except (OSError, EOFError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------
# Hooks


class Recorder:
    """Hooks that record what they see."""

    def __init__(self) -> None:
        self.mail: List[str] = []
        self.rcpt: List[Tuple[str, bool]] = []
        self.secure: List[Any] = []  # TLSInfo per handshake
        self.messages: List[Tuple[str, bool, bytes]] = []

    def on_secure(self, session: Any) -> None:
        self.secure.append(session.tls)

    def on_mail_from(self, session: Any, address: Any) -> None:
        self.mail.append(address.address)

    def on_rcpt_to(self, session: Any, address: Any) -> None:
        self.rcpt.append((address.address, session.envelope.requiretls))

    async def on_data(self, session: Any, stream: Any) -> None:
        body = await stream.content()
        self.messages.append((session.transmission_type, session.secure, body))


class AuthRecorder(Recorder):
    """Recorder that accepts alice / pw."""

    def on_auth(self, session: Any, credentials: Any) -> Any:
        if credentials.username == "alice" and credentials.validate_password("pw"):
            return "alice"
        return None


# --------------------------------------------------------------------------


class _TLSTestCase(unittest.TestCase):
    """Starts servers on 127.0.0.1:0 and runs blocking clients in threads."""

    timeout = 60

    async def start(self, hooks: Any = None, **options: Any) -> Tuple[SMTPServer, int]:
        options.setdefault("name", "mx.test")
        options.setdefault("tls", mx_config())
        options.setdefault("close_timeout", 2.0)
        server = SMTPServer(hooks, **options)
        port = await server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.close)
        return server, port.getHost().port

    def thread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> "defer.Deferred[Any]":
        return deferToThread(f, *args, **kw).addTimeout(THREAD_TIMEOUT, reactor)


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


class CertificateTests(_TLSTestCase):
    """Where certificates come from and which one a client gets."""

    def fetch(self, port: int, *, starttls: bool = True, sni: Optional[str] = None,
              verify: bool = True) -> "defer.Deferred[Tuple[str, Reply]]":
        """The CN of the certificate a client gets, and the reply to NOOP inside TLS."""
        def client() -> Tuple[str, Reply]:
            ctx = client_context(verify=verify)
            if starttls:
                conn = Conn(port)
                try:
                    conn.starttls(ctx, sni)
                    return common_name(conn.peer_cert()), conn.cmd("NOOP")
                finally:
                    conn.close()
            conn = Conn(port, ctx, sni)
            try:
                return common_name(conn.peer_cert()), conn.cmd("NOOP")
            finally:
                conn.close()
        return self.thread(client)

    async def test_pem_paths(self) -> None:
        """key, cert and chain as PEM file paths; the chain is sent (the client trusts only the root)."""
        p = material().paths
        _, port = await self.start(Recorder(), tls=TLSConfig(key=p["mx.key"], cert=p["mx.crt"], chain=p["mx.chain"]))
        cn, noop = await self.fetch(port)
        self.assertEqual((cn, noop[0]), ("mx.test", 250))

    async def test_pem_bytes(self) -> None:
        """key, cert and chain as PEM bytes, for implicit TLS."""
        _, port = await self.start(Recorder(), secure=True, tls=mx_config())
        cn, noop = await self.fetch(port, starttls=False)
        self.assertEqual((cn, noop[0]), ("mx.test", 250))

    async def test_options_as_dict(self) -> None:
        """tls given as a dict of TLSConfig fields works the same."""
        m = material()
        _, port = await self.start(Recorder(), tls={"key": m.mx.key_pem, "cert": m.mx.cert_pem,
                                                    "chain": m.mx.chain_pem})
        cn, _ = await self.fetch(port)
        self.assertEqual(cn, "mx.test")

    async def test_sni_starttls(self) -> None:
        """SNI picks the certificate after STARTTLS; unknown names and no SNI get the default."""
        m = material()
        hooks = Recorder()
        tls = mx_config(sni={"a.test": (m.a.key_pem, m.a.cert_pem),
                             "b.test": TLSConfig(key=m.b.key_pem, cert=m.b.cert_pem)})
        _, port = await self.start(hooks, tls=tls)
        got = []
        for sni in ("a.test", "b.test", "B.TEST", "unknown.test", None):
            cn, noop = await self.fetch(port, sni=sni)
            self.assertEqual(noop[0], 250)
            got.append(cn)
        self.assertEqual(got, ["a.test", "b.test", "b.test", "mx.test", "mx.test"])
        self.assertEqual([i.server_name for i in hooks.secure], ["a.test", "b.test", "b.test", "unknown.test", None])

    async def test_sni_implicit(self) -> None:
        """SNI picks the certificate under implicit TLS too; on_secure sees server_name."""
        m = material()
        hooks = Recorder()
        _, port = await self.start(hooks, secure=True, tls=mx_config(sni={"a.test": (m.a.key_pem, m.a.cert_pem)}))
        self.assertEqual((await self.fetch(port, starttls=False, sni="a.test"))[0], "a.test")
        self.assertEqual((await self.fetch(port, starttls=False, sni="other.test"))[0], "mx.test")
        self.assertEqual([i.server_name for i in hooks.secure], ["a.test", "other.test"])

    async def test_sni_callback(self) -> None:
        """sni_callback supplies certificates for names not in sni; None means the default."""
        m = material()
        asked: List[str] = []

        def lookup(name: str) -> Any:
            asked.append(name)
            return (m.cb.key_pem, m.cb.cert_pem) if name == "cb.test" else None

        _, port = await self.start(Recorder(), tls=mx_config(sni_callback=lookup))
        self.assertEqual((await self.fetch(port, sni="cb.test"))[0], "cb.test")
        self.assertEqual((await self.fetch(port, sni="nope.test"))[0], "mx.test")
        self.assertEqual(sorted(set(asked)), ["cb.test", "nope.test"])

    async def test_development_certificate_starttls(self) -> None:
        """No certificate configured: listen() generates a development certificate and warns."""
        with capturedLogs() as events:
            _, port = await self.start(Recorder(), tls=None)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertTrue(any("development" in e["log_format"] for e in warnings), events)
        cn, noop = await self.fetch(port, verify=False)
        self.assertEqual((cn, noop[0]), ("mx.test", 250))

    async def test_reload(self) -> None:
        """reload_tls: a new connection gets the new certificate; an open TLS session keeps working."""
        m = material()
        hooks = Recorder()
        server, port = await self.start(hooks)

        def open_session() -> Tuple[Conn, str]:
            conn = Conn(port)
            conn.starttls(client_context())
            assert conn.cmd("EHLO client.test")[0] == 250
            return conn, common_name(conn.peer_cert())

        conn, first = await self.thread(open_session)
        self.addCleanup(conn.close)
        self.assertEqual(first, "mx.test")
        server.reload_tls(TLSConfig(key=m.mx2.key_pem, cert=m.mx2.cert_pem))
        cn, _ = await self.fetch(port)
        self.assertEqual(cn, "mx2.test")

        def use_old() -> List[int]:
            return [conn.cmd("MAIL FROM:<a@example.test>")[0], conn.cmd("RCPT TO:<r@example.test>")[0],
                    conn.cmd("DATA")[0], conn.cmd("Subject: x\r\n\r\nold session\r\n.")[0],
                    conn.cmd("QUIT")[0]]

        self.assertEqual(await self.thread(use_old), [250, 250, 354, 250, 221])
        [(kind, secure, body)] = hooks.messages
        self.assertEqual((kind, secure), ("ESMTPS", True))
        self.assertIn(b"old session", body)

    async def test_reload_rereads_files(self) -> None:
        """reload_tls() without a config re-reads the certificate files."""
        m = material()
        d = tempfile.mkdtemp(prefix="txsmtpsrv-reload-")
        self.addCleanup(shutil.rmtree, d, True)
        key = write_pem(d, "k.pem", m.a.key_pem)
        cert = write_pem(d, "c.pem", m.a.cert_pem)
        server, port = await self.start(Recorder(), tls=TLSConfig(key=key, cert=cert))
        self.assertEqual((await self.fetch(port))[0], "a.test")
        write_pem(d, "k.pem", m.b.key_pem)
        write_pem(d, "c.pem", m.b.cert_pem)
        server.reload_tls()
        self.assertEqual((await self.fetch(port))[0], "b.test")


class ClientCertificateTests(_TLSTestCase):
    """Client certificates and version limits."""

    async def test_requested_and_accepted(self) -> None:
        """A requested certificate from the trusted CA is accepted; on_secure sees it."""
        hooks = Recorder()
        ca = material().ca.cert_pem
        _, port = await self.start(hooks, tls=mx_config(ca=ca, request_client_cert=True))
        self.assertIsNone(await self.thread(handshake_error, port, client_context(cert="client"), True))
        self.assertIsNone(await self.thread(handshake_error, port, client_context(), True))  # optional
        with_cert, without = hooks.secure
        self.assertEqual(common_name(with_cert.peer_certificate), "client.test")
        self.assertTrue(with_cert.peer_certificate_verified)
        self.assertIsNone(without.peer_certificate)

    async def test_foreign_ca_refused(self) -> None:
        """A client certificate from a foreign CA fails the handshake; on_secure never runs."""
        hooks = Recorder()
        _, port = await self.start(hooks, tls=mx_config(ca=material().ca.cert_pem, request_client_cert=True))
        error = await self.thread(handshake_error, port, client_context(cert="foreign_client"), True)
        self.assertIn("UNKNOWN_CA", error or "")
        self.assertEqual(hooks.secure, [])

    async def test_required(self) -> None:
        """require_client_cert: a client without a certificate fails the handshake (implicit TLS)."""
        hooks = Recorder()
        _, port = await self.start(hooks, secure=True,
                                   tls=mx_config(ca=material().ca.cert_pem, require_client_cert=True))
        error = await self.thread(handshake_error, port, client_context(), False)
        self.assertIn("CERTIFICATE_REQUIRED", error or "")
        self.assertEqual(hooks.secure, [])
        self.assertIsNone(await self.thread(handshake_error, port, client_context(cert="client"), False))
        self.assertEqual(len(hooks.secure), 1)

    async def test_min_version(self) -> None:
        """min_version TLSv1.3 refuses a client limited to TLSv1.2 and accepts a TLSv1.3 one."""
        hooks = Recorder()
        _, port = await self.start(hooks, tls=mx_config(min_version="TLSv1.3"))
        error = await self.thread(handshake_error, port, client_context(max_version=ssl.TLSVersion.TLSv1_2), True)
        self.assertIn("PROTOCOL_VERSION", error or "")
        self.assertIsNone(await self.thread(handshake_error, port, client_context(), True))
        self.assertEqual([i.version for i in hooks.secure], ["TLSv1.3"])


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


class ToolTests(_TLSTestCase):
    """swaks and openssl s_client, clients nobody here wrote."""

    def run_tool(self, argv: List[str], stdin: bytes = b"") -> "defer.Deferred[subprocess.CompletedProcess]":
        return self.thread(subprocess.run, argv, input=stdin, capture_output=True, timeout=15)

    async def test_swaks_starttls(self) -> None:
        """swaks --tls delivers a message over STARTTLS."""
        swaks = tool_path("swaks", "/usr/bin")
        hooks = Recorder()
        _, port = await self.start(hooks)
        r = await self.run_tool([swaks, "--server", "127.0.0.1", "--port", str(port), "--tls",
                                 "--from", "s@example.test", "--to", "r@example.test", "--helo", "client.test",
                                 "--header", "Subject: swaks tls", "--body", "over STARTTLS"])
        self.assertEqual(r.returncode, 0, (r.stdout + r.stderr).decode("utf-8", "replace"))
        self.assertIn(b"220 2.0.0 Ready to start TLS", r.stdout)
        [(kind, secure, body)] = hooks.messages
        self.assertEqual((kind, secure), ("ESMTPS", True))
        self.assertIn(b"over STARTTLS", body)

    async def test_swaks_implicit_tls(self) -> None:
        """swaks --tlsc delivers a message over implicit TLS."""
        swaks = tool_path("swaks", "/usr/bin")
        hooks = Recorder()
        _, port = await self.start(hooks, secure=True)
        r = await self.run_tool([swaks, "--server", "127.0.0.1", "--port", str(port), "--tlsc",
                                 "--from", "s@example.test", "--to", "r@example.test", "--helo", "client.test",
                                 "--body", "over implicit TLS"])
        self.assertEqual(r.returncode, 0, (r.stdout + r.stderr).decode("utf-8", "replace"))
        [(kind, secure, body)] = hooks.messages
        self.assertEqual((kind, secure), ("ESMTPS", True))
        self.assertIn(b"over implicit TLS", body)

    async def test_openssl_starttls(self) -> None:
        """openssl s_client -starttls smtp: handshake works, our EHLO gets 250, QUIT 221."""
        openssl = tool_path("openssl", "/usr/bin")
        hooks = Recorder()
        _, port = await self.start(hooks)
        r = await self.run_tool([openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
                                 "-quiet"], b"EHLO x\r\nQUIT\r\n")
        out = r.stdout.decode("utf-8", "replace")
        self.assertIn("250-mx.test", out, r.stderr)
        self.assertIn("221 2.0.0 Bye", out)
        self.assertNotIn("STARTTLS", out)  # the EHLO inside TLS no longer offers it
        self.assertEqual(len(hooks.secure), 1)

    async def test_openssl_sni(self) -> None:
        """openssl s_client -servername picks the SNI certificate (-brief shows the subject)."""
        openssl = tool_path("openssl", "/usr/bin")
        m = material()
        _, port = await self.start(Recorder(), tls=mx_config(sni={"a.test": (m.a.key_pem, m.a.cert_pem)}))
        subjects = []
        for name in ("a.test", "elsewhere.test"):
            r = await self.run_tool([openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
                                     "-servername", name, "-brief", "-ign_eof"], b"EHLO x\r\nQUIT\r\n")
            text = (r.stdout + r.stderr).decode("utf-8", "replace")
            self.assertIn("CONNECTION ESTABLISHED", text)
            self.assertIn("221 2.0.0 Bye", text)
            subjects.append([line for line in text.splitlines() if line.startswith("Peer certificate:")])
        self.assertEqual(subjects, [["Peer certificate: CN = a.test"], ["Peer certificate: CN = mx.test"]])

    async def test_openssl_implicit_showcerts(self) -> None:
        """openssl s_client on the implicit-TLS port: the chain (mx.test, intermediate) and a greeting."""
        openssl = tool_path("openssl", "/usr/bin")
        _, port = await self.start(Recorder(), secure=True)
        r = await self.run_tool([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts",
                                 "-ign_eof"], b"EHLO x\r\nQUIT\r\n")
        out = r.stdout.decode("utf-8", "replace")
        self.assertIn("220 mx.test ESMTP", out)
        self.assertIn("221 2.0.0 Bye", out)
        self.assertIn("CN = mx.test", out)
        self.assertIn("CN = SMTP Test Intermediate CA", out)
        self.assertEqual(out.count("-----BEGIN CERTIFICATE-----"), 2)
