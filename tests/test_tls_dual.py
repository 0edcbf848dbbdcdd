# -*- test-case-name: tests.test_tls_dual -*-
"""
ECDSA and RSA certificates served side by side.

C{openssl s_client} forces each: in TLS 1.3 with C{-sigalgs}, in TLS 1.2
with C{-cipher}; a client that offers ECDSA (every default) gets the ECDSA
certificate and its own chain, one limited to RSA gets the RSA certificate
(and not the ECDSA chain). SNI entries can be such pairs too.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List, Tuple

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from tests._certs import self_signed, unverified_client_context
from tests._support import tool_path
from tests._tls import Recorder, _TLSTestCase, material
from txsmtpsrv._tls import TLSConfig, TLSConfigError, TLSContextHolder


def rsa_leaf(cn: str) -> Tuple[bytes, bytes]:
    """A self-signed RSA-2048 certificate for C{cn}: (key PEM, certificate PEM)."""
    leaf = self_signed(cn, rsa_key=True)
    return leaf.key_pem, leaf.cert_pem


_RSA: List[Tuple[bytes, bytes]] = []


def rsa_mx() -> Tuple[bytes, bytes]:
    if not _RSA:
        _RSA.append(rsa_leaf("rsa.mx.test"))
        _RSA.append(rsa_leaf("rsa.other.test"))
    return _RSA[0]


def dual_config(**kw: Any) -> TLSConfig:
    """RSA first (the default certificate), the ECDSA mx.test with its intermediate side by side."""
    m = material()
    key, cert = rsa_mx()
    return TLSConfig(key=key, cert=cert, additional_certificates=[(m.mx.key_pem, m.mx.cert_pem, m.mx.chain_pem)],
                     **kw)


def s_client(openssl: str, port: int, *args: str) -> Tuple[str, str, int]:
    """s_client -starttls smtp -showcerts: (leaf CN, signature type, certificates sent)."""
    argv = [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-showcerts", *args]
    done = subprocess.run(argv, input=b"QUIT\r\n", capture_output=True, timeout=15)
    out = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    subject = re.search(r"^subject=.*?CN\s*=\s*([^,\n]+)", out, re.M)
    signature = re.search(r"^Peer signature type: (\S+)", out, re.M)
    assert subject and signature, out
    return subject.group(1).strip(), signature.group(1), out.count("-----BEGIN CERTIFICATE-----")


class SideBySideTests(_TLSTestCase):
    async def test_each_client_gets_the_certificate_it_can_use(self) -> None:
        """TLS 1.3 -sigalgs and TLS 1.2 -cipher force RSA or ECDSA; the default is ECDSA; chains stay apart."""
        openssl = tool_path("openssl", "/usr/bin")
        _, port = await self.start(Recorder(), tls=dual_config())
        cases = [
            (["-tls1_3"], ("mx.test", "ECDSA", 2)),
            (["-tls1_3", "-sigalgs", "ECDSA+SHA256"], ("mx.test", "ECDSA", 2)),
            (["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"], ("rsa.mx.test", "RSA-PSS", 1)),
            (["-tls1_2"], ("mx.test", "ECDSA", 2)),
            (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], ("mx.test", "ECDSA", 2)),
            (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], ("rsa.mx.test", "RSA-PSS", 1)),
        ]
        for args, expected in cases:
            got = await self.thread(s_client, openssl, port, *args)
            self.assertEqual(got, expected, args)

    async def test_python_client(self) -> None:
        """Python's ssl client (system OpenSSL defaults) gets the ECDSA certificate; limited to RSA, the RSA one."""
        _, port = await self.start(Recorder(), tls=dual_config())

        def names(ciphers: str | None) -> str:
            ctx = unverified_client_context()
            if ciphers:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                ctx.set_ciphers(ciphers)
            import smtplib

            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.starttls(context=ctx)
                der = s.sock.getpeercert(binary_form=True)
            cert = x509.load_der_x509_certificate(der)
            return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

        self.assertEqual(await self.thread(names, None), "mx.test")
        self.assertEqual(await self.thread(names, "ECDHE-RSA-AES128-GCM-SHA256"), "rsa.mx.test")

    async def test_sni_pairs(self) -> None:
        """An SNI entry may be a list of certificates of different key types; other names get the default pair."""
        openssl = tool_path("openssl", "/usr/bin")
        m = material()
        rsa_mx()
        other_rsa = _RSA[1]
        config = dual_config(sni={"other.test": [other_rsa, (m.a.key_pem, m.a.cert_pem)]})
        _, port = await self.start(Recorder(), tls=config)
        rsa_only = ["-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"]
        for args, expected in (
            (["-servername", "other.test"], "a.test"),
            (["-servername", "other.test", *rsa_only], "rsa.other.test"),
            (["-servername", "unknown.test"], "mx.test"),
            (["-servername", "unknown.test", *rsa_only], "rsa.mx.test"),
        ):
            cn, _, _ = await self.thread(s_client, openssl, port, "-tls1_3", *args)
            self.assertEqual(cn, expected, args)

    async def test_resumes(self) -> None:
        """Session tickets work with both certificates."""
        openssl = tool_path("openssl", "/usr/bin")
        _, port = await self.start(Recorder(), tls=dual_config())
        directory = tempfile.mkdtemp(prefix="txsmtpsrv-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        from tests.test_tls_tickets import _resumption, _s_client

        for version in ("-tls1_3", "-tls1_2"):
            path = os.path.join(directory, version + ".pem")
            self.assertTrue(_resumption(await self.thread(_s_client, openssl, port, version, path, True))
                            .startswith("New"))
            self.assertTrue(_resumption(await self.thread(_s_client, openssl, port, version, path, False))
                            .startswith("Reused"))


class ConfigTests(unittest.SynchronousTestCase):
    def test_same_key_type_twice(self) -> None:
        m = material()
        with self.assertRaisesRegex(TLSConfigError, "two ECDSA certificates"):
            TLSContextHolder(TLSConfig(key=m.mx.key_pem, cert=m.mx.cert_pem,
                                       additional_certificates=[(m.a.key_pem, m.a.cert_pem)]))
        with self.assertRaisesRegex(TLSConfigError, r"sni\['x.test'\]: two ECDSA"):
            TLSContextHolder(TLSConfig(key=m.mx.key_pem, cert=m.mx.cert_pem,
                                       sni={"x.test": [(m.a.key_pem, m.a.cert_pem), (m.b.key_pem, m.b.cert_pem)]}))

    def test_bad_entries(self) -> None:
        m = material()
        with self.assertRaisesRegex(TLSConfigError, "additional_certificates must be a list"):
            TLSConfig(additional_certificates="cert.pem")  # type: ignore[arg-type]
        with self.assertRaisesRegex(TLSConfigError, r"additional_certificates\[0\]"):
            TLSContextHolder(TLSConfig(key=m.mx.key_pem, cert=m.mx.cert_pem,
                                       additional_certificates=[(rsa_mx()[0], m.a.cert_pem)]))
        with self.assertRaisesRegex(TLSConfigError, "empty list"):
            TLSContextHolder(TLSConfig(key=m.mx.key_pem, cert=m.mx.cert_pem, sni={"x.test": []}))


def test_cli(tmp_path: Path, monkeypatch: Any) -> None:
    """--tls-key2/--tls-cert2 add a certificate side by side; they need --tls-key/--tls-cert; errors name them."""
    from twisted.python import usage

    from txsmtpsrv._cli import Options, worker_arguments

    monkeypatch.chdir(tmp_path)
    m = material()
    key, cert = rsa_mx()
    paths = {}
    for name, data in (("rsa.key", key), ("rsa.pem", cert), ("ec.key", m.mx.key_pem), ("ec.pem", m.mx.cert_pem),
                       ("a.key", m.a.key_pem), ("a.pem", m.a.cert_pem)):
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)

    def parse(*args: str) -> Any:
        options = Options()
        options.parseOptions(list(args))
        return options

    parent = parse("--workers", "2", "--tls-key", paths["rsa.key"], "--tls-cert", paths["rsa.pem"],
                   "--tls-key2", paths["ec.key"], "--tls-cert2", paths["ec.pem"])
    assert parent.serverKwargs["tls"]["additional_certificates"] == [(paths["ec.key"], paths["ec.pem"])]
    assert parse("--worker", *worker_arguments(parent)).serverKwargs == parent.serverKwargs
    with pytest.raises(usage.UsageError, match="need --tls-key"):
        parse("--tls-key2", paths["ec.key"], "--tls-cert2", paths["ec.pem"])
    with pytest.raises(usage.UsageError, match="--tls-key2/--tls-cert2: .*two ECDSA"):
        parse("--tls-key", paths["a.key"], "--tls-cert", paths["a.pem"],
              "--tls-key2", paths["ec.key"], "--tls-cert2", paths["ec.pem"])
