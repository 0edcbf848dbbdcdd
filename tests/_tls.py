# -*- test-case-name: tests.test_tls_dialogue,tests.test_tls_certificates,tests.test_tls_tools -*-
"""
What the TLS tests on real sockets share (C{tests/test_tls_dialogue.py},
C{test_tls_certificates.py}, C{test_tls_tools.py} and others): the keys and
certificates, generated once per run (L{material}, L{mx_config},
L{client_context}); a blocking SMTP client for worker threads (L{Conn});
hooks that record what they see; and L{_TLSTestCase}, which starts servers
on 127.0.0.1:0 and runs blocking clients in threads with bounded waits.
"""

from __future__ import annotations

import functools
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from cryptography import x509
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests import _certs
from tests._certs import CA, Leaf, make_ca, pem_dir, write_leaf
from txsmtpsrv import SMTPServer
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
