# -*- test-case-name: tests.test_selfsigned -*-
"""
Self-signed certificates, minted in memory: the one place that builds them.

The library needs them twice: the development certificate STARTTLS falls
back on without configured files (L{_tls.development_certificate}) and the
root of the throwaway test CA (L{_testca.TestCA}); the project's tests and
C{bench/tls.py} use the same helper instead of their own builders.
Keys are EC P-256 (fast to make) unless RSA-2048 is asked for.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Literal, Optional, Sequence, Tuple, Union

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PrivateKey", "general_name", "new_key", "self_signed", "key_pem", "cert_pem", "CA_KEY_USAGE"]

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

#: A CA's key usage: it signs certificates and CRLs (and may sign itself).
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False)

#: How long before "now" a new certificate becomes valid: clocks differ a little.
_BACKDATE = datetime.timedelta(minutes=5)


def new_key(key_type: Literal["ec", "rsa"] = "ec") -> PrivateKey:
    """A new private key: EC P-256, or RSA-2048 (public exponent 65537)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type != "ec":
        raise ValueError(f"key type {key_type!r} is not 'ec' or 'rsa'")
    return ec.generate_private_key(ec.SECP256R1())


def general_name(name: str) -> x509.GeneralName:
    """
    A subjectAltName entry: an IP address (also in brackets) or else a DNS
    name, a U-label as its A-label (C{ValueError} if it has none).
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    if not name.isascii():
        name = idna.encode(name, uts46=True).decode("ascii")  # idna.IDNAError is a ValueError
    return x509.DNSName(name)


def self_signed(common_name: str, *, names: Optional[Sequence[str]] = None, days: float = 1,
                key: Optional[PrivateKey] = None, key_type: Literal["ec", "rsa"] = "ec",
                ca: bool = False, path_length: Optional[int] = None) -> Tuple[PrivateKey, x509.Certificate]:
    """
    A self-signed certificate for C{common_name}, valid from five minutes
    ago for C{days} days, with a new key (or C{key}).

    A server certificate (C{ca} false): its subjectAltName is C{names}
    (default C{[common_name]}; IP addresses as such), C{CA:FALSE} and the
    serverAuth extended key usage. A root CA (C{ca} true): C{CA:TRUE} with
    C{path_length}, key usage to sign certificates, a subject key
    identifier, and no names.

    @return: the key and the certificate.
    """
    if key is None:
        key = new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if ca:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
    else:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(
                [general_name(n) for n in (names if names is not None else [common_name])]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
    return key, builder.sign(key, hashes.SHA256())


def key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)
