# -*- test-case-name: tests.test_tls_memory -*-
"""
TLS on one established connection: what the handshake negotiated
(L{TLSInfo}, read by L{tls_info} for hooks and logs) and the timer that
aborts a connection whose handshake does not finish (L{start_handshake_timer}).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import idna

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl_lib
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport, ITransport
from twisted.logger import Logger
from zope.interface import providedBy
from zope.interface.declarations import Provides

__all__ = ["HandshakeTimer", "TLSInfo", "keep_declarations", "start_handshake_timer", "tls_info"]

log = Logger()


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


#: Connections whose client certificate failed verification but was accepted
#: (no C{ca} configured); read by L{tls_info}.
_ACCEPTED_UNVERIFIED: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()
#: Contexts that request client certificates without a C{ca} to verify them
#: against: nothing their connections present counts as verified.
_ACCEPT_ANY: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


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
    @ivar resumed: the client resumed an earlier session (a session ticket):
        an abbreviated handshake without the server's signature.
    """

    version: str
    cipher: str
    server_name: str | None = None
    peer_certificate: x509.Certificate | None = None
    peer_certificate_verified: bool = False
    resumed: bool = False


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
        # A resumed session skips verification (and so our callback): a context
        # that accepts any certificate never calls one verified.
        peer_certificate_verified=(peer is not None and conn not in _ACCEPTED_UNVERIFIED
                                   and conn.get_context() not in _ACCEPT_ANY),
        resumed=_resumed(conn),
    )


def _resumed(conn: SSL.Connection) -> bool:
    """C{SSL_session_reused}: pyOpenSSL binds it but has no method for it."""
    return bool(_openssl_lib.SSL_session_reused(conn._ssl))


#: (transport class, TLS protocol class) -> the interface declarations that
#: C{startTLS} gives their instances, kept alive (see L{keep_declarations}).
_DECLARATIONS: dict[tuple[type, type], tuple[object, ...]] = {}
#: Transport classes are few (TCP, UNIX, a PROXY wrapper); a bound all the same.
_MAX_DECLARATIONS = 16


def keep_declarations(transport: object) -> None:
    """
    Keep alive the interface declarations Twisted's C{startTLS} just gave
    C{transport} and its TLS protocol, so the next connection finds them cached.

    C{startTLS} marks the transport C{ISSLTransport} and C{TLSMemoryBIOProtocol.
    makeConnection} copies every interface of the transport onto the TLS
    protocol, one C{directlyProvides} each: each call looks up
    C{Provides(class, interface)}, which zope.interface caches only weakly. When
    connections come one after another (no other TLS connection alive holds
    them), every STARTTLS built some of them again, C3 resolution order
    included. Call right after C{transport.startTLS} (or L{txsmtpsrv._tlslayer.start_tls},
    which declares C{ISSLTransport} on the transport in the same way); a cheap
    dictionary check after the first time per pair of classes.
    """
    wrapper = getattr(transport, "protocol", None)
    key = (type(transport), type(wrapper))
    if key in _DECLARATIONS or len(_DECLARATIONS) >= _MAX_DECLARATIONS:
        return
    declarations: list[object] = [Provides(type(transport), ISSLTransport)]
    if wrapper is not None:
        declarations += [Provides(type(wrapper), interface) for interface in providedBy(transport)]
    _DECLARATIONS[key] = tuple(declarations)


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
