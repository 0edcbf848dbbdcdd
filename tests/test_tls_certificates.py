# -*- test-case-name: tests.test_tls_certificates -*-
"""
Certificates over real TLS on 127.0.0.1 with real OpenSSL: where the server's
come from (files, PEM bytes, a dict, chains, SNI and its callback, the
development certificate, reload) and which one a client gets; client
certificates (requested, refused, required) and version limits.

The server is an L{SMTPServer} listening on port 0; clients are Python's
C{ssl} run in reactor worker threads with bounded waits (C{tests/_tls.py}).
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs

from tests._certs import common_name, write_pem
from tests._tls import Conn, Recorder, Reply, _TLSTestCase, client_context, handshake_error, material, mx_config
from txsmtpsrv._tls import TLSConfig


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
