# -*- test-case-name: tests.test_tls_config -*-
"""
Tests for L{txsmtpsrv._tls}: TLS settings against real OpenSSL handshakes.

A trivial line protocol (greeting, optional STARTTLS, echo) is served on
127.0.0.1:0 behind C{endpoints.wrapServerTLS} or upgraded with C{startTLS};
the client is Python's C{ssl} module in a reactor thread, so every TLS
behaviour (SNI choice, client certificates, version limits, reload) is what a
real client sees.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import socket
import ssl
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests._certs import CA, Leaf, client_context, common_name, make_ca, pem_dir, write_leaf, write_pem
from txsmtpsrv._tls import (
    TLSConfig,
    TLSConfigError,
    TLSContextHolder,
    TLSInfo,
    build_server_options,
    development_certificate,
    start_handshake_timer,
    tls_info,
)

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


class SNITests(_ServerTestCase):
    """Certificate choice by server name, for implicit TLS and STARTTLS."""

    async def test_implicit_sni_chooses_certificate(self) -> None:
        """a.test and b.test get their certificates; unknown names and no SNI get the default."""
        port, factory = await self.serve(TLSContextHolder(sni_config()))
        for sni, expected in [("a.test", "a.test"), ("b.test", "b.test"), ("A.Test", "a.test"),
                              ("unknown.test", "mx.test"), (None, "mx.test")]:
            result = await self.client(port, sni=sni)
            self.assertTrue(result.ok, (sni, result))
            self.assertEqual(result.cn, expected, sni)
        names = [info.server_name for info in factory.handshakes if info is not None]
        self.assertEqual(names, ["a.test", "b.test", "a.test", "unknown.test", None])

    async def test_starttls_sni_chooses_certificate(self) -> None:
        """SNI works the same after a plaintext STARTTLS exchange."""
        port, factory = await self.serve(TLSContextHolder(sni_config()), starttls=True)
        result = await self.client(port, sni="b.test", starttls=True)
        self.assertEqual(result.lines, ["PLAIN", "GO", "ECHO PING"])
        self.assertEqual(result.cn, "b.test")
        result = await self.client(port, starttls=True)
        self.assertEqual(result.cn, "mx.test")
        self.assertTrue(result.ok)

    async def test_idna_and_wildcard_names(self) -> None:
        """U-label keys match A-label SNI; '*.wild.test' matches exactly one label."""
        m = material()
        holder = TLSContextHolder(sni_config(sni={
            "Bücher.test.": (m.idn.key_pem, m.idn.cert_pem),
            "*.wild.test": {"key": m.wild.key_pem, "cert": m.wild.cert_pem},
        }))
        port, _ = await self.serve(holder)
        for sni, expected in [("xn--bcher-kva.test", "xn--bcher-kva.test"), ("mx1.wild.test", "*.wild.test"),
                              ("wild.test", "mx.test"), ("a.b.wild.test", "mx.test")]:
            result = await self.client(port, sni=sni)
            self.assertEqual(result.cn, expected, sni)

    async def test_sni_callback_is_cached(self) -> None:
        """Names missing from the map go to sni_callback once; None means the default certificate."""
        m = material()
        calls: list[str] = []

        def lookup(name: str) -> Any:
            calls.append(name)
            return (m.cb.key_pem, m.cb.cert_pem) if name == "cb.test" else None

        port, _ = await self.serve(TLSContextHolder(sni_config(sni_callback=lookup)))
        for sni, expected in [("CB.test", "cb.test"), ("cb.test", "cb.test"), ("other.test", "mx.test"),
                              ("other.test", "mx.test"), ("a.test", "a.test")]:
            result = await self.client(port, sni=sni)
            self.assertEqual(result.cn, expected, sni)
        self.assertEqual(calls, ["cb.test", "other.test"])

    async def test_sni_callback_error_falls_back_to_default(self) -> None:
        """An exception in sni_callback serves the default certificate, logged once per name."""
        calls: list[str] = []

        def broken(name: str) -> Any:
            calls.append(name)
            raise ZeroDivisionError(name)

        port, factory = await self.serve(TLSContextHolder(base_config(sni_callback=broken)))
        for _ in range(2):
            result = await self.client(port, sni="boom.test")
            self.assertTrue(result.ok)
            self.assertEqual(result.cn, "mx.test")
        self.assertEqual(calls, ["boom.test"])  # the failure is cached like an answer
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_build_server_options_works_with_wrapServerTLS(self) -> None:
        """The plain CertificateOptions builder also serves SNI certificates."""
        port, _ = await self.serve(build_server_options(sni_config()))
        self.assertEqual((await self.client(port, sni="a.test")).cn, "a.test")
        self.assertEqual((await self.client(port)).cn, "mx.test")


class ClientCertificateTests(_ServerTestCase):
    """Requesting, verifying and requiring client certificates."""

    async def check(self, config: TLSConfig, client_cert: str | None, *, accepted: bool,
                    sni: str | None = None, starttls: bool = False) -> TLSInfo | None:
        port, factory = await self.serve(TLSContextHolder(config), starttls=starttls)
        result = await self.client(port, client_cert=client_cert, sni=sni, starttls=starttls)
        self.assertEqual(result.ok, accepted, result)
        if not accepted:
            self.assertEqual(factory.infos, [])
            return None
        [info] = factory.handshakes
        return info

    async def test_optional_with_ca_accepts_ca_issued(self) -> None:
        """A certificate from the configured CA is accepted, visible and marked verified."""
        info = await self.check(base_config(ca=material().paths["ca"], request_client_cert=True), "client",
                                accepted=True)
        assert info is not None and info.peer_certificate is not None
        self.assertEqual(common_name(info.peer_certificate), "client.test")
        self.assertTrue(info.peer_certificate_verified)

    async def test_optional_with_ca_accepts_no_certificate(self) -> None:
        """Without a certificate, an optional request lets the client in."""
        info = await self.check(base_config(ca=material().paths["ca"], request_client_cert=True), None,
                                accepted=True, starttls=True)
        assert info is not None
        self.assertIsNone(info.peer_certificate)
        self.assertFalse(info.peer_certificate_verified)

    async def test_optional_with_ca_refuses_foreign(self) -> None:
        """A certificate from another CA fails the handshake."""
        await self.check(base_config(ca=material().paths["ca"], request_client_cert=True), "foreign_client",
                         accepted=False)

    async def test_required_refuses_missing_certificate(self) -> None:
        """require_client_cert fails handshakes without a certificate."""
        await self.check(base_config(ca=[material().ca.cert], require_client_cert=True), None, accepted=False)

    async def test_required_accepts_ca_issued(self) -> None:
        """require_client_cert accepts a certificate from the CA."""
        info = await self.check(base_config(ca=[material().ca.cert], require_client_cert=True), "client",
                                accepted=True, starttls=True)
        assert info is not None and info.peer_certificate is not None
        self.assertTrue(info.peer_certificate_verified)

    async def test_sni_context_keeps_client_certificate_policy(self) -> None:
        """After switching to a per-name context, verification still applies."""
        config = sni_config(ca=material().paths["ca"], require_client_cert=True)
        await self.check(config, "foreign_client", accepted=False, sni="a.test")
        info = await self.check(config, "client", accepted=True, sni="a.test")
        assert info is not None and info.peer_certificate is not None
        self.assertEqual(info.server_name, "a.test")

    async def test_request_any_accepts_any(self) -> None:
        """Without ca, any client certificate is accepted but reported unverified."""
        info = await self.check(base_config(request_client_cert=True), "foreign_client", accepted=True)
        assert info is not None and info.peer_certificate is not None
        self.assertEqual(common_name(info.peer_certificate), "intruder.test")
        self.assertFalse(info.peer_certificate_verified)
        info = await self.check(base_config(request_client_cert=True), None, accepted=True)
        assert info is not None
        self.assertIsNone(info.peer_certificate)

    async def test_require_any_needs_a_certificate(self) -> None:
        """Without ca, require_client_cert still refuses clients with no certificate."""
        await self.check(base_config(require_client_cert=True), None, accepted=False)
        info = await self.check(base_config(require_client_cert=True), "foreign_client", accepted=True)
        assert info is not None
        self.assertFalse(info.peer_certificate_verified)

    async def test_not_requested(self) -> None:
        """By default no certificate is requested, so none is seen."""
        info = await self.check(base_config(ca=material().paths["ca"]), "client", accepted=True)
        assert info is not None
        self.assertIsNone(info.peer_certificate)


class VersionAndInfoTests(_ServerTestCase):
    """Version limits, tls_info fields, wrappers, handshake timeout."""

    async def test_min_version_refuses_older_client(self) -> None:
        """A server with min TLSv1.3 refuses a client capped at TLSv1.2."""
        port, factory = await self.serve(TLSContextHolder(base_config(min_version="TLSv1.3")))
        result = await self.client(port, max_version=ssl.TLSVersion.TLSv1_2)
        self.assertFalse(result.ok)
        self.assertIsNotNone(result.error)
        self.assertEqual(factory.handshakes, [])
        self.assertTrue((await self.client(port)).ok)

    async def test_max_version_caps_negotiation(self) -> None:
        """max_version TLSv1.2 makes a modern client negotiate TLSv1.2."""
        port, factory = await self.serve(TLSContextHolder(sni_config(max_version="TLSv1.2")))
        result = await self.client(port, sni="a.test")
        self.assertEqual(result.version, "TLSv1.2")
        self.assertEqual(result.cn, "a.test")
        [info] = factory.handshakes
        assert info is not None
        self.assertEqual(info.version, "TLSv1.2")

    async def test_tls_info_fields(self) -> None:
        """tls_info reports version, cipher, SNI name and no client certificate; None before TLS."""
        port, factory = await self.serve(TLSContextHolder(sni_config()), starttls=True)
        result = await self.client(port, sni="a.test", starttls=True)
        self.assertTrue(result.ok)
        self.assertEqual(factory.before, [None])
        [info] = factory.handshakes
        assert info is not None
        self.assertEqual(info.version, "TLSv1.3")
        self.assertEqual(info.version, result.version)
        self.assertTrue(info.cipher)
        self.assertEqual(info.server_name, "a.test")
        self.assertIsNone(info.peer_certificate)
        self.assertEqual(factory.infos, [info])

    async def test_tls_info_through_protocol_wrapper(self) -> None:
        """tls_info finds the TLS connection under a ProtocolWrapper, implicit TLS and STARTTLS."""
        for starttls in (False, True):
            port, factory = await self.serve(TLSContextHolder(sni_config()), starttls=starttls, wrap=True)
            result = await self.client(port, sni="b.test", starttls=starttls)
            self.assertTrue(result.ok, result)
            [info] = factory.infos
            assert info is not None
            self.assertEqual(info.server_name, "b.test")
            self.assertEqual(info.version, "TLSv1.3")

    def test_tls_info_on_non_tls_transports(self) -> None:
        """Plain or fake transports have no TLS info."""
        self.assertIsNone(tls_info(StringTransport()))
        self.assertIsNone(tls_info(None))
        holder = TLSContextHolder(base_config())
        self.assertIsNone(tls_info(_HandleTransport(holder.serverConnectionForTLS(None))))

    async def test_handshake_timeout_aborts_silent_client(self) -> None:
        """A client that never starts the handshake is disconnected after handshake_timeout."""
        port, factory = await self.serve(TLSContextHolder(base_config(handshake_timeout=0.2)))

        def silent() -> float:
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
                try:
                    data = s.recv(100)
                except ConnectionResetError:
                    data = b""
                assert data == b"", data
            return time.monotonic() - start

        elapsed = await threads.deferToThread(silent).addTimeout(4 * IO_TIMEOUT, reactor)
        self.assertLess(elapsed, IO_TIMEOUT)
        self.assertEqual(factory.handshakes, [])
        self.assertTrue((await self.client(port)).ok)

    def test_start_handshake_timer_none(self) -> None:
        """handshake_timeout None schedules nothing."""
        self.assertIsNone(start_handshake_timer(StringTransport(), None, reactor))


class _HandleTransport:
    """A transport whose handle is a not-yet-handshaken OpenSSL connection."""

    def __init__(self, handle: object) -> None:
        self.handle = handle

    def getHandle(self) -> object:
        return self.handle


class ReloadTests(_ServerTestCase):
    """Certificates change for new connections without a restart."""

    async def test_reload_new_connections_get_new_certificate(self) -> None:
        """After reload, new connections get the new cert; an open one keeps the old."""
        m = material()
        holder = TLSContextHolder(sni_config())
        port, _ = await self.serve(holder, starttls=True)
        old = await self.client(port, sni="a.test", starttls=True, keep_open=True)
        self.assertEqual(old.server_cert, m.a.cert)

        holder.reload(sni_config(sni={"a.test": (m.a2.key_pem, m.a2.cert_pem)}))
        new = await self.client(port, sni="a.test", starttls=True)
        self.assertEqual(new.server_cert, m.a2.cert)
        self.assertEqual(await threads.deferToThread(echo_again, old), "ECHO AGAIN")

    async def test_reload_failure_keeps_old_configuration(self) -> None:
        """A broken new configuration raises and leaves the old one serving."""
        m = material()
        config = sni_config()
        holder = TLSContextHolder(config)
        port, _ = await self.serve(holder)
        with self.assertRaises(TLSConfigError):
            holder.reload(base_config(key=os.path.join(m.dir, "missing.key")))
        self.assertIs(holder.config, config)
        self.assertEqual((await self.client(port, sni="a.test")).cn, "a.test")

    async def test_reload_rereads_files(self) -> None:
        """reload() without arguments re-reads the current files (certificate renewal)."""
        m = material()
        d = tempfile.mkdtemp(dir=m.dir)
        key, crt = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
        write_pem(d, "k.pem", m.a.key_pem)
        write_pem(d, "c.pem", m.a.cert_pem)
        holder = TLSContextHolder(TLSConfig(key=key, cert=Path(crt)))
        port, _ = await self.serve(holder)
        self.assertEqual((await self.client(port)).server_cert, m.a.cert)
        write_pem(d, "k.pem", m.b.key_pem)
        write_pem(d, "c.pem", m.b.cert_pem)
        holder.reload()
        self.assertEqual((await self.client(port)).server_cert, m.b.cert)


class DevelopmentCertificateTests(_ServerTestCase):
    """The self-signed fallback certificate."""

    def test_development_certificate(self) -> None:
        """A short-lived self-signed P-256 certificate for the name, with a warning."""
        with capturedLogs() as events:
            dev = development_certificate("Mx.Example")
        assert isinstance(dev.cert, bytes)
        cert = x509.load_pem_x509_certificate(dev.cert)
        self.assertEqual(cert.subject, cert.issuer)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["mx.example"])
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        # Long enough for a server left running (SIGHUP regenerates it), short enough to be obvious.
        self.assertGreater(lifetime, datetime.timedelta(days=300))
        self.assertLessEqual(lifetime, datetime.timedelta(days=366))
        self.assertTrue(any("development" in str(e.get("log_format")) for e in events))
        build_server_options(dev)  # key and certificate belong together

    def test_development_certificate_for_ip(self) -> None:
        """An IP address becomes an IP SubjectAltName."""
        cert = x509.load_pem_x509_certificate(development_certificate("127.0.0.1").cert)  # type: ignore[arg-type]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")])

    async def test_unconfigured_tls_serves_development_certificate(self) -> None:
        """A TLSConfig without key/cert serves a development certificate for the hostname."""
        with capturedLogs() as events:
            holder = TLSContextHolder(TLSConfig(), hostname="dev.test")
        self.assertTrue(any(e.get("log_level").name == "warn" for e in events))
        port, _ = await self.serve(holder, starttls=True)
        result = await self.client(port, starttls=True, verify=False)
        self.assertTrue(result.ok)
        self.assertEqual(result.cn, "dev.test")


class ConfigErrorTests(SynchronousTestCase):
    """Specific errors for unusable settings."""

    def assertConfigError(self, make: Callable[[], object], *fragments: str) -> None:
        with self.assertRaises(TLSConfigError) as cm:
            make()
        for fragment in fragments:
            self.assertIn(fragment, str(cm.exception))

    def test_is_value_error(self) -> None:
        """TLSConfigError is a ValueError."""
        self.assertTrue(issubclass(TLSConfigError, ValueError))

    def test_missing_files(self) -> None:
        """Missing key, certificate, chain and CA files are named."""
        m = material()
        missing = os.path.join(m.dir, "nope.pem")
        for field_name in ("key", "cert", "chain", "ca"):
            self.assertConfigError(
                lambda: TLSContextHolder(base_config(**{field_name: missing}, request_client_cert=True)),
                "not found", missing,
            )

    def test_key_does_not_match_certificate(self) -> None:
        """A key from another certificate is refused with both named."""
        m = material()
        self.assertConfigError(lambda: TLSContextHolder(base_config(key=m.a.key_pem)), "does not match", "mx.test")
        self.assertConfigError(
            lambda: TLSContextHolder(sni_config(sni={"a.test": (m.b.key_pem, m.a.cert_pem)})),
            "sni['a.test']", "does not match",
        )

    def test_unparsable_pem(self) -> None:
        """Garbage and damaged PEM data are reported per field."""
        m = material()
        broken_cert = m.a.cert_pem.replace(b"\n", b"\nAAAA", 3)
        broken_key = m.a.key_pem[:40] + b"\n" + m.a.key_pem[-35:]
        cases = [
            (dict(key=b"hello"), "no PEM private key"),
            (dict(cert=b"hello"), "no PEM certificate"),
            (dict(cert=broken_cert), "cannot parse certificate"),
            (dict(key=broken_key), "cannot parse the private key"),
            (dict(chain=b"junk"), "chain"),
            (dict(ca=[m.ca.cert, b"junk"], request_client_cert=True), "ca[1]"),
            (dict(ca=[], request_client_cert=True), "no CA certificates"),
        ]
        for kw, fragment in cases:
            self.assertConfigError(lambda: TLSContextHolder(base_config(**kw)), fragment)

    def test_encrypted_key(self) -> None:
        """Encrypted keys are refused with a clear message."""
        from cryptography.hazmat.primitives import serialization

        pem = material().mx.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.assertConfigError(lambda: TLSContextHolder(base_config(key=pem)), "encrypted")

    def test_key_or_certificate_alone(self) -> None:
        """A key without certificate (or vice versa) is refused; a combined PEM is fine."""
        m = material()
        self.assertConfigError(lambda: build_server_options(TLSConfig(key=m.paths["mx.key"])), "without a certificate")
        self.assertConfigError(lambda: build_server_options(TLSConfig(cert=m.paths["mx.crt"])), "without a private key")
        build_server_options(TLSConfig(cert=m.paths["mx.combined"]))
        build_server_options(TLSConfig(key=m.mx.key, cert=m.mx.cert, chain=list(m.mx.chain)))

    def test_bad_versions(self) -> None:
        """Unknown version names and an inverted range are refused at construction."""
        self.assertConfigError(lambda: TLSConfig(min_version="TLSv1.4"), "min_version", "TLSv1.4")
        self.assertConfigError(lambda: TLSConfig(max_version="SSLv3"), "max_version", "SSLv3")
        self.assertConfigError(lambda: TLSConfig(min_version="TLSv1.3", max_version="TLSv1.2"), "higher")
        TLSConfig(min_version="tlsv1.2", max_version="TLS 1.3")

    def test_other_settings(self) -> None:
        """Bad timeouts, SNI names, SNI entries and callbacks are refused."""
        self.assertConfigError(lambda: TLSConfig(handshake_timeout=0), "handshake_timeout")
        self.assertConfigError(lambda: TLSConfig(handshake_timeout="5"), "handshake_timeout")  # type: ignore[arg-type]
        self.assertConfigError(lambda: TLSConfig(sni={"bad..name": ("k", "c")}), "sni")
        self.assertConfigError(lambda: TLSConfig(sni_callback="nope"), "sni_callback")  # type: ignore[arg-type]
        self.assertConfigError(lambda: TLSContextHolder(sni_config(sni={"a.test": 42})), "sni['a.test']")
        self.assertConfigError(lambda: TLSContextHolder(sni_config(sni={"a.test": TLSConfig()})), "sni['a.test']")

    def test_no_deprecation_warnings(self) -> None:
        """Building every mode and creating connections emits no DeprecationWarning."""
        m = material()
        configs = [
            sni_config(),
            sni_config(ca=m.paths["ca"], request_client_cert=True),
            sni_config(ca=[m.ca.cert], require_client_cert=True, min_version="TLSv1.3"),
            sni_config(request_client_cert=True, max_version="TLSv1.2"),
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            for config in configs:
                holder = TLSContextHolder(config)
                holder.serverConnectionForTLS(None)
                holder.reload()
                build_server_options(config).getContext()
