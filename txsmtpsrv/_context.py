# -*- test-case-name: tests.test_server -*-
"""
What a connection needs from the server that built it, as one small value.

The server (L{_server.SMTPServer}) imports the connection
(L{_protocol.SMTPServerProtocol}) to build it; the connection never imports
the server: it gets a L{ServerContext}. So the two modules form no import
cycle and the connection reaches into nothing private of the server.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, List

__all__ = ["ServerContext"]


class ServerContext:
    """
    Shared by every connection of one server.

    @ivar options: the server's L{ServerOptions}.
    @ivar hooks: the resolved hooks (a method or C{None} per hook name).
    @ivar hook_names: the names of the hooks the user defined.
    @ivar observers: event name -> observer callbacks.
    @ivar reply_cache: fixed replies, encoded once per server.
    @ivar reactor: the C{IReactorTime} for timers.
    @ivar resolver: returns the C{IResolver} for reverse lookups, or C{None}
        (asked each time: the server's C{resolver} attribute may be replaced).
    @ivar tls: returns the server's TLS context holder (loading it may raise).
    @ivar notify: calls the observers of an event, logging their failures.
    @ivar connected: counts a connection in (for C{max_clients} and shutdown).
    @ivar disconnected: counts it out.
    @ivar guard: the per-address limit tables (L{_guard.Guard}) its connections share.
    @ivar deadlines: the connections' timers (L{_deadlines.Deadlines}): one reactor call for them all.
    """

    __slots__ = ("options", "hooks", "hook_names", "observers", "reply_cache", "reactor", "resolver", "tls",
                 "notify", "connected", "disconnected", "guard", "deadlines")

    def __init__(self, options: Any, hooks: Any, observers: Dict[str, List[Callable[..., Any]]],
                 reply_cache: Dict[Any, bytes], reactor: Any, resolver: Callable[[], Any], tls: Callable[[], Any],
                 notify: Callable[..., None], connected: Callable[[Any], None],
                 disconnected: Callable[[Any], None], guard: Any = None, deadlines: Any = None) -> None:
        self.options = options
        self.hooks = hooks
        self.hook_names: FrozenSet[str] = frozenset(
            name for name in ("on_connect", "on_helo", "on_secure", "on_auth", "on_mail_from", "on_rcpt_to",
                              "on_data", "on_close") if getattr(hooks, name, None) is not None)
        self.observers = observers
        self.reply_cache = reply_cache
        self.reactor = reactor
        self.resolver = resolver
        self.tls = tls
        self.notify = notify
        self.connected = connected
        self.disconnected = disconnected
        if guard is None:
            from ._guard import Guard
            guard = Guard(options)
        self.guard = guard
        self.deadlines = deadlines
