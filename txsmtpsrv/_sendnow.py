# -*- test-case-name: tests.test_sendnow -*-
"""
Send a reply at once when nothing is queued, instead of one reactor pass later.

C{transport.write} on a Twisted TCP transport only queues: it asks the
reactor to watch the socket for writability (one C{epoll_ctl}), the next
loop pass calls C{doWrite} (wrapped in C{log.callWithLogger}), which sends
and stops watching (a second C{epoll_ctl}). For an SMTP server that answers
every command with a short reply, that is a third of the reactor's work per
message (see C{bench/README.md}, "Issue 13 part 2: the reply write path").

L{ReplyWriter} sends with C{socket.send} on the socket that
C{ISystemHandle.getHandle()} returns, and hands whatever the kernel did not
take (a partial send, C{EAGAIN}, an error) to C{transport.write}, for good:
from then on every write goes through the transport, as before.

Why that keeps order without peeking into the transport: the writer is the
only thing that writes to this connection's transport (see L{eligible}), and
until its first fallback it has never given the transport a byte, so the
transport has nothing queued and a direct send cannot overtake anything.
After a fallback the transport may hold data, and the writer never sends
directly again (a connection whose socket buffer filled up once is a slow
reader; Twisted's buffering and producer pausing then apply as before).
Twisted's public API offers no cheap "is the buffer empty" (the buffer is
private; C{IReactorFDSet.getWriters()} is public but builds a list of every
waiting connection), so the writer does not ask.

On the daemon's reactor (L{txsmtpsrv._reactor.SMTPEPollReactor}), a client
on this host gets a L{HeldReplyWriter}: what it writes while the reactor
handles a pass of several events is sent once the pass's events are handled
(why: that module). The TLS layer's own writer sends at once: STARTTLS and
implicit TLS connections are not held.

The caller must L{stop<ReplyWriter.stop>} the writer before anything else writes to the
connection or changes what a byte on it means: before C{startTLS} (the
writer keeps the raw socket it was given, so a direct send would put
plaintext into the TLS stream), C{loseConnection} and C{abortConnection}
(whose queued data Twisted discards).

Only plain TCP and UNIX connections of Twisted's POSIX reactors (C{epoll},
C{poll}, C{select}, C{asyncio}: all use C{twisted.internet.tcp.Connection}),
directly or through our PROXY wrapper, qualify: a transport wrapper that
intercepts C{write} (C{policies.ThrottlingFactory}, a timeout wrapper,
TLS) must see every byte, and other reactors' sockets have their own rules.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper

from ._proxy import ProxyProtocolWrapper

__all__ = ["HeldReplyWriter", "ReplyWriter", "eligible", "no_delay", "reply_writer"]

_TCP, _NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY


def eligible(transport: Any) -> Optional[socket.socket]:
    """
    The socket replies may be sent on directly, or C{None} when this
    transport must see every write itself.

    @param transport: the protocol's transport, at C{connectionMade}.
    """
    real = transport
    if type(transport) is ProxyProtocolWrapper:
        real = transport.transport  # it forwards write() untouched
    if not isinstance(real, Connection) or ISSLTransport.providedBy(transport) or ISSLTransport.providedBy(real):
        return None
    try:
        sock = real.getHandle()
        if not isinstance(sock, socket.socket) or sock.gettimeout() != 0.0:
            return None  # not a socket, or a blocking one: never block the reactor
    except OSError:  # closed already
        return None
    return sock


def no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off on the connection's TCP socket, whatever
    wraps it (Twisted's TLS, our PROXY wrapper: C{ProtocolWrapper}s).

    Why: the replies of one read already leave in one write, so Nagle's
    coalescing gains nothing, and it stalls the replies a hook gives later.
    A reply sent while an earlier one is unacknowledged (the pipelined MAIL's
    250, then an asynchronous C{on_rcpt_to}'s)
    waits for the client's delayed ACK: 40 ms per group on Linux, measured.

    Set on the socket itself, quietly: Twisted's C{setTcpNoDelay} logs a
    failure as an error with a traceback, and macOS refuses the option
    (C{EINVAL}) on a socket the client has already reset, which a port
    scanner or a health check does on every connection. Nothing is lost
    then: there is no one left to answer. Other transports (not Twisted's
    TCP under any number of wrappers) are asked through C{setTcpNoDelay}
    where they have it. (No family check first: C{socket.family} costs more than
    the call; a UNIX socket's refusal is caught like any other.)
    """
    real = transport
    while isinstance(real, ProtocolWrapper):
        real = real.transport
    if isinstance(real, Connection):
        sock = getattr(real, "socket", None)  # not getHandle(): after STARTTLS that is the TLS connection
        if sock is not None:
            try:
                sock.setsockopt(_TCP, _NODELAY, 1)
            except OSError:  # refused (above), or a UNIX socket (EOPNOTSUPP): no TCP to tune
                pass
        return
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class ReplyWriter:
    """
    Writes a connection's replies: directly on the socket while nothing is
    queued in the transport, else (and for good) through C{transport.write}.

    @ivar direct: whether the next write may go to the socket directly (a
        test seam and a statistic; read-only).
    """

    __slots__ = ("_transport", "_sock")  # two slots: 48 bytes per connection, not 64

    def __init__(self, transport: Any, sock: Optional[socket.socket]) -> None:
        """
        @param transport: where bytes go once direct sending is over.
        @param sock: the socket from L{eligible}, or C{None} to always use
            the transport.
        """
        self._transport = transport
        self._sock = sock  # None once direct sending is over

    @property
    def direct(self) -> bool:
        """Whether the next write may go to the socket directly."""
        return self._sock is not None

    def write(self, data: bytes) -> None:
        """Send C{data} after everything written before, one way or the other."""
        sock = self._sock
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                # EAGAIN: the kernel's buffer is full; EPIPE, ECONNRESET, EBADF: the
                # transport meets the same error on its next send (or is closed) and
                # ends the connection the usual way.
                sent = 0
            if sent == len(data):
                return
            self._sock = None  # for good
            if sent:
                data = data[sent:]
        self._transport.write(data)

    def stop(self) -> bool:
        """
        From now on every write goes through the transport. Returns whether
        every byte so far went out directly (nothing is queued in the
        transport).
        """
        direct = self._sock is not None
        self._sock = None
        return direct


#: L{ReplyWriter.write} for L{HeldReplyWriter.write}, called as a function: super() would build
#: a super object for every reply. (A class put between the two would be skipped: mix
#: such a class in before L{HeldReplyWriter}, as the tests' spies do.)
_write = ReplyWriter.write


class HeldReplyWriter(ReplyWriter):
    """
    A L{ReplyWriter} for a client on this host (loopback, a UNIX socket) on
    the daemon's reactor: while the reactor handles a pass of several events
    (its C{held_replies} is a dict), a direct write is held, and the reactor
    sends it, one send per connection, once the pass's events are handled
    (why: L{txsmtpsrv._reactor}). L{stop<HeldReplyWriter.stop>} sends what is held first, so the
    bytes on the wire are the writes in their order either way.
    """

    __slots__ = ()

    def write(self, data: bytes) -> None:
        if self._sock is not None:
            held = self._transport.reactor.held_replies
            if held is not None:
                earlier = held.get(self)
                if earlier is None:
                    held[self] = data
                elif type(earlier) is list:  # (joined once, when sent: no copying per write)
                    earlier.append(data)
                else:
                    held[self] = [earlier, data]
                return
        _write(self, data)

    #: Send what L{write} held, joined (the reactor joins a pass's list, and L{stop}):
    #: L{ReplyWriter.write} itself, so a reply costs one call here, not two.
    send_held = ReplyWriter.write

    def stop(self) -> bool:
        """Send what is held now, then as L{ReplyWriter.stop} (a fallback while sending it counts)."""
        if self._sock is not None:
            held = self._transport.reactor.held_replies
            data = held.pop(self, None) if held else None
            if data is not None:
                self.send_held(data if type(data) is bytes else b"".join(data))
        return super().stop()


def reply_writer(transport: Any, peer: Any = None) -> ReplyWriter:
    """
    The writer for a new connection's replies: a L{HeldReplyWriter} for a
    client on this host on a reactor that holds replies, else a
    L{ReplyWriter}. Toward a client elsewhere a send wakes nobody here, so
    there is nothing to save, and its replies leave at once as before.

    @param peer: C{transport.getPeer()}, if the caller has it already.
    """
    sock = eligible(transport)
    if sock is not None and _holds(getattr(transport, "reactor", None)):
        # The socket's own peer: behind our PROXY wrapper getPeer() is the proxied client,
        # while the process a send wakes is the proxy's.
        if type(transport) is ProxyProtocolWrapper:
            real: Any = transport.transport
            peer = real.getPeer()
        elif peer is None:
            peer = transport.getPeer()
        if _local(peer):
            return HeldReplyWriter(transport, sock)
    return ReplyWriter(transport, sock)


def _holds(reactor: Any) -> bool:
    return hasattr(type(reactor), "held_replies")


def _local(peer: Any) -> bool:
    """Whether C{peer} (a transport's C{getPeer()}) is on this host: loopback, or a UNIX socket."""
    if isinstance(peer, UNIXAddress):
        return True
    host = getattr(peer, "host", "")
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")
