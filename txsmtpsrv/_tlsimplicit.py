# -*- test-case-name: tests.test_tlsimplicit -*-
"""
Implicit TLS (C{smtps:}, port 465) on our own TLS layer (L{txsmtpsrv._tlslayer}).

Twisted's C{wrapServerTLS} puts a C{TLSMemoryBIOProtocol} (and its costs:
C{bench/README.md}, "a lean STARTTLS layer of our own") under every
connection of the endpoint. L{wrap_server_tls} does the same job with the
lean layer where a connection is plain TCP: its factory hands the endpoint a
small L{_Start} protocol per connection, which, once the connection is made,
starts our layer on the TCP transport (as STARTTLS does after its 220) and
then connects the server's protocol to the transport, now TLS (the
transport provides C{ISSLTransport}: the protocol sees implicit TLS as on
Twisted's layer, its greeting waits for the handshake).

Which connections: only a C{tcp.Server} that L{txsmtpsrv._tlslayer.eligible}
accepts, from endpoints that give them (C{tcp:}, C{tcp6:}, C{adopted:});
any other endpoint (the PROXY wrapper: C{smtps:smtpproxy:...}, C{unix:},
one of the user's) gets Twisted's C{wrapServerTLS} unchanged, and a
connection the lean layer does not take (C{_tlslayer.ENABLED = False}, a
reactor whose TCP transports are another class) gets Twisted's
C{TLSMemoryBIOProtocol} from the same L{_Start}, made the transport's
protocol as Twisted's own C{startTLS} makes it.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.endpoints import (AdoptedStreamServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint,
                                        wrapServerTLS)
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from . import _tlslayer
from ._logging import log_prefix
from ._sendnow import eligible as direct_socket

__all__ = ["ImplicitTLSEndpoint", "ImplicitTLSFactory", "wrap_server_tls"]

#: Endpoints whose connections are C{tcp.Server}s (on Twisted's POSIX reactors).
_TCP_ENDPOINTS = (TCP4ServerEndpoint, TCP6ServerEndpoint, AdoptedStreamServerEndpoint)


def wrap_server_tls(creator: Any, endpoint: IStreamServerEndpoint) -> IStreamServerEndpoint:
    """
    C{endpoint} with implicit TLS from C{creator} (an
    C{IOpenSSLServerConnectionCreator}, e.g. L{txsmtpsrv._tls.TLSContextHolder}):
    on our layer for plain TCP endpoints, else Twisted's C{wrapServerTLS}.
    """
    if isinstance(endpoint, _TCP_ENDPOINTS):
        return ImplicitTLSEndpoint(creator, endpoint)
    return wrapServerTLS(creator, endpoint)


@implementer(IStreamServerEndpoint)
class ImplicitTLSEndpoint:
    """A server endpoint whose connections start TLS at once (L{ImplicitTLSFactory})."""

    def __init__(self, creator: Any, endpoint: IStreamServerEndpoint) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def listen(self, protocolFactory: IProtocolFactory) -> Any:
        return self._endpoint.listen(ImplicitTLSFactory(self._creator, protocolFactory))


@implementer(IProtocolFactory, ILoggingContext)
class ImplicitTLSFactory:
    """Wraps the server's factory: each connection's protocol is made TLS before it is connected."""

    def __init__(self, creator: Any, wrapped: IProtocolFactory) -> None:
        self.creator = creator
        self.wrapped = wrapped
        self._twisted: Optional[TLSMemoryBIOFactory] = None  # for connections our layer does not take

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = self.wrapped.logPrefix() if ILoggingContext.providedBy(self.wrapped) else type(self.wrapped).__name__
        return f"{prefix} (TLS)"

    def buildProtocol(self, addr: Any) -> Any:  # a _Start, or None
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None  # refused (the server's limits): the port closes the connection
        return _Start(self, protocol)

    def twisted_layer(self, protocol: Any) -> Any:
        """Twisted's C{TLSMemoryBIOProtocol} around C{protocol}, as C{wrapServerTLS} would make it."""
        if self._twisted is None:
            self._twisted = TLSMemoryBIOFactory(self.creator, False, self.wrapped)
        return self._twisted.protocol(self._twisted, protocol)


@implementer(ILoggingContext)
class _Start:
    """
    The endpoint's protocol for one connection until it is made: then TLS
    starts on the transport and the server's protocol takes its place.
    """

    __slots__ = ("_factory", "_protocol")

    def __init__(self, factory: ImplicitTLSFactory, protocol: Any) -> None:
        self._factory = factory
        self._protocol = protocol

    def logPrefix(self) -> str:
        """The transport names its log context after this (once): the server protocol's."""
        return log_prefix(self._protocol)

    def makeConnection(self, transport: Any) -> None:
        factory, protocol = self._factory, self._protocol
        self._protocol = None
        if _tlslayer.ENABLED and _tlslayer.eligible(transport, factory.creator):
            _tlslayer.start_tls(transport, factory.creator, protocol, direct_socket(transport))
            protocol.makeConnection(transport)
            return
        tls = factory.twisted_layer(protocol)
        transport.protocol = tls  # as Twisted's startTLS makes it
        tls.makeConnection(transport)  # (the server's protocol gathers its tiny records: _tlsgather)

    # Never called: the transport's protocol is the TLS layer once the connection is made.
    def dataReceived(self, data: bytes) -> None:  # pragma: no cover
        raise RuntimeError("implicit TLS: data before the connection was made")

    def connectionLost(self, reason: Any) -> None:  # pragma: no cover
        pass
