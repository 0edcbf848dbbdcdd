# -*- test-case-name: tests.test_proxy_wrapper,tests.test_proxy_endpoint -*-
"""
PROXY protocol (v1 and v2) in front of any stream server, SMTP included.

A load balancer such as HAProxy connects to us on behalf of a client and
prepends a small header naming the client's real address.  Twisted ships a
wrapper for this (C{twisted.protocols.haproxy}), but it connects the wrapped
protocol before the header has arrived, so a server-speaks-first protocol
greets, and reads C{getPeer()}, too early; it also trusts any peer, has no
header timeout, rejects C{PROXY UNKNOWN} and drops the v2 TLVs.  This module
is our own implementation:

  - L{ProxyHeaderParser} (in L{txsmtpsrv._proxyheader}, re-exported here): a
    sans-IO parser for both versions that accepts its input split at any
    byte, caps the header size and raises L{ProxyHeaderError} for anything
    malformed.
  - L{ProxyInfo}: the parsed header (frozen), plus the real socket peer.
  - L{ProxyWrappingFactory} / L{ProxyProtocolWrapper}: a Twisted wrapper that
    lets only trusted peers (CIDR list) speak PROXY, buffers until the whole
    header is in (with a timeout), and only I{then} builds and connects the
    wrapped protocol, passing it the proxied address.
  - L{proxyEndpoint}: wraps any C{IStreamServerEndpoint}, like Twisted's
    function of the same name.
  - L{ProxyEndpointParser}: the C{smtpproxy:} endpoint-string prefix.

What the wrapped protocol sees on C{self.transport}:

  - C{getPeer()} / C{getHost()}: the client and the address it connected to,
    as C{IPv4Address}/C{IPv6Address} (C{UNIXAddress} for AF_UNIX); for
    C{PROXY UNKNOWN}, v2 C{LOCAL} and v2 C{UNSPEC}, the real socket addresses.
  - C{proxy_info}: the L{ProxyInfo}, or C{None} when the connection came
    from an untrusted peer that was let through without a header
    (C{allow_untrusted=True}).  Read it with
    C{getattr(self.transport, "proxy_info", None)}: that also works on plain
    transports and through further wrappers (e.g. implicit TLS inside).
  - STARTTLS: C{self.transport.startTLS(ctx)} works through the wrapper;
    afterwards C{ISSLTransport.providedBy(self.transport)} is true (as on a
    plain TCP transport) and, if the wrapped protocol provides
    C{IHandshakeListener}, its C{handshakeCompleted()} is called once the
    handshake is done.  C{self.transport.getHandle()} and
    C{getPeerCertificate()} reach the TLS connection as usual.

Implicit TLS (port 465) behind a proxy: the header travels in clear before
the TLS handshake, so TLS must sit I{inside} the PROXY wrapper:
C{wrapServerTLS(options, proxyEndpoint(TCP4ServerEndpoint(...)))}.

Endpoint string syntax (see L{ProxyEndpointParser})::

    smtpproxy:[trusted=CIDR,CIDR...:][timeout=SECONDS:][untrusted=reject|pass:]
              [maxHeaderSize=BYTES:]<any server endpoint description>

e.g. C{smtpproxy:trusted=10.0.0.0/8,fd00\\:\\:/8:timeout=5:tcp:2525:interface=0.0.0.0}.
Colons inside IPv6 networks must be escaped with a backslash (Twisted's
endpoint grammar splits on every unescaped colon).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import replace
from typing import Any, Iterable, Sequence, Union, cast

from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
    ITLSTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from ._halfclose import ForwardsHalfClose
from ._ipaddr import canonical_ip, parse_networks
from ._logging import log_prefix
# The header's names stay importable from here (re-exported).
from ._proxyheader import (  # noqa: F401
    DEFAULT_MAX_HEADER_SIZE,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_UNIQUE_ID,
    PP2_TYPE_SSL,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_TYPE_NETNS,
    PP2_CLIENT_SSL,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    ProxyHeaderError,
    ProxyHeaderParser,
    ProxyInfo,
    ProxySSLInfo,
    crc32c,
    parse_proxy_header,
)

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_TRUSTED",
    "ProxyEndpointParser",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyInfo",
    "ProxyProtocolWrapper",
    "ProxyServerEndpoint",
    "ProxySSLInfo",
    "ProxyWrappingFactory",
    "parse_proxy_header",
    "proxyEndpoint",
]

#: Networks allowed to send a PROXY header unless told otherwise.
DEFAULT_TRUSTED: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

# ---------------------------------------------------------------------------
# Twisted wrapper

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _to_address(family: str, host: str, port: int | None) -> IAddress:
    if family == "INET":
        return IPv4Address("TCP", host, port or 0)
    if family == "INET6":
        return IPv6Address("TCP", host, port or 0)
    return UNIXAddress(host.encode("utf-8", "surrogateescape"))


def _peer_ip(addr: IAddress) -> tuple[str | None, int | None]:
    host = getattr(addr, "host", None)
    if isinstance(addr, (IPv4Address, IPv6Address)) and isinstance(host, str):
        try:
            return canonical_ip(host), addr.port
        except ValueError:
            return host, addr.port
    if isinstance(addr, UNIXAddress):
        name = addr.name
        if isinstance(name, bytes):
            return name.decode("utf-8", "surrogateescape"), None
        return name, None
    return None, None


_AWAITING, _CONNECTED, _CLOSED = "awaiting-header", "connected", "closed"


@implementer(IHandshakeListener)
class ProxyProtocolWrapper(ForwardsHalfClose, ProtocolWrapper):
    """
    Transport-side half of the PROXY support: reads the header, then becomes
    a transparent wrapper whose C{getPeer()}/C{getHost()} report the proxied
    addresses.  See the module docstring for what the wrapped protocol sees.

    The wrapped protocol is built (C{wrappedFactory.buildProtocol(addr)} with
    the I{proxied} client address) only once the header is complete, so
    per-client limits in C{buildProtocol} apply to the real client; returning
    C{None} from it closes the connection.
    """

    log = Logger()
    factory: ProxyWrappingFactory
    proxy_info: ProxyInfo | None = None
    # None until the header is in, unlike ProtocolWrapper's.
    wrappedProtocol: IProtocol | None  # type: ignore[assignment]

    def __init__(self, factory: ProxyWrappingFactory, wrappedProtocol: IProtocol | None = None) -> None:
        # wrappedProtocol stays None until the header is in (see class docstring).
        ProtocolWrapper.__init__(self, factory, wrappedProtocol)  # type: ignore[arg-type]
        self.proxy_info = None
        self._state = _AWAITING
        self._parser = ProxyHeaderParser(factory.max_header_size)
        self._timer: IDelayedCall | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None

    def logPrefix(self) -> str:
        """Name the wrapped protocol once there is one."""
        if self.wrappedProtocol is None:
            return f"{self.factory.logPrefix()} (PROXY)"
        prefix: str = ProtocolWrapper.logPrefix(self)
        return prefix

    def _real(self) -> ITransport:
        """The real transport (set by L{makeConnection}, before any use)."""
        assert self.transport is not None
        return self.transport

    # -- connection setup -------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """Adopt the transport's interfaces and register, but don't connect the wrapped protocol yet."""
        directlyProvides(self, providedBy(transport))
        self.factory.registerProtocol(self)
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        """Decide by the real peer whether to expect a header, pass through, or close."""
        peer = self._real().getPeer()
        host, port = _peer_ip(peer)
        if self.factory.is_trusted(peer):
            if self.factory.timeout:
                self._timer = self.factory.clock.callLater(self.factory.timeout, self._timedOut)
            return
        if self.factory.allow_untrusted:
            self.log.debug(
                "PROXY: untrusted peer {peer}:{port} passed through without a header",
                peer=host,
                port=port,
            )
            self._connectWrapped(b"")
            return
        self.log.warn(
            "PROXY: connection from untrusted peer {peer}:{port} closed",
            peer=host,
            port=port,
            proxy_error="untrusted",
        )
        self._close()

    def _timedOut(self) -> None:
        self._timer = None
        if self._state is not _AWAITING:
            return
        host, port = _peer_ip(self._real().getPeer())
        self.log.warn(
            "PROXY: no complete header from {peer}:{port} within {timeout}s; closing",
            peer=host,
            port=port,
            timeout=self.factory.timeout,
            proxy_error="timeout",
        )
        self._close()

    def _close(self) -> None:
        self._state = _CLOSED
        self._cancelTimer()
        self._real().loseConnection()

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _headerReceived(self, info: ProxyInfo, rest: bytes) -> None:
        self._cancelTimer()
        real_host, real_port = _peer_ip(self._real().getPeer())
        info = replace(info, proxy_address=real_host, proxy_port=real_port)
        self.proxy_info = info
        if info.source_address is not None:
            self._peer = _to_address(info.family, info.source_address, info.source_port)
        if info.dest_address is not None:
            self._host = _to_address(info.family, info.dest_address, info.dest_port)
        if info.source_address is None:  # LOCAL (health check) or UNSPEC: no client to name
            self.log.debug("PROXY v{version} {command} from {proxy}", version=info.version,
                           command=info.command, proxy=real_host)
        else:
            self.log.debug(
                "PROXY v{version} {command} from {proxy}: client {client}:{client_port}",
                version=info.version,
                command=info.command,
                proxy=real_host,
                client=info.source_address,
                client_port=info.source_port,
            )
        self._connectWrapped(rest)

    def _connectWrapped(self, rest: bytes) -> None:
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._close()
            return
        self.wrappedProtocol = protocol
        self._state = _CONNECTED
        protocol.makeConnection(self)
        if rest and self._state is _CONNECTED and not self._closing():
            protocol.dataReceived(rest)

    def _closing(self) -> bool:
        return bool(self.disconnecting or getattr(self.transport, "disconnecting", False))

    # -- IProtocol --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Feed the header parser until it completes, then relay."""
        if self._state is _CONNECTED:
            assert self.wrappedProtocol is not None
            self.wrappedProtocol.dataReceived(data)
            return
        if self._state is _CLOSED:
            return
        try:
            result = self._parser.feed(data)
        except ProxyHeaderError as e:
            host, port = _peer_ip(self._real().getPeer())
            self.log.warn(
                "PROXY: invalid header from {peer}:{port}: {reason}; closing",
                peer=host,
                port=port,
                reason=str(e),
                proxy_error="malformed",
            )
            self._close()
            return
        if result is not None:
            self._headerReceived(*result)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Tell the wrapped protocol, if it was ever connected."""
        self._cancelTimer()
        self.factory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        connected = self._state is _CONNECTED
        self._state = _CLOSED
        if connected and protocol is not None:
            protocol.connectionLost(reason)

    # -- IHandshakeListener -----------------------------------------------

    def handshakeCompleted(self) -> None:
        """Forward the TLS handshake notification (lost through Twisted's own wrapper)."""
        protocol = self.wrappedProtocol
        if protocol is not None and IHandshakeListener.providedBy(protocol):
            protocol.handshakeCompleted()

    # -- transport --------------------------------------------------------

    def getPeer(self) -> IAddress:
        """The proxied client address, or the real peer when the header gave none."""
        if self._peer is not None:
            return self._peer
        return self._real().getPeer()

    def getHost(self) -> IAddress:
        """The address the client connected to on the proxy, or our real one."""
        if self._host is not None:
            return self._host
        return self._real().getHost()

    def startTLS(self, contextFactory: Any, *args: Any, **kwargs: Any) -> None:
        """Start TLS on the real transport and advertise C{ISSLTransport}, like C{tcp.Server} does."""
        cast(ITLSTransport, self._real()).startTLS(contextFactory, *args, **kwargs)
        alsoProvides(self, ISSLTransport)


class ProxyWrappingFactory(WrappingFactory[ProxyProtocolWrapper]):
    """
    Wraps a server factory so that its connections must start with a PROXY
    header from a trusted peer.

    @param wrappedFactory: the real server factory.
    @param trusted: networks (strings like C{"10.0.0.0/8"}, a comma-separated
        string, or C{ipaddress} network objects) whose connections carry a
        header; host bits set (C{"10.0.0.1/8"}) are a C{ValueError}.  Peers on a UNIX socket are always trusted (the socket's file
        permissions decide who may connect).
    @param timeout: seconds to wait for the complete header; 0/None disables.
    @param reactor: supplies C{callLater} (an C{IReactorTime}, e.g. a Clock).
    @param allow_untrusted: let untrusted peers through I{without} a header
        (then C{proxy_info} is C{None}) instead of closing their connections.
    @param max_header_size: cap on a v2 header (v1 is always <= 107 bytes).
    """

    protocol = ProxyProtocolWrapper

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        trusted: Iterable[str | Network] | str = DEFAULT_TRUSTED,
        timeout: float | None = 10.0,
        reactor: IReactorTime | None = None,
        allow_untrusted: bool = False,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.clock: IReactorTime = reactor
        self.trusted = parse_networks(trusted)  # one parser for every network list: host bits are an error
        if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a finite number of seconds >= 0")
        self.timeout = timeout
        self.allow_untrusted = allow_untrusted
        if max_header_size < 16:
            raise ValueError("max_header_size must be at least 16")
        self.max_header_size = max_header_size

    def registerProtocol(self, p: ProxyProtocolWrapper) -> None:
        """Track C{p} (as C{WrappingFactory} does; typed here)."""
        super().registerProtocol(p)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def unregisterProtocol(self, p: ProxyProtocolWrapper) -> None:
        """Forget C{p} (as C{WrappingFactory} does; typed here)."""
        super().unregisterProtocol(p)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def logPrefix(self) -> str:
        """Mark the wrapped factory's prefix as PROXY-wrapped."""
        return f"{log_prefix(self.wrappedFactory)} (PROXY)"

    def buildProtocol(self, addr: IAddress | None) -> ProxyProtocolWrapper:
        """Build only the wrapper; the wrapped protocol comes after the header."""
        return self.protocol(self, None)

    def is_trusted(self, addr: IAddress) -> bool:
        """Whether the real peer C{addr} may send a PROXY header."""
        if isinstance(addr, UNIXAddress):
            return True
        if not isinstance(addr, (IPv4Address, IPv6Address)):
            return False
        try:
            ip = ipaddress.ip_address(addr.host.split("%", 1)[0])
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.trusted if c.version == net.version)


@implementer(IStreamServerEndpoint)
class ProxyServerEndpoint:
    """An C{IStreamServerEndpoint} whose connections go through L{ProxyWrappingFactory}."""

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        trusted: Iterable[str | Network] | str = DEFAULT_TRUSTED,
        timeout: float | None = 10.0,
        reactor: IReactorTime | None = None,
        allow_untrusted: bool = False,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        self.endpoint = endpoint
        # validate early, not at listen time
        self.trusted = parse_networks(trusted)  # one parser for every network list: host bits are an error
        if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a finite number of seconds >= 0")
        if max_header_size < 16:
            raise ValueError("max_header_size must be at least 16")
        self.timeout = timeout
        self.reactor = reactor
        self.allow_untrusted = allow_untrusted
        self.max_header_size = max_header_size

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint with the factory wrapped for PROXY."""
        return self.endpoint.listen(
            ProxyWrappingFactory(
                protocolFactory,
                trusted=self.trusted,
                timeout=self.timeout,
                reactor=self.reactor,
                allow_untrusted=self.allow_untrusted,
                max_header_size=self.max_header_size,
            )
        )


def proxyEndpoint(
    endpoint: IStreamServerEndpoint,
    trusted: Iterable[str | Network] | str = DEFAULT_TRUSTED,
    timeout: float | None = 10.0,
    reactor: IReactorTime | None = None,
    allow_untrusted: bool = False,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
) -> ProxyServerEndpoint:
    """
    Wrap C{endpoint} so its connections must begin with a PROXY v1/v2 header
    from a C{trusted} peer; see L{ProxyWrappingFactory} for the options.
    """
    return ProxyServerEndpoint(
        endpoint,
        trusted=trusted,
        timeout=timeout,
        reactor=reactor,
        allow_untrusted=allow_untrusted,
        max_header_size=max_header_size,
    )


# ---------------------------------------------------------------------------
# endpoint string plugin


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _unparse(args: Sequence[object], kwargs: dict[str, object]) -> str:
    parts = [_quote(str(a)) for a in args]
    parts += [f"{_quote(str(k))}={_quote(str(v))}" for k, v in kwargs.items()]
    return ":".join(parts)


_TRUE = {"1", "yes", "true", "on", "pass", "allow"}
_FALSE = {"0", "no", "false", "off", "reject", "close"}


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ProxyEndpointParser:
    """
    The C{smtpproxy:} server endpoint string prefix.

    Syntax: C{smtpproxy:} followed by any other server endpoint description,
    with these extra keyword options (taken out before the rest is handed to
    C{serverFromString}; inner endpoints can therefore not use these names):

      - C{trusted=NET,NET...}: comma-separated networks or addresses allowed
        to send a header (default C{127.0.0.1/32,::1/128}); a network with
        host bits set (C{10.0.0.1/8}) is an error.  Escape the
        colons of IPv6 networks: C{trusted=10.0.0.0/8,fd00\\:\\:/8}.
      - C{timeout=SECONDS}: header timeout (default 10; 0 disables).
      - C{untrusted=reject|pass}: close connections from other peers
        (default) or let them through without a header.
      - C{maxHeaderSize=BYTES}: cap on a v2 header (default 4096).

    Example: C{smtpproxy:trusted=127.0.0.0/8,\\:\\:1:timeout=5:tcp:2525:interface=127.0.0.1}.
    """

    prefix = "smtpproxy"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> ProxyServerEndpoint:
        """Split off our options and build the inner endpoint from the rest."""
        options = dict(kwargs)
        trusted = str(options.pop("trusted", ",".join(DEFAULT_TRUSTED)))
        timeout_text = str(options.pop("timeout", "10"))
        untrusted = str(options.pop("untrusted", "reject")).lower()
        max_text = str(options.pop("maxHeaderSize", str(DEFAULT_MAX_HEADER_SIZE)))
        if not args:
            raise ValueError("smtpproxy: needs an inner endpoint, e.g. smtpproxy:tcp:2525")
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise ValueError(f"smtpproxy: timeout must be a number of seconds, not {timeout_text!r}") from None
        if untrusted in _TRUE:
            allow = True
        elif untrusted in _FALSE:
            allow = False
        else:
            raise ValueError(f"smtpproxy: untrusted must be 'reject' or 'pass', not {untrusted!r}")
        try:
            max_size = int(max_text)
        except ValueError:
            raise ValueError(f"smtpproxy: maxHeaderSize must be an integer, not {max_text!r}") from None
        inner = serverFromString(reactor, _unparse(args, options))
        return proxyEndpoint(
            inner,
            trusted=trusted,
            timeout=timeout or None,
            reactor=reactor,
            allow_untrusted=allow,
            max_header_size=max_size,
        )
