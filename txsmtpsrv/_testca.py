# -*- test-case-name: tests.test_testing_tls -*-
"""
A throwaway certificate authority for tests, minted in memory at run time.

Tests of code that sends mail over TLS should verify the server's
certificate exactly as production code does, not switch verification off.
So the test servers of L{txsmtpsrv.testing} present a certificate issued by
a CA that exists only in this process: clients trust it through
L{TestCA.client_context} or the PEM file at L{TestCA.path} (for code that
reads C{SSL_CERT_FILE} or takes a CA bundle path). Keys are EC P-256, so
minting costs a few milliseconds, once per process.
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import ssl
import tempfile
import threading
from typing import Dict, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._selfsigned import cert_pem, general_name, key_pem, new_key, self_signed
from ._tls import TLSConfig

__all__ = ["TestCA", "test_ca"]

#: Names every test certificate carries, so clients may connect by any loopback name.
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class TestCA:
    """
    A self-signed root CA valid for a week and the server certificates it
    issues (cached per set of names).

    @ivar cert_pem: the CA certificate, PEM.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, common_name: str = "txsmtpsrv throwaway test CA") -> None:
        self._key, self._cert = self_signed(common_name, days=7, ca=True, path_length=0)
        self.cert_pem: bytes = cert_pem(self._cert)
        self._leaves: Dict[Tuple[str, ...], TLSConfig] = {}
        self._path: Optional[str] = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """A PEM file holding the CA certificate (removed when the process exits)."""
        with self._lock:
            if self._path is None:
                directory = tempfile.mkdtemp(prefix="txsmtpsrv-ca-")
                atexit.register(shutil.rmtree, directory, True)
                path = os.path.join(directory, "ca.pem")
                with open(path, "wb") as f:
                    f.write(self.cert_pem)
                self._path = path
            return self._path

    def server_config(self, names: Sequence[str] = ()) -> TLSConfig:
        """
        A L{TLSConfig} with a certificate for C{names} plus localhost,
        127.0.0.1 and ::1, issued by this CA (made once per set of names).
        """
        key_names = tuple(dict.fromkeys([*names, *_LOOPBACK_NAMES]))
        with self._lock:
            config = self._leaves.get(key_names)
            if config is None:
                config = self._leaves[key_names] = self._issue(key_names)
            return config

    def _issue(self, names: Tuple[str, ...]) -> TLSConfig:
        key = new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([general_name(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return TLSConfig(key=key_pem(key), cert=cert_pem(cert))

    def client_context(self) -> ssl.SSLContext:
        """
        An C{ssl.SSLContext} for clients (C{smtplib}, C{aiosmtplib}) that
        trusts only this CA and checks the host name, like production code.
        """
        ctx = ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))
        return ctx


_ca: Optional[TestCA] = None
_ca_lock = threading.Lock()


def test_ca() -> TestCA:
    """The process's throwaway CA, minted on first use."""
    global _ca
    with _ca_lock:
        if _ca is None:
            _ca = TestCA()
        return _ca


test_ca.__test__ = False  # type: ignore[attr-defined]
