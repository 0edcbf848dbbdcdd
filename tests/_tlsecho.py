# -*- test-case-name: tests.test_tls_config_handshake,tests.test_tls_config_reload,tests.test_tls_config_errors -*-
"""
The world of the L{txsmtpsrv._tls} tests (tests/test_tls_config_*.py):
certificates generated once per run (some written to files), TLSConfig
builders, a trivial line protocol (greeting, optional STARTTLS, echo) served
on 127.0.0.1:0 behind C{endpoints.wrapServerTLS} or upgraded with
C{startTLS}, and a client that is Python's C{ssl} module in a reactor
thread, so every TLS behaviour is what a real client sees.
"""

from __future__ import annotations

import functools
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests._certs import CA, Leaf, client_context, common_name, make_ca, pem_dir, write_leaf, write_pem
from txsmtpsrv._tls import TLSConfig, TLSInfo, start_handshake_timer, tls_info


IO_TIMEOUT = 5.0  # seconds; bounds every socket operation of the test client


# --------------------------------------------------------------------------
# Certificates (generated once per test run)


@dataclass(frozen=True)
class Material:
    """All keys/certificates the tests use, with some of them written to files."""

    dir: str
    ca: CA
    inter: CA
    foreign: CA
    mx: Leaf  # default, issued by the intermediate
    a: Leaf
    b: Leaf
    a2: Leaf  # a.test again, for reload
    idn: Leaf
    wild: Leaf
    cb: Leaf
    client: Leaf
    foreign_client: Leaf
    paths: dict[str, str] = field(default_factory=dict)


@functools.cache
def material() -> Material:
    """Generate the CAs and certificates and write the PEM files once."""
    d = pem_dir("txsmtpsrv-tls-")
    ca = make_ca("Test Root CA")
    inter = ca.intermediate("Test Intermediate CA")
    foreign = make_ca("Foreign CA")
    m = Material(
        dir=d,
        ca=ca,
        inter=inter,
        foreign=foreign,
        mx=inter.issue("mx.test"),
        a=ca.issue("a.test"),
        b=ca.issue("b.test"),
        a2=ca.issue("a.test", names=["a.test", "a2.test"]),
        idn=ca.issue("xn--bcher-kva.test"),
        wild=ca.issue("*.wild.test"),
        cb=ca.issue("cb.test"),
        client=ca.issue("client.test", client=True),
        foreign_client=foreign.issue("intruder.test", client=True),
    )
    p = m.paths
    p.update(write_leaf(d, "mx", m.mx))
    p["mx.combined"] = write_pem(d, "mx.pem", m.mx.key_pem, m.mx.cert_pem, m.mx.chain_pem)
    p["ca"] = write_pem(d, "ca.crt", ca.cert_pem)
    for name in ("client", "foreign_client"):
        p.update(write_leaf(d, name, getattr(m, name)))
    return m


def base_config(**kw: Any) -> TLSConfig:
    """Default mx.test certificate from files (key, cert, chain) plus C{kw}."""
    m = material()
    kw.setdefault("key", m.paths["mx.key"])
    kw.setdefault("cert", m.paths["mx.crt"])
    kw.setdefault("chain", m.paths["mx.chain"])
    return TLSConfig(**kw)


def sni_config(**kw: Any) -> TLSConfig:
    """base_config with a.test and b.test certificates selected by SNI."""
    m = material()
    sni = {"a.test": TLSConfig(key=m.a.key_pem, cert=m.a.cert_pem), "b.test": (m.b.key, m.b.cert)}
    return base_config(sni=kw.pop("sni", sni), **kw)


# --------------------------------------------------------------------------
# Server side: greeting, optional STARTTLS, echo


@implementer(IHandshakeListener)
class EchoProtocol(LineReceiver):
    """Greets, upgrades on STARTTLS, echoes lines and records TLS facts."""

    delimiter = b"\n"
    factory: EchoFactory

    def connectionMade(self) -> None:
        self.timer = None
        self.factory.open.add(self)
        self.factory.before.append(tls_info(self.transport))
        if self.factory.starttls:
            self.sendLine(b"PLAIN")
        else:
            self.timer = start_handshake_timer(self.transport, self.factory.handshake_timeout, reactor)
            self.sendLine(b"HELLO")

    def handshakeCompleted(self) -> None:
        self._stop_timer()
        self.factory.handshakes.append(tls_info(self.transport))

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if line == b"STARTTLS" and self.factory.starttls:
            self.sendLine(b"GO")
            self.transport.startTLS(self.factory.holder)
            self.timer = start_handshake_timer(self.transport, self.factory.handshake_timeout, reactor)
            return
        self.factory.infos.append(tls_info(self.transport))
        self.sendLine(b"ECHO " + line)

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_timer()
        self.factory.open.discard(self)
        if not self.factory.open:
            waiters, self.factory.idle = self.factory.idle, []
            for d in waiters:
                d.callback(None)

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class EchoFactory(Factory):
    """Builds L{EchoProtocol}s and collects what they observed."""

    protocol = EchoProtocol

    def __init__(self, holder: Any, starttls: bool) -> None:
        self.holder = holder
        self.handshake_timeout = getattr(holder, "handshake_timeout", None)
        self.starttls = starttls
        self.open: set[EchoProtocol] = set()
        self.idle: list[defer.Deferred[None]] = []
        self.before: list[TLSInfo | None] = []
        self.handshakes: list[TLSInfo | None] = []
        self.infos: list[TLSInfo | None] = []

    def wait_idle(self) -> defer.Deferred[None]:
        """Fire once every connection is closed (bounded)."""
        if not self.open:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.idle.append(d)
        return d.addTimeout(IO_TIMEOUT, reactor)


# --------------------------------------------------------------------------
# Client side: Python's ssl module, run in a thread


@dataclass
class Result:
    """What the client saw."""

    lines: list[str] = field(default_factory=list)
    server_cert: x509.Certificate | None = None
    version: str | None = None
    error: str | None = None
    sock: ssl.SSLSocket | None = None

    @property
    def cn(self) -> str | None:
        return common_name(self.server_cert) if self.server_cert is not None else None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.lines) and self.lines[-1].startswith("ECHO")


def _readline(sock: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        if len(buf) > 1000:
            raise AssertionError(f"line too long: {buf!r}")
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("EOF")
        buf += chunk
    return buf.decode().rstrip("\r\n")


def run_client(
    port: int,
    *,
    sni: str | None = None,
    starttls: bool = False,
    verify: bool = True,
    client_cert: str | None = None,
    max_version: ssl.TLSVersion | None = None,
    keep_open: bool = False,
) -> Result:
    """Connect, (STARTTLS,) handshake, read the greeting, send PING, read the echo."""
    m = material()
    files = (m.paths[client_cert + ".crt"], m.paths[client_cert + ".key"]) if client_cert is not None else None
    ctx = client_context(m.ca, verify=verify, cert=files, max_version=max_version)
    result = Result()
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    tls: ssl.SSLSocket | None = None
    try:
        if starttls:
            result.lines.append(_readline(raw))
            raw.sendall(b"STARTTLS\r\n")
            result.lines.append(_readline(raw))
        tls = ctx.wrap_socket(raw, server_hostname=sni)
        result.version = tls.version()
        der = tls.getpeercert(binary_form=True)
        result.server_cert = x509.load_der_x509_certificate(der) if der else None
        if not starttls:
            result.lines.append(_readline(tls))
        tls.sendall(b"PING\r\n")
        result.lines.append(_readline(tls))
        if keep_open:
            result.sock, tls = tls, None
    except (OSError, ssl.SSLError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        if tls is not None:
            tls.close()
        raw.close()
    return result


def echo_again(result: Result) -> str:
    """Send one more line on a kept-open connection, return the reply, close."""
    assert result.sock is not None
    try:
        result.sock.sendall(b"AGAIN\r\n")
        return _readline(result.sock)
    finally:
        result.sock.close()


# --------------------------------------------------------------------------


class _ServerTestCase(TestCase):
    """Starts an echo server with a given holder; cleans up connections."""

    timeout = 30

    async def serve(
        self, holder: Any, *, starttls: bool = False, wrap: bool = False
    ) -> tuple[int, EchoFactory]:
        factory = EchoFactory(holder, starttls)
        listening: Any = WrappingFactory(factory) if wrap else factory
        endpoint: Any = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        if not starttls:
            endpoint = endpoints.wrapServerTLS(holder, endpoint)
        port = await endpoint.listen(listening)
        self.addCleanup(factory.wait_idle)
        self.addCleanup(port.stopListening)
        return port.getHost().port, factory

    def client(self, port: int, **kw: Any) -> defer.Deferred[Result]:
        return threads.deferToThread(run_client, port, **kw).addTimeout(4 * IO_TIMEOUT, reactor)
