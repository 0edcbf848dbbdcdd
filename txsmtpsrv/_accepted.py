# -*- test-case-name: tests.test_accepted -*-
"""
What a new connection is called: its session id and its two addresses,
each without a system call where one can be shared (issue 13: a churn
connection is a few hundred microseconds, and each system call on this
path costs one or two of them).

  - The session id: 16 hex digits of C{os.urandom}, as before, but cut from a
    block fetched once per 256 connections rather than one C{getrandom} call
    each. A process forked after making sessions starts a block of its own,
    so it never repeats its parent's ids (C{--workers} processes are new
    interpreters: C{spawnProcess}).
  - The local address: for a TCP listener bound to one address, every
    connection it accepts has that address, so it is asked once per listening
    socket (C{Port.getHost()}) instead of per connection (C{getsockname} and
    an address object). A wildcard listener, a transparent one (C{IP_TRANSPARENT}:
    connections keep the address they were sent to), and anything but Twisted's
    own TCP server transport (TLS, our PROXY wrapper, UNIX, tests' fakes) ask
    the transport each time, as before.
  - Nagle's algorithm off (L{_sendnow.no_delay}, for why): Linux copies
    C{TCP_NODELAY} from a listening socket to the connections it accepts, so
    it is set once on the listening socket, and per connection only until a
    connection is seen to have it. Those the kernel queued before the listener
    had it lack it, so lacking it decides nothing until more have lacked it
    than the listener's queue holds: then the system does not copy it, and
    every connection gets it set, as before.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any, Dict, Optional, Tuple

from twisted.internet.tcp import Server

from ._sendnow import no_delay

__all__ = ["accepted", "address_parts", "session_id"]

_BLOCK = 4096  # hex digits of random per block: 256 ids
_ID = 16  # hex digits per id (8 random bytes)

_random = ""  # the current block, as hex
_used = _BLOCK


def session_id() -> str:
    """
    A new session id: 8 random bytes as 16 hex digits. Not only the
    reactor's thread asks (C{testing.TestClient} makes sessions in its
    caller's thread while a C{ThreadedServer}'s reactor thread makes its
    own): under the GIL no other thread runs between reading C{_used} and
    writing it (no call, no backward jump there), and a block fetched
    meanwhile replaces the old one whole. A free-threaded build needs a lock.
    """
    global _random, _used
    at = _used
    if at >= _BLOCK:
        _random = os.urandom(_BLOCK // 2).hex()
        at = 0
    _used = at + _ID
    return _random[at:at + _ID]


def _new_block_after_fork() -> None:
    global _used
    _used = _BLOCK  # the child's next id starts a block of its own


os.register_at_fork(after_in_child=_new_block_after_fork)


def address_parts(address: Any) -> Tuple[str, int]:
    """(host, port) of an C{IAddress}; C{("", 0)} for UNIX sockets and other hostless ones."""
    host = getattr(address, "host", None)
    if host is None:  # UNIX sockets and friends
        return "", 0
    return str(host), int(getattr(address, "port", 0) or 0)


class _Listener:
    """
    What every connection a listening socket accepts shares.

    @ivar local: their (address, port), or None where each must be asked.
    @ivar nodelay: whether they have C{TCP_NODELAY} from the listening
        socket: C{True}, C{False}, or C{None} until L{_check} knows.
    @ivar queued: how many more connections without it may be ones the
        kernel queued before the listening socket had it.
    """

    __slots__ = ("local", "nodelay", "queued")

    def __init__(self, local: Optional[Tuple[str, int]], nodelay: Optional[bool], queued: int) -> None:
        self.local = local
        self.nodelay = nodelay
        self.queued = queued


#: listening socket -> its L{_Listener}. Bounded: cleared when full.
_LISTENERS: Dict[Any, _Listener] = {}

_TRANSPARENT = ((socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19)),
                (socket.IPPROTO_IPV6, getattr(socket, "IPV6_TRANSPARENT", 75)))
_TCP, _NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY
#: A listening socket's queue where its backlog is unknown (adopted): Linux caps
#: listen()'s backlog at net.core.somaxconn (4096 by default), and holds one more.
_QUEUE = 4097


def accepted(transport: Any) -> Tuple[str, int]:
    """
    Turn Nagle's algorithm off on a new connection (L{no_delay}'s effect)
    and return the (address, port) the client connected to (what
    C{address_parts(transport.getHost())} gives), sharing what its listener
    shares.
    """
    listening = getattr(transport.server, "socket", None) if type(transport) is Server else None
    if listening is None:  # not Twisted's TCP server transport, or adopted by fromDescriptor (no server)
        no_delay(transport)
        return address_parts(transport.getHost())
    shared = _LISTENERS.get(listening)
    if shared is None:
        shared = _listener(transport.server, listening)
        no_delay(transport)  # accepted before the listening socket had it
    elif shared.nodelay is None:
        _check(shared, transport)
    elif not shared.nodelay:
        no_delay(transport)
    return shared.local if shared.local is not None else address_parts(transport.getHost())


def _listener(port: Any, listening: socket.socket) -> _Listener:
    """A listening socket's L{_Listener}, remembered; C{TCP_NODELAY} set on it."""
    try:
        listening.setsockopt(_TCP, _NODELAY, 1)
        nodelay: Optional[bool] = None
    except OSError:
        nodelay = False
    backlog = getattr(port, "backlog", None)
    queued = backlog + 1 if isinstance(backlog, int) and backlog > 0 else _QUEUE
    if len(_LISTENERS) >= 64:
        _LISTENERS.clear()
    shared = _LISTENERS[listening] = _Listener(_bound_to_one(port, listening), nodelay, queued)
    return shared


def _check(shared: _Listener, transport: Any) -> None:
    """
    Whether a connection got C{TCP_NODELAY} from its listening socket. One
    that did decides it for every later one: the kernel hands connections
    over in the order it queued them. One that did not may have been queued
    before the listening socket had it (a backlog at start): it gets it set,
    and the next is checked, until more lacked it than the queue holds.
    """
    try:
        inherited = transport.socket.getsockopt(_TCP, _NODELAY)
    except OSError:
        inherited = 0
    if inherited:
        shared.nodelay = True
        return
    no_delay(transport)
    shared.queued -= 1
    if shared.queued <= 0:
        shared.nodelay = False


def _bound_to_one(port: Any, listening: socket.socket) -> Optional[Tuple[str, int]]:
    """The listener's (address, port) if every connection it accepts has it, else None."""
    try:
        host = address_parts(port.getHost())
        if _any_address(host[0]):
            return None
        for level, option in _TRANSPARENT:
            try:
                if listening.getsockopt(level, option):
                    return None
            except OSError:  # not this family's option
                pass
    except Exception:  # whatever this listener is, each connection can still be asked
        return None
    return host


def _any_address(host: str) -> bool:
    """
    Whether a listener bound to C{host} takes connections to more than one
    address: C{0.0.0.0}, C{::} (IPv4 too, v4-mapped, on a dual-stack
    socket), and C{::ffff:0.0.0.0} (every IPv4 address, on an IPv6 socket).
    Anything unreadable counts as such: each connection is asked then.
    """
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_unspecified
    return ip.is_unspecified
