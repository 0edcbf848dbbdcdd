# -*- test-case-name: tests.test_tls_config_handshake,tests.test_tls_config_reload,tests.test_tls_config_errors -*-
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

Reading keys and certificates lives in L{txsmtpsrv._tlsload}; what one
connection negotiated (L{tls_info}, L{TLSInfo}) and the handshake timer in
L{txsmtpsrv._tlsconn}; both are re-exported here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from constantly import NamedConstant
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

# Re-exported: the public names stay importable from here.
from . import _tlstickets
from ._selfsigned import cert_pem, key_pem, self_signed
from ._tlsconn import (_ACCEPT_ANY, _ACCEPTED_UNVERIFIED, TLSInfo, _normalize_name, _wire_name,
                       start_handshake_timer, tls_info)
from ._tlsload import (PrivateKey, TLSConfigError, _Identity, _identity_from_entry, _load_certs,
                       _identities_from_entry, _load_identity, check_key_types, serve_side_by_side)

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

#: Bound on the per-name cache of the SNI callback, so that clients sending
#: random server names cannot grow it without limit.
_SNI_CACHE_SIZE = 512


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
    @ivar additional_certificates: more certificates served side by side
        with C{key}/C{cert}, one per key type: typically an ECDSA one next
        to an RSA one. Each handshake uses the certificate the client can
        verify: ECDSA (a cheaper handshake) for clients that offer it, RSA
        for the others. Entries as for C{sni} values.
    @ivar sni: host name -> certificate for that name (a L{TLSConfig} whose
        key/cert/chain and additional_certificates are used, a C{(key, cert)}
        or C{(key, cert, chain)} tuple, any object with C{key}, C{cert} and
        optional C{chain} attributes, or a list of such entries of different
        key types, served side by side). Names may be U-labels; C{"*.example.com"} matches one
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
    @ivar session_tickets: issue and accept TLS session tickets (TLS 1.3 and
        1.2), so that returning clients resume their session with a cheap
        handshake. Off where this OpenSSL build does not let their keys be
        set (logged once).
    @ivar ticket_secret: what the ticket keys are derived from: at least 32
        bytes, or a file holding them. Servers (and processes) given the same
        secret accept each other's tickets. C{None}: a random secret for
        this holder (kept across L{TLSContextHolder.reload}).
    @ivar ticket_lifetime: seconds per ticket key (and how long clients may
        use a ticket): new tickets use the current key, the previous key
        still decrypts, older ones are forgotten.

    """

    key: KeySource | None = None
    cert: CertSource | None = None
    chain: CertsSource | None = None
    additional_certificates: Sequence[Any] = ()
    ca: CertsSource | None = None
    sni: Mapping[str, Any] = field(default_factory=dict)
    sni_callback: Callable[[str], Any] | None = None
    request_client_cert: bool = False
    require_client_cert: bool = False
    min_version: str | NamedConstant | None = None
    max_version: str | NamedConstant | None = None
    handshake_timeout: float | None = 30.0
    session_tickets: bool = True
    ticket_secret: bytes | str | os.PathLike[str] | None = field(default=None, repr=False)
    ticket_lifetime: float = 3600.0

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
        if (isinstance(self.ticket_lifetime, bool) or not isinstance(self.ticket_lifetime, (int, float))
                or not _tlstickets.MIN_LIFETIME <= self.ticket_lifetime <= _tlstickets.MAX_LIFETIME):
            raise TLSConfigError(
                f"ticket_lifetime must be {_tlstickets.MIN_LIFETIME:g} to {_tlstickets.MAX_LIFETIME:g} "
                f"seconds, not {self.ticket_lifetime!r}")
        if isinstance(self.additional_certificates, (str, bytes, Mapping)) or not isinstance(
                self.additional_certificates, Sequence):
            raise TLSConfigError("additional_certificates must be a list of (key, cert) entries, "
                                 f"not {type(self.additional_certificates).__name__}")
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
# Building OpenSSL contexts


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
    tickets: _tlstickets.TicketKeys | None = None

    @classmethod
    def from_config(cls, config: TLSConfig, tickets: _tlstickets.TicketKeys | None = None) -> _Policy:
        ca = tuple(_load_certs(config.ca, "ca")) if config.ca is not None else ()
        if config.ca is not None and not ca:
            raise TLSConfigError("ca: no CA certificates given (use None to accept any client certificate)")
        minimum = _parse_version(config.min_version, "min_version")
        if minimum is not None and _VERSION_ORDER.index(minimum) < _VERSION_ORDER.index(TLSVersion.TLSv1_2):
            log.warn("TLS min_version {version} allows obsolete TLS versions", version=config.min_version)
        return cls(config.client_cert_mode, ca, minimum, _parse_version(config.max_version, "max_version"),
                   tickets)

    def options(self, identities: list[_Identity], **extra: Any) -> CertificateOptions:
        """Make C{CertificateOptions} for C{identities} (side by side); its context is configured and unused."""
        identity = identities[0]
        kwargs: dict[str, Any] = dict(
            privateKey=identity.key,
            certificate=identity.cert,
            # Several certificates: each gets its own chain below.
            extraCertChain=list(identity.chain) or None if len(identities) == 1 else None,
            enableSessionTickets=self.tickets is not None,
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
        if len(identities) > 1:
            try:
                serve_side_by_side(ctx, identities)
            except SSL.Error as e:
                raise TLSConfigError(f"OpenSSL rejected the certificates: {e}") from None
        if self.tickets is not None:
            # Sessions resume only under the client-certificate policy they were made under.
            policy = b"\0".join([self.mode.encode("ascii"),
                                  *(c.public_bytes(serialization.Encoding.DER) for c in self.ca)])
            _tlstickets.install(ctx, self.tickets, policy)
        else:
            _tlstickets.disable(ctx)
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
                _ACCEPT_ANY.add(ctx)
        return opts


class _ContextSet:
    """
    One loaded configuration: the default context plus per-name contexts.

    Everything is built up front (per-name contexts once), so a handshake only
    does dictionary lookups; the SNI callback's results are cached.
    """

    def __init__(self, config: TLSConfig, hostname: str | None,
                 tickets: _tlstickets.TicketKeys | None = None) -> None:
        self.config = config
        #: The ticket keys in use (kept by the holder across reloads).
        self.tickets = _tlstickets.keys_for(config, tickets)
        self.policy = _Policy.from_config(config, self.tickets)
        if config.key is None and config.cert is None:
            dev = development_certificate(hostname or "localhost")
            identities = [_load_identity(dev.key, dev.cert, None, "development certificate")]
        else:
            identities = [_load_identity(config.key, config.cert, config.chain, "TLS")]
        identities += [_identity_from_entry(entry, f"additional_certificates[{i}]")
                       for i, entry in enumerate(config.additional_certificates)]
        check_key_types(identities, "TLS")
        #: The default certificate, for logs ("reloaded: subject ..., expires ...").
        self.certificate = identities[0].cert
        self.options = self.policy.options(identities, contextForServerName=self.context_for_name)
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
        return self.policy.options(_identities_from_entry(entry, what)).getContext()

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
    def session_tickets(self) -> bool:
        """Whether new connections get session tickets (see L{TLSConfig.session_tickets})."""
        return self._current.tickets is not None

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
        new = _ContextSet(config if config is not None else self._current.config, self._hostname,
                          self._current.tickets)
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
        name = str(ipaddress.ip_address(hostname.strip("[]")))
    except ValueError:
        try:
            name = _normalize_name(hostname)
        except ValueError as e:
            raise TLSConfigError(f"development certificate: {e}") from None
    key, cert = self_signed(name, days=days)
    log.warn(
        "Using a self-signed development TLS certificate for {hostname}, valid {days} days; "
        "configure a real key and certificate for production",
        hostname=name,
        days=days,
    )
    return TLSConfig(key=key_pem(key), cert=cert_pem(cert))
