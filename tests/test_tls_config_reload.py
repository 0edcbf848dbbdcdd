# -*- test-case-name: tests.test_tls_config_reload -*-
"""
Which certificate new connections get from L{txsmtpsrv._tls}, over real
handshakes: after L{TLSContextHolder.reload} (an open connection keeps the
old one, a failed reload keeps the old configuration, files are read
again), and the development certificate when none is configured.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import threads
from twisted.logger import capturedLogs

from tests._certs import write_pem
from tests._tlsecho import _ServerTestCase, base_config, echo_again, material, sni_config
from txsmtpsrv._tls import TLSConfig, TLSConfigError, TLSContextHolder, build_server_options, development_certificate


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
