# -*- test-case-name: tests.test_halfclose -*-
"""
A client that half-closes: it sends its last commands, shuts down its
sending side (C{shutdown(SHUT_WR)}, a TCP FIN) and reads the replies.

Without C{IHalfCloseableProtocol}, Twisted treats the end of input as the
end of the connection: C{tcp.Connection.readConnectionLost} calls
C{connectionLost} at once, closing the socket and dropping whatever was
queued for it, and everything the connection would have said later (after
a hook that answers asynchronously, a data hook storing the message) has
nowhere to go. The client never learns whether its message was accepted.

A protocol providing it gets C{readConnectionLost()} instead and the
connection stays open for writing. L{HalfCloseable} then finishes the
dialogue's work and closes once it has nothing more to say: at once when
the dialogue is idle (replies written so far still go out:
C{loseConnection} sends what is queued first); after the pending hook
answered, its reply and those of the commands behind it written, when a
hook or the message's verdict is pending; at once, without a reply, in
the middle of a message (its end can never arrive: the message is
discarded as for a lost connection).

Under TLS on plain TCP (STARTTLS, implicit TLS) the FIN reaches our own TLS layer
(L{txsmtpsrv._tlslayer}), which passes it on once the handshake is done and
closes TCP right after its close_notify. Elsewhere (the PROXY wrapper,
C{_tlslayer.ENABLED = False}) it reaches Twisted's C{TLSMemoryBIOProtocol}, which does
not provide the interface: C{tcp.Connection} would end the connection at
once. Once the handshake is done, L{pass_half_close_through_tls} makes
that connection's TLS layer provide it and pass the end of input on (an
attribute on the instance, through public attributes only); and our close
then also closes TCP, since the TLS layer's own close would wait for the
client's close_notify, which can no longer come. A client's TLS 1.3
close_notify before its FIN is a half-close too on our layer, which tells
the protocol as for a FIN; on Twisted's layer it still loses the replies
written after it: on close_notify Twisted's TLS layer shuts the whole
connection down, in code with no public hook.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import alsoProvides, implementer

__all__ = ["HalfCloseable", "ForwardsHalfClose", "forward_half_close", "half_closeable", "pass_half_close_through_tls",
           "tls_layer"]


@implementer(IHalfCloseableProtocol)
class HalfCloseable:
    """
    Mixed into L{txsmtpsrv._protocol.SMTPServerProtocol}: what to do when the client's input
    ends before the connection does. The protocol calls
    L{_close_when_answered} after each round of its dialogue's actions
    while C{_input_ended} is set.
    """

    __slots__ = ("_input_ended",)

    if TYPE_CHECKING:  # what the protocol provides
        core: Any
        transport: Any
        _stream: Any
        _gone: bool
        _out: Any

        def _stop_timer(self, closing: bool = False) -> None: ...
        def _flush(self) -> None: ...

    def readConnectionLost(self) -> None:
        """The client shut down its sending side: answer what it sent, then close."""
        self._input_ended = True
        self._close_when_answered()

    def writeConnectionLost(self) -> None:
        """Our sending side was shut down: never asked for (we close both sides at once)."""

    def _close_when_answered(self) -> None:
        """Close if the dialogue has nothing more to say (or can never finish what it is doing)."""
        core = self.core
        if self._gone:
            return
        if core.finished:  # closing already (e.g. after QUIT)
            tls = tls_layer(self.transport) if core.tls_active else None  # (plain TCP: not even the look)
            if tls is not None:
                # Twisted's TLS sent its close_notify and waits for the client's,
                # which cannot come after a FIN: close TCP (after what it holds).
                tls.transport.loseConnection()
            return
        stream = self._stream
        mid_message = stream is not None and not stream.ended
        if core.holds and not mid_message:
            return  # a hook, the message's verdict or a slow reader: called again after the next round
        self._stop_timer(closing=True)
        self._flush()
        self._out.stop()
        # A registered producer would hold the close back until it leaves.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        tls = tls_layer(self.transport)
        if tls is not None:
            # TLS sent its close_notify and would wait for the client's: close TCP after it.
            tls.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class ForwardsHalfClose:
    """
    Mixed into a protocol wrapper (the PROXY wrapper): the end of the
    client's input goes to the wrapped protocol when it can still answer
    (it provides C{IHalfCloseableProtocol}); else, or before there is one,
    the connection closes, after what is queued for it.
    """

    __slots__ = ()

    def readConnectionLost(self) -> None:
        """The client shut down its sending side."""
        forward_half_close(self)

    def writeConnectionLost(self) -> None:
        """Our sending side was shut down: never asked for."""


def forward_half_close(wrapper: Any) -> None:
    """
    A protocol wrapper's C{readConnectionLost}: tell the wrapped protocol if
    it can still answer; else close the connection under the wrapper, after
    what is queued (for the TLS layer: TCP, not TLS, whose close would wait
    for a close_notify that cannot come).
    """
    protocol = wrapper.wrappedProtocol
    if half_closeable(protocol):
        protocol.readConnectionLost()
    else:
        wrapper.transport.loseConnection()


def half_closeable(protocol: Any) -> bool:
    """
    Whether C{protocol} really handles a half-close. Twisted's
    C{ProtocolWrapper} (the TLS layer's base) copies every interface its
    transport provides, ours included, and finds missing methods on its
    transport: above our PROXY wrapper it would claim the interface and
    send C{readConnectionLost} back down, round and round.
    """
    return IHalfCloseableProtocol.providedBy(protocol) and (
        hasattr(type(protocol), "readConnectionLost") or "readConnectionLost" in getattr(protocol, "__dict__", {}))


def tls_layer(transport: Any) -> Any:
    """
    The C{TLSMemoryBIOProtocol} under a connection's C{transport}, or C{None}:
    the transport itself (implicit TLS), the protocol of the TCP connection
    after STARTTLS, also behind a wrapper (the PROXY wrapper).
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        if isinstance(candidate, TLSMemoryBIOProtocol):
            return candidate
        inner = getattr(candidate, "protocol", None)
        if isinstance(inner, TLSMemoryBIOProtocol):
            return inner
    return None


def pass_half_close_through_tls(transport: Any) -> None:
    """
    Once a connection's TLS handshake is done: let its TLS layer pass the
    client's half-close on to the protocol it wraps (L{HalfCloseable}, or
    the PROXY wrapper that forwards it), instead of ending the connection.
    """
    tls = tls_layer(transport)
    if tls is None or half_closeable(tls):
        return
    tls.readConnectionLost = partial(forward_half_close, tls)
    tls.writeConnectionLost = lambda: None
    alsoProvides(tls, IHalfCloseableProtocol)
