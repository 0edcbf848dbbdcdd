# -*- test-case-name: tests.test_tls_config_errors -*-
"""
L{TLSConfigError}: every bad TLS setting (missing files, a key not matching
its certificate, unparsable or encrypted PEM, a key or certificate alone,
bad versions, other settings) is refused up front with a message naming
the setting, and good settings raise no deprecation warnings.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from txsmtpsrv._tls import TLSConfig, TLSConfigError, TLSContextHolder, build_server_options

from tests._tlsecho import base_config, material, sni_config


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
