# -*- test-case-name: tests.test_tls_tools -*-
"""
STARTTLS and implicit TLS against clients nobody here wrote: C{swaks} and
C{openssl s_client} (delivery, SNI, the certificate chain sent), on real
sockets on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
from typing import List

from twisted.internet import defer

from tests._support import tool_path
from tests._tls import Recorder, _TLSTestCase, material, mx_config


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
