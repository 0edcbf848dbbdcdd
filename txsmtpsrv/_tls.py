# -*- test-case-name: tests.test_tls_config -*-
"""
TLS configuration: from PEM files to OpenSSL server connections.

This module turns a declarative L{TLSConfig} (key, certificate, chain, client
CAs, per-hostname certificates, version limits) into something Twisted can
run TLS with, for both STARTTLS (C{transport.startTLS(holder)}) and implicit
TLS (C{endpoints.wrapServerTLS(holder, endpoint)}):

  - L{TLSContextHolder} is an C{IOpenSSLServerConnectionCreator} whose
    certificates can be swapped with L{TLSContextHolder.reload} while
    connections that already started keep theirs;
  - L{build_server_options} gives a plain C{CertificateOptions} when
    reloading is not needed.

Certificates and keys are handled as C{cryptography} objects because
pyOpenSSL 26 deprecates its own C{X509}/C{PKey} objects in most of
Twisted's TLS API (the one exception, C{caCerts}, is converted here).
SNI uses Twisted's C{contextForServerName} (Twisted >= 26.4).

L{tls_info} reads what was negotiated (version, cipher, SNI name, client
certificate) from any transport, also through protocol wrappers, so the
protocol can hand it to hooks as a frozen L{TLSInfo}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import idna
from constantly import NamedConstant
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ITransport,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "TLSConfig",
    "TLSConfigError",
    "TLSContextHolder",
    "TLSInfo",
    "build_server_options",
    "development_certificate",
    "start_handshake_timer",
    "tls_info",
]

log = Logger()

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

#: A PEM file path (C{str} or C{os.PathLike}), PEM C{bytes}, or PEM text
#: (a C{str} containing C{-----BEGIN}).
PEMSource = Union[str, bytes, "os.PathLike[str]"]
KeySource = Union[PEMSource, PrivateKey]
CertSource = Union[PEMSource, x509.Certificate]
#: One source (a file may hold several certificates) or a sequence of them.
CertsSource = Union[CertSource, Sequence[CertSource]]

_VERSIONS: dict[str, Any] = {
    "1": TLSVersion.TLSv1_0,
    "1.0": TLSVersion.TLSv1_0,
    "1.1": TLSVersion.TLSv1_1,
    "1.2": TLSVersion.TLSv1_2,
    "1.3": TLSVersion.TLSv1_3,
}
#: "TLSv1.2", "tls1.2", "TLS 1.2", "1.2" (case-insensitive, "_" for ".").
_VERSION_NAME = re.compile(r"(?:tls[\s.]*v?\s*)?(1(?:\.[0-3])?)")
_VERSION_ORDER = [
    TLSVersion.TLSv1_0,
    TLSVersion.TLSv1_1,
    TLSVersion.TLSv1_2,
    TLSVersion.TLSv1_3,
]

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)

#: Bound on the per-name cache of the SNI callback, so that clients sending
#: random server names cannot grow it without limit.
_SNI_CACHE_SIZE = 512


class TLSConfigError(ValueError):
    """
    A TLS setting cannot be used; the message names the setting and file.

    A C{ValueError} so that callers validating configuration generically
    still catch it.
    """


def _parse_version(value: object, what: str) -> Any:
    """Map C{"TLSv1.2"}-style names (or Twisted C{TLSVersion}s) to constants."""
    if value is None:
        return None
    if value in _VERSION_ORDER:
        return value
    if isinstance(value, str):
        m = _VERSION_NAME.fullmatch(value.strip().lower().replace("_", "."))
        if m is not None:
            return _VERSIONS[m.group(1)]
    raise TLSConfigError(
        f"{what}: unknown TLS version {value!r} "
        "(expected one of 'TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3')"
    )


def _normalize_name(name: str | bytes, *, allow_wildcard: bool = False) -> str:
    """
    Lower-case IDNA A-label form of a host name, without a trailing dot.

    SNI carries A-labels, configuration may use U-labels (C{bücher.example});
    both must meet in one spelling for the lookup to work.
    """
    if isinstance(name, bytes):
        text = name.decode("ascii")
    else:
        text = name
    text = text.strip().rstrip(".")
    prefix = ""
    if allow_wildcard and text.startswith("*."):
        prefix, text = "*.", text[2:]
    if not text:
        raise ValueError("empty host name")
    if text.isascii():
        text = text.lower()
        labels = text.split(".")
        if any(not label or len(label) > 63 for label in labels) or len(text) > 253:
            raise ValueError(f"invalid host name {name!r}")
        return prefix + text
    try:
        return prefix + idna.encode(text, uts46=True).decode("ascii").lower()
    except idna.IDNAError as e:
        raise ValueError(f"invalid host name {name!r}: {e}") from None


def _wire_name(raw: bytes | None) -> str | None:
    """The client's SNI name normalised for lookups, or C{None}."""
    if not raw:
        return None
    try:
        return _normalize_name(raw)
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass(frozen=True)
class TLSConfig:
    """
    Declarative TLS settings for a listener; files are read by the builders.

    Version limits and client-certificate policy apply to every SNI name:
    OpenSSL keeps them from the connection's first context.

    @ivar key: private key (path, PEM bytes/text or a C{cryptography} key).
        A combined PEM holding key and certificate may be given as either
        C{key} or C{cert} alone.
    @ivar cert: certificate; further certificates in the same PEM are used
        as the chain.
    @ivar chain: intermediate certificates sent after C{cert}.
    @ivar ca: CA certificate(s) client certificates are verified against.
        With C{ca}, a certificate the client presents must verify or the
        handshake fails. Without C{ca}, a requested client certificate is
        accepted whatever its issuer (the hook decides; L{TLSInfo.peer_certificate_verified}
        is then C{False}).
    @ivar sni: host name -> certificate for that name (a L{TLSConfig} whose
        key/cert/chain are used, a C{(key, cert)} or C{(key, cert, chain)}
        tuple, or any object with C{key}, C{cert} and optional C{chain}
        attributes). Names may be U-labels; C{"*.example.com"} matches one
        label. Unknown names and clients without SNI get the default.
    @ivar sni_callback: C{callable(name) -> entry or None} for names not in
        C{sni}; C{name} is the lower-case A-label. It runs synchronously in
        the handshake; results are cached per name until L{TLSContextHolder.reload}.
    @ivar request_client_cert: ask clients for a certificate (optional).
    @ivar require_client_cert: fail the handshake without a client
        certificate (implies C{request_client_cert}).
    @ivar min_version: lowest TLS version, e.g. C{"TLSv1.2"} (also
        C{"1.2"}, C{"tls1.2"} or a Twisted C{TLSVersion}); Twisted's default
        floor, TLSv1.2, when C{None}.
    @ivar max_version: highest TLS version (OpenSSL's newest when C{None}).
    @ivar handshake_timeout: seconds a client gets to finish the handshake;
        C{None} disables. Applied by the protocol via L{start_handshake_timer}.

    """

    key: KeySource | None = None
    cert: CertSource | None = None
    chain: CertsSource | None = None
    ca: CertsSource | None = None
    sni: Mapping[str, Any] = field(default_factory=dict)
    sni_callback: Callable[[str], Any] | None = None
    request_client_cert: bool = False
    require_client_cert: bool = False
    min_version: str | NamedConstant | None = None
    max_version: str | NamedConstant | None = None
    handshake_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        low = _parse_version(self.min_version, "min_version")
        high = _parse_version(self.max_version, "max_version")
        if low is not None and high is not None:
            if _VERSION_ORDER.index(low) > _VERSION_ORDER.index(high):
                raise TLSConfigError(
                    f"min_version {self.min_version!r} is higher than "
                    f"max_version {self.max_version!r}"
                )
        if self.handshake_timeout is not None:
            if (
                isinstance(self.handshake_timeout, bool)
                or not isinstance(self.handshake_timeout, (int, float))
                or not self.handshake_timeout > 0
            ):
                raise TLSConfigError(
                    "handshake_timeout must be a positive number of seconds "
                    f"or None, not {self.handshake_timeout!r}"
                )
        if not isinstance(self.sni, Mapping):
            raise TLSConfigError(
                f"sni must be a mapping of host name to certificate, not {type(self.sni).__name__}"
            )
        for name in self.sni:
            if not isinstance(name, str):
                raise TLSConfigError(f"sni: host name {name!r} is not a str")
            try:
                _normalize_name(name, allow_wildcard=True)
            except ValueError as e:
                raise TLSConfigError(f"sni: {e}") from None
        if self.sni_callback is not None and not callable(self.sni_callback):
            raise TLSConfigError(f"sni_callback must be callable, not {self.sni_callback!r}")

    @property
    def client_cert_mode(self) -> str:
        """C{"none"}, C{"optional"} or C{"required"}."""
        if self.require_client_cert:
            return "required"
        return "optional" if self.request_client_cert else "none"


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
# Building OpenSSL contexts


#: Connections whose client certificate failed verification but was accepted
#: (no C{ca} configured); read by L{tls_info}.
_ACCEPTED_UNVERIFIED: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()

#: Connection -> the context set it was created from. OpenSSL keeps using
#: callbacks of the context a connection started with even after an SNI
#: switch, so those Python objects must outlive a reload.
_KEEPALIVE: weakref.WeakKeyDictionary[SSL.Connection, _ContextSet] = weakref.WeakKeyDictionary()


def _accept_any(conn: SSL.Connection, cert: X509, errno: int, depth: int, ok: int) -> bool:
    """Verify callback that accepts every client certificate, noting failures."""
    if not ok:
        _ACCEPTED_UNVERIFIED.add(conn)
    return True


@dataclass(frozen=True)
class _Policy:
    """Settings shared by the default and all per-name contexts."""

    mode: str
    ca: tuple[x509.Certificate, ...]
    minimum: Any
    maximum: Any

    @classmethod
    def from_config(cls, config: TLSConfig) -> _Policy:
        ca = tuple(_load_certs(config.ca, "ca")) if config.ca is not None else ()
        if config.ca is not None and not ca:
            raise TLSConfigError("ca: no CA certificates given (use None to accept any client certificate)")
        minimum = _parse_version(config.min_version, "min_version")
        if minimum is not None and _VERSION_ORDER.index(minimum) < _VERSION_ORDER.index(TLSVersion.TLSv1_2):
            log.warn("TLS min_version {version} allows obsolete TLS versions", version=config.min_version)
        return cls(config.client_cert_mode, ca, minimum, _parse_version(config.max_version, "max_version"))

    def options(self, identity: _Identity, **extra: Any) -> CertificateOptions:
        """Make C{CertificateOptions} for C{identity}; its context is configured and unused."""
        kwargs: dict[str, Any] = dict(
            privateKey=identity.key,
            certificate=identity.cert,
            extraCertChain=list(identity.chain) or None,
            **extra,
        )
        if self.minimum is not None:
            kwargs["insecurelyLowerMinimumTo"] = self.minimum
        if self.maximum is not None:
            kwargs["lowerMaximumSecurityTo"] = self.maximum
        if self.mode != "none" and self.ca:
            kwargs["verify"] = True
            # The one Twisted API that still wants pyOpenSSL X509 objects.
            kwargs["caCerts"] = [X509.from_cryptography(c) for c in self.ca]
            kwargs["requireCertificate"] = self.mode == "required"
        try:
            opts = CertificateOptions(**kwargs)
            ctx = opts.getContext()
        except SSL.Error as e:
            raise TLSConfigError(f"OpenSSL rejected the TLS settings: {e}") from None
        if self.mode != "none":
            if self.ca:
                # Tell clients which issuers we accept so they pick the right cert.
                for c in self.ca:
                    ctx.add_client_ca(c)
            else:
                flags = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
                if self.mode == "required":
                    flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
                ctx.set_verify(flags, _accept_any)
        return opts


class _ContextSet:
    """
    One loaded configuration: the default context plus per-name contexts.

    Everything is built up front (per-name contexts once), so a handshake only
    does dictionary lookups; the SNI callback's results are cached.
    """

    def __init__(self, config: TLSConfig, hostname: str | None) -> None:
        self.config = config
        self.policy = _Policy.from_config(config)
        if config.key is None and config.cert is None:
            dev = development_certificate(hostname or "localhost")
            identity = _load_identity(dev.key, dev.cert, None, "development certificate")
        else:
            identity = _load_identity(config.key, config.cert, config.chain, "TLS")
        #: The default certificate, for logs ("reloaded: subject ..., expires ...").
        self.certificate = identity.cert
        self.options = self.policy.options(identity, contextForServerName=self.context_for_name)
        self.default_context: SSL.Context = self.options.getContext()
        self._exact: dict[str, SSL.Context] = {}
        self._wildcard: dict[str, SSL.Context] = {}
        built: dict[int, SSL.Context] = {}
        for name, entry in config.sni.items():
            key = _normalize_name(name, allow_wildcard=True)
            ctx = built.get(id(entry))
            if ctx is None:
                ctx = self._build(entry, f"sni[{name!r}]")
                built[id(entry)] = ctx
            if key.startswith("*."):
                self._wildcard[key[2:]] = ctx
            else:
                self._exact[key] = ctx
        self._callback = config.sni_callback
        self._cache: OrderedDict[str, SSL.Context | None] = OrderedDict()

    def _build(self, entry: object, what: str) -> SSL.Context:
        return self.policy.options(_identity_from_entry(entry, what)).getContext()

    def context_for_name(self, raw: bytes | None) -> SSL.Context | None:
        """C{contextForServerName} callback: the context for the client's SNI."""
        name = _wire_name(raw)
        if name is None:
            return None
        ctx = self._exact.get(name)
        if ctx is not None:
            return ctx
        parent = name.partition(".")[2]
        if parent and parent in self._wildcard:
            return self._wildcard[parent]
        if self._callback is None:
            return None
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        try:
            entry = self._callback(name)
            ctx = None if entry is None else self._build(entry, f"sni_callback({name!r})")
        except Exception:
            # A broken callback must not cost clients their handshake: they
            # get the default certificate, and the failure is cached (and so
            # logged once per name) like any other answer.
            log.failure("sni_callback failed for {server_name}; using the default certificate",
                        server_name=name)
            ctx = None
        self._cache[name] = ctx
        if len(self._cache) > _SNI_CACHE_SIZE:
            self._cache.popitem(last=False)
        return ctx


def build_server_options(config: TLSConfig, *, hostname: str | None = None) -> CertificateOptions:
    """
    Build C{CertificateOptions} for C{config} (no reloading).

    Usable with C{transport.startTLS(opts)} and C{endpoints.wrapServerTLS(opts,
    endpoint)}. Without key and certificate, a L{development_certificate} for
    C{hostname} is used. Keep the returned object alive while connections use it.

    @raise TLSConfigError: the configuration cannot be loaded.
    """
    return _ContextSet(config, hostname).options


@implementer(IOpenSSLServerConnectionCreator)
class TLSContextHolder:
    """
    Reloadable TLS settings for a listener (an C{IOpenSSLServerConnectionCreator}).

    Pass the holder itself to C{transport.startTLS()} or
    C{endpoints.wrapServerTLS()}; each new connection takes the contexts
    current at that moment, so L{reload} changes certificates without a
    restart while established connections keep theirs.
    """

    def __init__(self, config: TLSConfig, *, hostname: str | None = None) -> None:
        """
        @param hostname: name for the L{development_certificate} used when
            C{config} has no key and certificate (e.g. the server's name).
        @raise TLSConfigError: the configuration cannot be loaded.
        """
        self._hostname = hostname
        self._current = _ContextSet(config, hostname)

    @property
    def config(self) -> TLSConfig:
        """The configuration in use for new connections."""
        return self._current.config

    @property
    def handshake_timeout(self) -> float | None:
        """Seconds allowed for a handshake (see L{start_handshake_timer})."""
        return self._current.config.handshake_timeout

    def reload(self, config: TLSConfig | None = None) -> None:
        """
        Load C{config} (or re-read the current one's files) for new connections.

        Everything is loaded and checked before the switch, so on error the
        old certificates stay in use.

        @raise TLSConfigError: the new configuration cannot be loaded.
        """
        new = _ContextSet(config if config is not None else self._current.config, self._hostname)
        self._current = new
        cert = new.certificate
        log.info("TLS configuration reloaded: certificate {subject}, expires {expires}",
                 subject=cert.subject.rfc4514_string(), expires=cert.not_valid_after_utc.isoformat())

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Create the OpenSSL connection for one new TLS connection."""
        current = self._current
        conn = SSL.Connection(current.default_context)
        _KEEPALIVE[conn] = current
        return conn

    def getContext(self) -> SSL.Context:
        """
        The current default context, for APIs that only take context factories.

        Prefer passing the holder itself: connections made from this context
        directly are not tied to their configuration across a reload.
        """
        return self._current.default_context


# --------------------------------------------------------------------------
# Development certificate


def development_certificate(hostname: str, *, days: int = 365) -> TLSConfig:
    """
    Generate a self-signed EC P-256 certificate for C{hostname}, in memory.

    Lets TLS (STARTTLS, SMTPS) be tried without preparing files; clients
    cannot verify it, so a warning is logged: never use it in production.

    @return: a L{TLSConfig} with C{key} and C{cert} as PEM bytes.
    """
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        name = str(ip)
        san: x509.GeneralName = x509.IPAddress(ip)
    else:
        try:
            name = _normalize_name(hostname)
        except ValueError as e:
            raise TLSConfigError(f"development certificate: {e}") from None
        san = x509.DNSName(name)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    log.warn(
        "Using a self-signed development TLS certificate for {hostname}, valid {days} days; "
        "configure a real key and certificate for production",
        hostname=name,
        days=days,
    )
    return TLSConfig(
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert=cert.public_bytes(serialization.Encoding.PEM),
    )


# --------------------------------------------------------------------------
# Inspecting an established connection


@dataclass(frozen=True)
class TLSInfo:
    """
    What a TLS handshake negotiated, for hooks and logs.

    @ivar version: e.g. C{"TLSv1.3"}.
    @ivar cipher: OpenSSL cipher name, e.g. C{"TLS_AES_256_GCM_SHA384"}.
    @ivar server_name: SNI host name sent by the client (lower-case
        A-label), or C{None}.
    @ivar peer_certificate: the client's certificate, if it sent one.
    @ivar peer_certificate_verified: C{True} when the client certificate was
        verified against the configured C{ca}; C{False} when there is none or
        it was accepted without verification (no C{ca} configured).
    """

    version: str
    cipher: str
    server_name: str | None = None
    peer_certificate: x509.Certificate | None = None
    peer_certificate_verified: bool = False


_MAX_WRAPPER_DEPTH = 16


def _tls_connection(transport: object) -> SSL.Connection | None:
    """Find the OpenSSL connection under C{transport}, walking protocol wrappers."""
    current: object = transport
    for _ in range(_MAX_WRAPPER_DEPTH):
        if current is None:
            return None
        get_handle = getattr(current, "getHandle", None)
        if callable(get_handle):
            try:
                handle = get_handle()
            except Exception:
                handle = None
            if isinstance(handle, SSL.Connection):
                return handle
        current = getattr(current, "transport", None)
    return None


def tls_info(transport: object) -> TLSInfo | None:
    """
    Describe the TLS session of C{transport}, or C{None} if it is not (yet) TLS.

    Works on a TCP transport after C{startTLS}, under TLS endpoints and
    through C{ProtocolWrapper}s (e.g. a PROXY-protocol wrapper). Call it once
    the handshake has completed (C{IHandshakeListener.handshakeCompleted}).
    """
    conn = _tls_connection(transport)
    if conn is None:
        return None
    cipher = conn.get_cipher_name()
    if cipher is None:
        return None
    raw_name = conn.get_servername()
    server_name = _wire_name(raw_name)
    if server_name is None and raw_name:
        server_name = raw_name.decode("ascii", "replace")
    peer = conn.get_peer_certificate(as_cryptography=True)
    return TLSInfo(
        version=conn.get_protocol_version_name(),
        cipher=cipher,
        server_name=server_name,
        peer_certificate=peer,
        peer_certificate_verified=peer is not None and conn not in _ACCEPTED_UNVERIFIED,
    )


class HandshakeTimer:
    """
    Aborts a connection whose TLS handshake does not finish in time.

    While C{hold()} is true (the server itself holds reading, e.g. a slow
    on_connect hook under implicit TLS) the time does not count against the
    client: the timer starts again.
    """

    def __init__(self, transport: ITransport, timeout: float, clock: IReactorTime,
                 hold: Callable[[], bool] | None = None, session_id: str | None = None) -> None:
        self._session_id = session_id
        self._transport = transport
        self._timeout = timeout
        self._clock = clock
        self._hold = hold
        self._call: IDelayedCall | None = clock.callLater(timeout, self._expire)

    def active(self) -> bool:
        """Whether the timer is still running."""
        return self._call is not None and self._call.active()

    def restart(self) -> None:
        """The server stopped holding reading: the client gets the whole time again."""
        if self.active():
            assert self._call is not None
            self._call.reset(self._timeout)

    def cancel(self) -> None:
        """The handshake completed (or the connection went away)."""
        if self.active():
            assert self._call is not None
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        if self._hold is not None and self._hold():
            self._call = self._clock.callLater(self._timeout, self._expire)
            return
        self._call = None
        log.info("TLS handshake not completed within {timeout} s, aborting", timeout=self._timeout,
                 session_id=self._session_id)
        abort = getattr(self._transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self._transport.loseConnection()


def start_handshake_timer(
    transport: ITransport, timeout: float | None, clock: IReactorTime,
    hold: Callable[[], bool] | None = None, session_id: str | None = None,
) -> HandshakeTimer | None:
    """
    Abort C{transport} unless the TLS handshake finishes within C{timeout} s.

    Call right after C{startTLS} (or in C{connectionMade} under implicit
    TLS); cancel the returned timer in C{handshakeCompleted} and
    C{connectionLost}. No SMTP reply is possible mid-handshake, hence abort.
    """
    if timeout is None:
        return None
    return HandshakeTimer(transport, timeout, clock, hold, session_id)

