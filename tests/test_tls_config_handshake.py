# -*- test-case-name: tests.test_tls_config_handshake -*-
"""
L{txsmtpsrv._tls} settings against real OpenSSL handshakes (the echo server
and C{ssl} client of C{tests/_tlsecho.py}): certificate choice by server
name (SNI), client certificate policies, version limits, L{TLSInfo} and
the handshake timeout.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.testing import StringTransport

from tests._certs import common_name
from tests._tlsecho import IO_TIMEOUT, _ServerTestCase, base_config, material, sni_config
from txsmtpsrv._tls import TLSConfig, TLSContextHolder, TLSInfo, build_server_options, start_handshake_timer, tls_info


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
