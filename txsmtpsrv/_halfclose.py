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

TLS: Twisted's C{TLSMemoryBIOProtocol} does not provide the interface, so
under STARTTLS or implicit TLS a half-close still ends the connection at
once (see C{bench/README.md}, "Half-closing clients").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

__all__ = ["HalfCloseable", "ForwardsHalfClose"]


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

        def _stop_timer(self) -> None: ...
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
        if self._gone or core.finished:
            return  # closing already (e.g. after QUIT), or closed
        stream = self._stream
        mid_message = stream is not None and not stream.ended
        if core.holds and not mid_message:
            return  # a hook, the message's verdict or a slow reader: called again after the next round
        self._stop_timer()
        self._flush()
        self._out.stop()
        # A registered producer would hold the close back until it leaves.
        self.transport.unregisterProducer()
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class ForwardsHalfClose:
    """
    Mixed into a protocol wrapper (the PROXY wrapper): the end of the
    client's input goes to the wrapped protocol when it can still answer
    (it provides C{IHalfCloseableProtocol}); else, or before there is one,
    the connection closes, after what is queued for it.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        wrappedProtocol: Any

        def loseConnection(self) -> None: ...

    def readConnectionLost(self) -> None:
        """The client shut down its sending side."""
        protocol = self.wrappedProtocol
        if IHalfCloseableProtocol.providedBy(protocol):
            protocol.readConnectionLost()
        else:
            self.loseConnection()  # the wrapper's: after what is queued

    def writeConnectionLost(self) -> None:
        """Our sending side was shut down: never asked for."""
