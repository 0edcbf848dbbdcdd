# -*- test-case-name: tests.test_tls_config_handshake,tests.test_tls_config_reload,tests.test_tls_config_errors -*-
"""
Test certificates generated at run time with C{cryptography}.

Tests need real CAs, server certificates for several names and client
certificates from trusted and foreign issuers; generating them (EC P-256,
fast) avoids checked-in keys that expire. Shared by every TLS test, with
the PEM-file and client C{ssl} context helpers those tests need.
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txsmtpsrv._selfsigned import CA_KEY_USAGE, key_pem, self_signed as _self_signed

__all__ = [
    "CA", "Leaf", "client_context", "common_name", "make_ca", "pem_dir", "self_signed", "unverified_client_context",
    "write_leaf", "write_pem",
]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
             days: int) -> x509.CertificateBuilder:
    """A certificate builder for C{subject} signed by C{issuer}, valid from five minutes ago for C{days} days."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def common_name(cert: x509.Certificate) -> str:
    """The subject CN of C{cert}, to tell certificates apart in assertions."""
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


@dataclass(frozen=True)
class Leaf:
    """An end-entity key and certificate, as objects and PEM."""

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


@dataclass(frozen=True)
class CA:
    """
    A certificate authority that issues server, client and CA certificates.

    C{chain} is what its leaves must send after their own certificate
    (empty for a root).
    """

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
        return (
            _builder(subject, self.cert.subject, public_key, days)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue(self, cn: str, *, names: Sequence[str] | None = None, client: bool = False, days: int = 2) -> Leaf:
        """Issue a server certificate (SAN = C{names} or C{[cn]}) or a client one."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(cn), key.public_key(), days).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if client:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in (names or [cn])]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Leaf(key, cert, self.chain)

    def intermediate(self, cn: str) -> CA:
        """Issue an intermediate CA whose leaves carry it as their chain."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(_name(cn), key.public_key(), 30)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        # Leaves of an intermediate must send it (and any above it, not the root).
        return CA(key, cert, chain=(cert, *self.chain))


def make_ca(cn: str = "txsmtpsrv Test CA") -> CA:
    """Create a self-signed root CA (the library's one self-signed builder, as a CA)."""
    key, cert = _self_signed(cn, days=30, ca=True)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return CA(key, cert)


def write_pem(directory: str, filename: str, *parts: bytes) -> str:
    """Write PEM C{parts} to C{directory/filename} and return the path."""
    path = os.path.join(directory, filename)
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return path


def write_leaf(directory: str, name: str, leaf: Leaf) -> dict[str, str]:
    """Write C{name}.key, C{name}.crt (and C{name}.chain if it has one); return their paths by file name."""
    paths = {name + ".key": write_pem(directory, name + ".key", leaf.key_pem),
             name + ".crt": write_pem(directory, name + ".crt", leaf.cert_pem)}
    if leaf.chain:
        paths[name + ".chain"] = write_pem(directory, name + ".chain", leaf.chain_pem)
    return paths


def pem_dir(prefix: str) -> str:
    """A temporary directory for PEM files, removed when the test run ends."""
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, True)
    return directory


def self_signed(cn: str, *, rsa_key: bool = False) -> Leaf:
    """
    A throwaway self-signed server certificate for C{cn} (also its only
    SAN), valid for a day: EC P-256, or RSA-2048 with C{rsa_key} (for tests
    of RSA and ECDSA certificates side by side). Made by the library's
    helper, the one that makes the development certificate.
    """
    key, cert = _self_signed(cn, key_type="rsa" if rsa_key else "ec")
    return Leaf(key, cert)


def unverified_client_context(*, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """
    A client C{ssl} context that checks neither the server's certificate nor
    its name: for servers on the development certificate or a throwaway
    self-signed one, in tests only. C{version} pins both the minimum and
    the maximum TLS version.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def client_context(ca: CA, *, verify: bool = True, cert: tuple[str, str] | None = None,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context trusting C{ca} (or nothing if not C{verify}), with (cert, key) files; no name check."""
    if verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # names are checked by the tests via the CN
        ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    else:
        ctx = unverified_client_context()
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx
