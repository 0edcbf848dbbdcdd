# -*- test-case-name: tests.test_server -*-
"""
L{SMTPServer}: the factory users create, listen with and close.

It holds what all connections share (options, hooks, observers, the clock,
the reply cache), enforces C{max_clients}, and runs the graceful shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Union

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IListeningPort, ISSLTransport, IStreamServerEndpoint
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._context import ServerContext
from ._core import REFUSAL_REPLY
from ._deadlines import Deadlines
from ._errors import format_reply
from ._hooks import ResolvedHooks
from ._options import ServerOptions, ServerOptionsArgs
from ._protocol import SMTPServerProtocol

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SMTPServer", "OBSERVER_EVENTS"]

#: Events that L{SMTPServer.observe} accepts, with their callback arguments.
OBSERVER_EVENTS = {
    "connect": "(session)",
    "disconnect": "(session)",
    "command": "(session, verb, argument)",
    "helo": "(session, hostname)",
    "mail": "(session, address)",
    "rcpt": "(session, address)",
    "message": "(session, envelope, size)",
    # For operators' logs and metrics (see txsmtpsrv._oplog, txsmtpsrv._metrics):
    "reply": "(session, verb, code, enhanced, text)",
    "auth": "(session, mechanism, username, code)",
    "tls": "(session, error)",
    "hook": "(session, name, seconds)",
    "refused": "(reason, remote_address, session)",
}


class _TooBusy(Protocol):
    """
    Answers the client over C{max_clients} with 421 and hangs up.

    Under implicit TLS the 421 waits for the handshake (and Twisted's layer
    then waits for the client's close_notify): a client that never finishes
    either would keep its socket for as long as it likes, uncounted, where
    a client within the limit is dropped by its timers. It gets as long as
    a handshake may take (C{handshake_timeout}, at most C{socket_timeout}).
    """

    def __init__(self, reply: bytes) -> None:
        self._reply = reply
        self._timer: Any = None

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if ISSLTransport.providedBy(transport):  # (set first: the close may be reported at once)
            self._timer = self.factory.reactor.callLater(self._time_allowed(), transport.abortConnection)
        transport.write(self._reply)
        transport.loseConnection()

    def _time_allowed(self) -> float:
        server = self.factory
        limit: float = server.options.socket_timeout
        try:
            handshake = server.tls.handshake_timeout
        except Exception:  # (TLS settings of the user's own endpoint, not ours: theirs may not load)
            handshake = None
        return limit if handshake is None else min(limit, handshake)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class SMTPServer(ServerFactory):
    """
    An SMTP server: options plus hooks, listening on any Twisted endpoint::

        server = SMTPServer(MyHooks(), name="mx.example.com", size=10_000_000)
        await server.listen("tcp:2525:interface=127.0.0.1")
        ...
        await server.close()

    Keyword arguments are L{ServerOptions} fields (typed by
    L{ServerOptionsArgs}, so a misspelt option is a type error); C{options} may give a
    whole L{ServerOptions} instead (keywords then override it). C{reactor}
    and C{resolver} (an C{IResolver} for reverse DNS) are injectable.
    """

    log = Logger()
    #: Twisted's "Starting factory <SMTPServer object at 0x...>" says nothing useful.
    noisy = False

    def __init__(self, hooks: Optional[object] = None, options: Optional[ServerOptions] = None, *,
                 reactor: Any = None, resolver: Any = None, **kwargs: Unpack[ServerOptionsArgs]) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        #: The C{IResolver} for reverse lookups (None: C{twisted.names}' default).
        self.resolver = resolver
        self.options = ServerOptions.build(options, **kwargs) if kwargs or options is None else options
        self.hooks = hooks
        self._hooks = ResolvedHooks(hooks)
        self._observers: Dict[str, List[Callable[..., Any]]] = {e: [] for e in OBSERVER_EVENTS}
        self._observers[REFUSAL_REPLY] = []  # ours: see _observe
        self._reply_cache: Dict[Any, bytes] = {}
        self._connections: Set[SMTPServerProtocol] = set()
        self._ports: List[IListeningPort] = []
        self._closing = False
        self._close_waiters: Optional[List[Deferred[None]]] = None
        self._drained: List[Deferred[None]] = []
        self._tls_holder: Any = None
        o = self.options
        esc = o.lmtp or not o.hide_enhancedstatuscodes
        # Replies for clients refused before a protocol exists (RFC 5321 3.1: 421).
        self._busy_reply = format_reply(421, [f"{o.name} Too many connected clients, try again in a moment"],
                                        "4.7.0" if esc else None)
        self._closing_reply = format_reply(421, [f"{o.name} Service shutting down"], "4.3.2" if esc else None)
        self._context = ServerContext(o, self._hooks, self._observers, self._reply_cache, reactor,
                                      lambda: self.resolver,
                                      self.load_tls, self._notify, self._connected, self._disconnected,
                                      deadlines=Deadlines(reactor))
        if (o.use_xclient or o.use_xforward) and not o.xclient_trusted:
            self.log.warn("XCLIENT/XFORWARD are on but xclient_trusted names no network: "
                          "every peer is refused (550 5.7.0); name the proxies' networks to trust them")
        from ._oplog import SessionLog
        #: The operator's log lines (session summaries, refusals); see L{SessionLog}.
        self.session_log = SessionLog(self)

    # -- factory ---------------------------------------------------------------

    def buildProtocol(self, addr: Any) -> Any:  # a Protocol or an SMTPServerProtocol (an IProtocol of slots)
        limit = self.options.max_clients
        if self._closing or (limit is not None and len(self._connections) >= limit):
            self._notify("refused", "shutting_down" if self._closing else "max_clients",
                         str(getattr(addr, "host", "") or ""), None)
            p: Protocol = _TooBusy(self._closing_reply if self._closing else self._busy_reply)
            p.factory = self
            return p
        proto = SMTPServerProtocol(self._context)
        proto.factory = self
        return proto

    @property
    def connections(self) -> int:
        """How many clients are connected now."""
        return len(self._connections)

    def _connected(self, proto: SMTPServerProtocol) -> None:
        self._connections.add(proto)

    def _disconnected(self, proto: SMTPServerProtocol) -> None:
        self._connections.discard(proto)
        if not self._connections and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    # -- observers ---------------------------------------------------------------

    def observe(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        """
        Call C{callback} on C{event} (see L{OBSERVER_EVENTS}) for logging or
        metrics. Observers cannot delay or change the dialogue: their return
        value is ignored and their exceptions are logged. An observer added
        while an event is being delivered hears the next one; one removed is
        never called again once its remover has returned, not even for the
        event being delivered (an observer may stop another and release what
        that one uses).

        @return: a function that removes the observer.
        """
        if event not in OBSERVER_EVENTS:
            raise ValueError(f"unknown event {event!r}; choose from {', '.join(OBSERVER_EVENTS)}")
        return self._observe(event, callback)

    def _observe(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        """L{observe}, also for our own events (C{REFUSAL_REPLY}: "reply" for codes of 400 and more)."""
        # Copy on write: _notify iterates the list it found, a snapshot, so an observer
        # added during an event hears the next one (no copy per event on the hot path);
        # _notify sees the list replaced and skips the observers removed meanwhile.
        self._observers[event] = [*self._observers[event], callback]

        def remove() -> None:
            current = list(self._observers[event])
            current.remove(callback)
            self._observers[event] = current
        return remove

    def _notify(self, event: str, *args: Any) -> None:
        observers = self._observers
        found = observers[event]
        for callback in found:
            if observers[event] is not found and callback not in observers[event]:
                continue  # removed by an observer of this event: removal is at once (see observe)
            try:
                result = callback(*args)
                # (None first: isinstance(None, Deferred) runs ABCMeta's __instancecheck__.)
                if result is not None and isinstance(result, Deferred):
                    result.addErrback(self._observer_failed, event)
            except Exception:
                self._observer_failed(Failure(), event)

    def _observer_failed(self, failure: Failure, event: str) -> None:
        self.log.failure("observer of {event} failed", failure, event=event)

    # -- TLS ---------------------------------------------------------------------

    @property
    def tls(self) -> Any:
        """
        The server's L{TLSContextHolder}, built on first use; with no
        certificate configured it serves a development certificate.
        """
        return self.load_tls()

    def load_tls(self) -> Any:
        """
        Load the certificates now rather than at the first STARTTLS, so that
        a bad file (or the development-certificate warning) shows at start-up.

        @raise TLSConfigError: the configuration cannot be loaded.
        """
        if self._tls_holder is None:
            from ._tls import TLSConfig, TLSContextHolder
            self._tls_holder = TLSContextHolder(self.options.tls or TLSConfig(), hostname=self.options.name)
        return self._tls_holder

    def reload_tls(self, config: Any = None) -> None:
        """
        Use new certificates (a L{TLSConfig}; C{None} re-reads the files) for
        new connections; established ones keep theirs. Without a config, a
        server that has not loaded TLS (C{hide_starttls}, no implicit TLS)
        has nothing to re-read: it does not make a development certificate
        for a SIGHUP.
        """
        if config is None and self._tls_holder is None:
            return  # whatever first uses TLS reads the files then
        self.tls.reload(config)

    # -- listening and closing ---------------------------------------------------

    def listen(self, endpoint: Union[str, IStreamServerEndpoint]) -> "Deferred[IListeningPort]":
        """
        Listen on an endpoint object or an endpoint string such as
        C{"tcp:2525:interface=127.0.0.1"} or C{"unix:/run/lmtp.sock"}.
        With the C{secure} option the endpoint is wrapped in TLS (implicit
        TLS). The port is closed by L{close}.
        """
        if isinstance(endpoint, str):
            from twisted.internet.endpoints import serverFromString
            target: IStreamServerEndpoint = serverFromString(self.reactor, endpoint)
        else:
            target = endpoint
        if self.options.secure:
            from ._tlsimplicit import wrap_server_tls  # our TLS layer on plain TCP, else Twisted's
            target = wrap_server_tls(self.tls, target)
        elif not self.options.hide_starttls:
            self.load_tls()
        d = target.listen(self)

        def listening(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            return port

        return d.addCallback(listening)

    def close(self) -> "Deferred[None]":
        """
        Stop accepting, let transactions in progress finish for
        C{close_timeout} seconds, then answer 421 to the rest and drop them.

        @return: fires when every port is closed and every client is gone.
        """
        d: Deferred[None] = Deferred()
        if self._close_waiters is not None:
            self._close_waiters.append(d)
            return d
        self._closing = True
        self._close_waiters = [d]
        ports, self._ports = self._ports, []
        stopping = [p for p in (port.stopListening() for port in ports) if isinstance(p, Deferred)]
        for proto in list(self._connections):
            proto.shutdown()
        timers = [self.reactor.callLater(self.options.close_timeout, self._force_close)]
        # A client that does not read may hold loseConnection open: abort it.
        timers.append(self.reactor.callLater(self.options.close_timeout + 2.0, self._abort_all))

        def done(_: object) -> None:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            waiters, self._close_waiters = self._close_waiters or [], None
            for waiter in waiters:
                waiter.callback(None)

        DeferredList(stopping + [self._wait_drained()], consumeErrors=True).addCallback(done)
        return d

    def _wait_drained(self) -> "Deferred[None]":
        if not self._connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _force_close(self) -> None:
        if self._connections:
            self.log.info("close_timeout passed: dropping {n} connection(s)", n=len(self._connections))
        for proto in list(self._connections):
            proto.force_close()

    def _abort_all(self) -> None:
        for proto in list(self._connections):
            proto.abort()
