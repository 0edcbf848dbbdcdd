# -*- test-case-name: tests.test_tls_config_errors,tests.test_tls_config_reload -*-
"""
Reading keys and certificates for L{txsmtpsrv._tls}: from files, PEM bytes
or text, or C{cryptography} objects, with errors (L{TLSConfigError}) that
name the setting and the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

__all__ = ["PrivateKey", "TLSConfigError"]

PrivateKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
]
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)


class TLSConfigError(ValueError):
    """
    A TLS setting cannot be used; the message names the setting and file.

    A C{ValueError} so that callers validating configuration generically
    still catch it.
    """


# --------------------------------------------------------------------------
# Loading PEM material with specific errors


def _read_source(source: object, what: str) -> tuple[bytes, str]:
    """Return the PEM bytes of C{source} and a label naming it in errors."""
    if isinstance(source, bytes):
        return source, f"{what} (PEM data)"
    if isinstance(source, str) and "-----BEGIN" in source:
        return source.encode("ascii", "replace"), f"{what} (PEM text)"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                return f.read(), f"{what} file {path}"
        except FileNotFoundError:
            raise TLSConfigError(f"{what} file not found: {path}") from None
        except OSError as e:
            raise TLSConfigError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    raise TLSConfigError(
        f"{what} must be a file path, PEM bytes or a cryptography object, not {type(source).__name__}"
    )


def _blocks(data: bytes, kinds: Callable[[bytes], bool]) -> list[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if kinds(m.group(1))]


def _is_key_block(kind: bytes) -> bool:
    return kind.endswith(b"PRIVATE KEY")


def _is_cert_block(kind: bytes) -> bool:
    return kind == b"CERTIFICATE"


def _load_key_pem(data: bytes, label: str) -> PrivateKey:
    blocks = _blocks(data, _is_key_block)
    if not blocks:
        raise TLSConfigError(f"no PEM private key found in {label}")
    block = blocks[0]
    if block.startswith(b"-----BEGIN ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in block:
        raise TLSConfigError(f"the private key in {label} is encrypted; give an unencrypted key")
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(f"cannot parse the private key in {label}: {e}") from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise TLSConfigError(f"unsupported private key type in {label}: {type(key).__name__}")
    return key


def _load_certs_pem(data: bytes, label: str) -> list[x509.Certificate]:
    blocks = _blocks(data, _is_cert_block)
    if not blocks:
        raise TLSConfigError(f"no PEM certificate found in {label}")
    certs = []
    for i, block in enumerate(blocks):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise TLSConfigError(f"cannot parse certificate #{i + 1} in {label}: {e}") from None
    return certs


def _load_certs(source: object, what: str) -> list[x509.Certificate]:
    """Certificates from one source or a sequence of sources, in order."""
    if isinstance(source, x509.Certificate):
        return [source]
    if isinstance(source, (list, tuple)):
        out: list[x509.Certificate] = []
        for i, item in enumerate(source):
            out.extend(_load_certs(item, f"{what}[{i}]"))
        return out
    data, label = _read_source(source, what)
    return _load_certs_pem(data, label)


def _spki(key: Any) -> bytes:
    spki: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki


@dataclass(frozen=True)
class _Identity:
    """A loaded, checked private key with its certificate and chain."""

    key: PrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]


def _load_identity(key_src: object, cert_src: object, chain_src: object, what: str) -> _Identity:
    """Load key + certificate (+ chain) and check that they belong together."""
    if key_src is None and cert_src is None:
        raise TLSConfigError(f"{what}: no key and certificate given")
    key_data = key_label = cert_data = cert_label = None
    if isinstance(key_src, _PRIVATE_KEY_TYPES):
        key: PrivateKey | None = key_src
        key_label = f"{what} key (object)"
    elif key_src is not None:
        key_data, key_label = _read_source(key_src, f"{what} key")
        key = None
    else:
        key = None
    if isinstance(cert_src, x509.Certificate):
        certs = [cert_src]
        cert_label = f"{what} certificate (object)"
    elif cert_src is not None:
        cert_data, cert_label = _read_source(cert_src, f"{what} certificate")
        certs = []
    else:
        certs = []

    if key is None:
        # The key may sit in the key source or, combined, in the cert source.
        if key_data is not None:
            key = _load_key_pem(key_data, key_label or what)
        elif cert_data is not None and _blocks(cert_data, _is_key_block):
            key = _load_key_pem(cert_data, cert_label or what)
            key_label = cert_label
        else:
            raise TLSConfigError(f"{what}: certificate given without a private key ({cert_label})")
    if not certs:
        if cert_data is not None:
            certs = _load_certs_pem(cert_data, cert_label or what)
        elif key_data is not None and _blocks(key_data, _is_cert_block):
            certs = _load_certs_pem(key_data, key_label or what)
            cert_label = key_label
        else:
            raise TLSConfigError(f"{what}: private key given without a certificate ({key_label})")
    chain = list(certs[1:])
    if chain_src is not None:
        chain.extend(_load_certs(chain_src, f"{what} chain"))
    leaf = certs[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(
            f"{what}: the private key ({key_label}) does not match the certificate "
            f"({cert_label}, subject {leaf.subject.rfc4514_string()})"
        )
    return _Identity(key, leaf, tuple(chain))


def _identity_from_entry(entry: object, what: str) -> _Identity:
    """Accept a L{TLSConfig}, a (key, cert[, chain]) tuple, a mapping or a key/cert object."""
    if isinstance(entry, tuple):
        if len(entry) not in (2, 3):
            raise TLSConfigError(f"{what}: expected (key, cert) or (key, cert, chain), got {len(entry)} items")
        return _load_identity(entry[0], entry[1], entry[2] if len(entry) == 3 else None, what)
    if isinstance(entry, Mapping):
        return _load_identity(entry.get("key"), entry.get("cert"), entry.get("chain"), what)
    if hasattr(entry, "key") or hasattr(entry, "cert"):
        return _load_identity(
            getattr(entry, "key", None), getattr(entry, "cert", None), getattr(entry, "chain", None), what
        )
    raise TLSConfigError(
        f"{what}: expected a TLSConfig, a (key, cert[, chain]) tuple or an object "
        f"with key/cert attributes, not {type(entry).__name__}"
    )


# --------------------------------------------------------------------------
# Several certificates in one context


def key_type(key: PrivateKey) -> str:
    """C{"RSA"}, C{"ECDSA"}, C{"Ed25519"}, C{"Ed448"} or C{"DSA"}: OpenSSL keeps one certificate of each."""
    for kind, name in ((rsa.RSAPrivateKey, "RSA"), (ec.EllipticCurvePrivateKey, "ECDSA"),
                       (ed25519.Ed25519PrivateKey, "Ed25519"), (ed448.Ed448PrivateKey, "Ed448")):
        if isinstance(key, kind):
            return name
    return "DSA"


def check_key_types(identities: "list[_Identity]", what: str) -> None:
    """Certificates served side by side need different key types (a second RSA one would replace the first)."""
    seen: dict[str, str] = {}
    for identity in identities:
        kind = key_type(identity.key)
        if kind in seen:
            raise TLSConfigError(
                f"{what}: two {kind} certificates ({seen[kind]} and {identity.cert.subject.rfc4514_string()}); "
                "certificates served side by side need different key types (e.g. one RSA, one ECDSA)")
        seen[kind] = identity.cert.subject.rfc4514_string()


def serve_side_by_side(context: Any, identities: "list[_Identity]") -> None:
    """
    Load every identity into one pyOpenSSL C{Context}, each with its own chain.

    OpenSSL keeps a certificate slot per key type and, per handshake, uses the
    one the client can verify (its signature algorithms, and for TLS 1.2 its
    cipher suites): ECDSA for clients that offer it, RSA for the others.
    C{SSL_CTX_use_certificate_chain_file} is the one bound call that sets a
    chain for the current slot only (C{add_extra_chain_cert} would send every
    chain with every certificate), hence the short-lived file of public PEM.
    """
    import tempfile

    for identity in identities:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (identity.cert, *identity.chain))
        with tempfile.NamedTemporaryFile(prefix="txsmtpsrv-chain-", suffix=".pem") as f:
            f.write(pem)
            f.flush()
            context.use_certificate_chain_file(f.name)
        context.use_privatekey(identity.key)
        context.check_privatekey()


def _identities_from_entry(entry: object, what: str) -> list[_Identity]:
    """An SNI entry's certificates: one entry, a list of entries, or a TLSConfig with additional_certificates."""
    if isinstance(entry, list):
        if not entry:
            raise TLSConfigError(f"{what}: an empty list of certificates")
        identities = [_identity_from_entry(item, f"{what}[{i}]") for i, item in enumerate(entry)]
    else:
        identities = [_identity_from_entry(entry, what)]
        more = getattr(entry, "additional_certificates", ())
        identities += [_identity_from_entry(item, f"{what}.additional_certificates[{i}]")
                       for i, item in enumerate(more)]
    check_key_types(identities, what)
    return identities
