# -*- test-case-name: tests.test_data -*-
"""
The message body: a CRLF-strict DATA decoder and the stream hooks read from.

L{DotDecoder} is sans-IO: it turns the raw bytes after C{354} into payload
chunks, undoes dot-stuffing and finds the end of the message, carrying at most
four bytes across reads. Only C{<CRLF>.<CRLF>} ends a message, so C{<LF>.<LF>}
or C{<LF>.<CR><LF>} cannot smuggle a second message past us; and by default a
body with any CR or LF outside a CRLF pair, or a NUL, is refused (L{body_fault},
L{BodyCheck}), so no such sequence reaches a downstream relay either.

L{MessageStream} hands those chunks to whoever reads the body, chunk by chunk
as they arrive, and pauses the connection while that reader is behind: the
body is never held whole in memory unless the hook asks for it.
"""

from __future__ import annotations

from types import CoroutineType
import sys
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from ._dotcodec import BARE_LINE_ENDING, NUL_IN_BODY, BodyCheck, DotDecoder, body_fault  # re-exported

__all__ = ["DotDecoder", "MessageStream", "MessageDone", "MessageTooLarge", "BareLineEnding",
           "MessageDiscarded", "BodyCheck", "body_fault", "BARE_LINE_ENDING", "NUL_IN_BODY"]

class MessageDone(Exception):
    """The body ended normally: the reader has seen every byte."""


class MessageTooLarge(Exception):
    """The body grew past the server's size limit; the rest is discarded."""


class BareLineEnding(Exception):
    """The body had a CR or LF not part of a CRLF, or a NUL, and the server rejects that."""


class MessageDiscarded(Exception):
    """The data hook finished or stopped the stream, so the rest of the body is skipped."""


@implementer(IPushProducer)
class MessageStream:
    """
    The body of the message being received, as it arrives.

    Read it in one of three ways, once: L{content} (all bytes, for small
    messages), L{collect} (a callback per chunk; a callback returning a
    Deferred pauses the client until it fires), or L{deliver_body} (a Twisted
    C{IProtocol}, as C{twisted.web}'s C{Response.deliverBody}).

    @ivar byte_length: payload bytes received so far (after dot-unstuffing).
    @ivar size_exceeded: whether C{byte_length} went past the server's limit.
        Unless the server lets the application decide (C{reject_oversized}
        false), the stream then fails with L{MessageTooLarge}; otherwise the
        body goes on streaming and the reader checks this flag.
    """

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None], limit: int = 0,
                 reject: bool = True) -> None:
        self.byte_length = 0
        self.size_exceeded = False
        self._limit = limit
        self._reject = reject
        self._pause = pause
        self._resume = resume
        self._holding = False  # whether we asked the connection to pause
        self._consumer: Optional[Any] = None
        self._buffer: List[bytes] = []
        self._paused = False  # the reader asked us to pause
        self._end: Optional[Failure] = None  # end reason not yet delivered
        self._ending = False  # the body ended normally, not yet told
        self._closed = False  # the reader got connectionLost
        self._discard = False  # drop everything from now on

    # -- reader side ------------------------------------------------------

    def deliver_body(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol} to the body: C{makeConnection(producer)},
        C{dataReceived(chunk)}s, then C{connectionLost(reason)} with
        L{MessageDone} or the failure that cut the body short. A reader
        keeping the stream (as C{self.transport}) after C{connectionLost}
        makes a reference cycle with it: set it to C{None} there, and the
        message's objects are freed at once.
        """
        if self._consumer is not None:
            raise RuntimeError("the message body is already being read")
        self._consumer = protocol
        # As in twisted.web's Response.deliverBody, the producer stands in
        # for the transport: the reader may pause, resume or stop it.
        protocol.makeConnection(self)  # type: ignore[arg-type]  # (no typing.cast: a call per message)
        if self._discard and not self._closed:
            self._close(self._end or Failure(MessageDiscarded()))
            return
        self._drain()

    def collect(self, callback: Callable[[bytes], Any]) -> "Deferred[None]":
        """
        Call C{callback(chunk)} for each chunk; if it returns a Deferred, wait
        for it before the next. The result fires when the body ended, or fails
        with the reason it was cut short (or the callback's error).
        """
        collector = _Collector(callback)
        done = collector.done  # (the collector lets go of it once the body is over, maybe at once)
        self.deliver_body(collector)
        return done  # type: ignore[return-value]  # not None: made just above

    def content(self) -> "Deferred[bytes]":
        """Collect the whole body in memory; only for messages known to be small."""
        chunks: List[bytes] = []
        d = self.collect(chunks.append)
        return d.addCallback(lambda _: b"".join(chunks))

    # -- IPushProducer, for the reader -----------------------------------

    def pauseProducing(self) -> None:
        if self._closed or self._discard:
            return  # the body is over for this reader: nothing to hold back
        self._paused = True
        self._hold()

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        """The reader wants no more: the rest of the body is discarded."""
        self.discard()

    # -- protocol side ----------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Called by the protocol with each decoded chunk."""
        self.byte_length += len(chunk)
        if self._limit and self.byte_length > self._limit and not self.size_exceeded:
            self.size_exceeded = True
            if self._reject:
                self.abort(Failure(MessageTooLarge(f"message exceeds {self._limit} bytes")))
                return
        if self._discard:
            return
        if self._consumer is not None and not self._paused and not self._buffer:
            self._consumer.dataReceived(chunk)
        else:
            self._buffer.append(chunk)
            self._hold()

    def finish(self, reason: Optional[Failure] = None) -> None:
        """The body ended (C{reason} None) or was cut short."""
        if self._closed:
            return
        if reason is not None:
            # Errors are not queued behind data: the reader learns at once.
            self._buffer.clear()
            self._close(reason)
            return
        self._ending = True
        self._drain()

    def abort(self, reason: Failure) -> None:
        """Stop the body now with C{reason}; later bytes are only counted."""
        self._discard = True
        self._buffer.clear()
        self._release()
        if self._consumer is not None and not self._closed:
            self._close(reason)
        else:
            self._end = reason

    def discard(self) -> None:
        """Nobody will read the rest (the hook finished or stopped us)."""
        if not self._discard:
            self.abort(Failure(MessageDiscarded()))

    @property
    def refused_for_size(self) -> bool:
        """Whether the server answers C{552} for this body (too large, and it rejects)."""
        return self.size_exceeded and self._reject

    def answer_directly(self, d: "Deferred[Any]", callback: Callable[[Optional[Failure], int, Any], Any],
                        token: int, tag: Any) -> bool:
        """
        For the connection: when C{d} is the still pending result of this
        stream's L{collect} and nothing has been chained to it, arrange that
        C{callback(reason, token, tag)} is called when the body ends (C{None}) or
        fails (a C{Failure}; cancelling C{d} fails it with C{CancelledError}),
        and return True. C{d} then fires with C{None} afterwards (what is
        left of it once the connection consumed the answer), so the common
        data hook C{return stream.collect(f)} costs no Deferred callbacks.
        (Two fixed arguments, not C{*args}: a call with unpacking costs ~1,000
        instructions more.)
        """
        consumer = self._consumer
        # Nothing chained: Deferred's callback list (the public "callbacks" is
        # deprecated since Twisted 25.5). Should the private name go away, the
        # default declines and the Deferred is waited on as any other.
        if (type(consumer) is _Collector and consumer.done is d and not d.called
                and not getattr(d, "_callbacks", True) and not consumer._failed):
            consumer._direct = (callback, token, tag)
            return True
        return False

    @property
    def has_reader(self) -> bool:
        """Whether someone called L{deliver_body}, L{collect} or L{content}."""
        return self._consumer is not None

    @property
    def ended(self) -> bool:
        """Whether the reader has been told the body is over (or nobody reads)."""
        return self._closed or self._discard

    # -- internals ----------------------------------------------------------

    def _hold(self) -> None:
        if not self._holding:
            self._holding = True
            self._pause()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._resume()

    def _drain(self) -> None:
        consumer = self._consumer
        if consumer is None or self._closed:
            return
        while self._buffer and not self._paused and not self._closed:
            consumer.dataReceived(self._buffer.pop(0))
        if self._paused or self._closed:
            return
        if self._end is not None or self._ending:
            self._close(self._end)
        elif self._holding:  # (_close released it; the test spares a call per message)
            self._release()

    def _close(self, reason: Optional[Failure]) -> None:
        """Tell the reader the body is over; C{None} means it ended normally."""
        consumer = self._consumer
        if consumer is None:
            # Nobody reads yet: keep the reason for whoever attaches later.
            self._discard = True
            self._end = reason
            self._release()
            return
        self._closed = True
        self._end = None
        if isinstance(consumer, _Collector):
            consumer.ended(reason)  # no Failure needed for the common case
        elif consumer is not None:
            consumer.connectionLost(reason or Failure(MessageDone()))
        if self._holding:
            self._release()


#: C{sys.getrefcount} where there is one (CPython), and what it says of a
#: Deferred held only by its L{_Collector} and the caller's local name.
_refcount = getattr(sys, "getrefcount", None)


class _Probe:
    __slots__ = ("done",)

    done: object


def _unshared_count() -> int:
    """
    What L{_refcount} says, read as L{_Collector._answer} reads it, of an
    object held only by an attribute and a local name: measured, not
    assumed, since it depends on the interpreter (3 up to CPython 3.13: the
    attribute, the local, the argument; 3.14 passes a local without a
    reference of its own, gh-130704, and says 2).
    """
    probe = _Probe()
    probe.done = object()
    done = probe.done
    return _refcount(done) if _refcount is not None else 0


_UNSHARED = _unshared_count()


@implementer(IProtocol)
class _Collector:
    """An IProtocol that feeds chunks to a callback, honouring Deferreds it returns."""

    #: Set by L{MessageStream.answer_directly}: (callback, token, tag) to call in
    #: place of firing L{done} through its callbacks.
    _direct: Optional[Tuple[Callable[[Optional[Failure], int, Any], Any], int, Any]] = None
    #: Whether the direct callback was called: C{done} is then over, fired or not (see L{_answer}).
    _answered = False

    def __init__(self, callback: Callable[[bytes], Any]) -> None:
        self._callback = callback
        self._producer: Optional[MessageStream] = None
        self._failed = False
        # None once the outcome has left (L{_let_go}).
        self.done: Optional[Deferred[None]] = Deferred(self._cancel)

    def _cancel(self, d: "Deferred[None]") -> None:
        """C{done} is cancelled: tell the direct callback (if any); else C{done} fails with C{CancelledError}."""
        if self._direct is not None:
            self._answer(Failure(CancelledError()))

    def makeConnection(self, transport: ITransport) -> None:
        self._producer = transport  # type: ignore[assignment]  # a MessageStream: see MessageStream.deliver_body

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, chunk: bytes) -> None:
        if self._failed:
            return
        try:
            result = self._callback(chunk)
            if result is None:  # the common case; isinstance(None, Deferred) runs ABCMeta's __instancecheck__
                return
            if isinstance(result, CoroutineType):  # an async def callback
                result = Deferred.fromCoroutine(result)
        except Exception:
            self._fail(Failure())
            return
        if isinstance(result, Deferred):
            if result.called:  # already done: no need to pause
                result.addErrback(self._fail)
                return
            assert self._producer is not None
            self._producer.pauseProducing()
            result.addCallbacks(self._resume, self._fail)

    def _resume(self, _: object) -> None:
        if not self._failed and self._producer is not None:
            self._producer.resumeProducing()

    def _answer(self, reason: Optional[Failure]) -> None:
        """The direct way: the callback gets the reason, then C{done} fires with C{None}."""
        assert self._direct is not None
        (callback, token, tag), self._direct = self._direct, None
        self._answered = True
        callback(reason, token, tag)
        done = self.done
        # Fired for whoever kept it or chained to it since (and let go of it
        # after: the callbacks still run); one nobody holds and nothing was
        # chained to (the usual case: the hook returned it and the connection
        # has let go) is left unfired, which nobody can tell: Deferred.callback
        # costs ~4,000 instructions even with no callbacks (issue 13).
        if done is not None and not done.called and (_refcount is None or getattr(done, "_callbacks", True)
                                                     or _refcount(done) > _UNSHARED):
            done.callback(None)
        self._let_go()

    def _fail(self, failure: Failure) -> None:
        if self._failed:
            return
        self._failed = True
        producer = self._producer
        if self._direct is not None:
            self._answer(failure)  # (no local name for done here: _answer counts who holds it)
        elif self.done is not None and not self.done.called and not self._answered:
            self.done.errback(failure)
        if producer is not None:
            producer.discard()
        self._let_go()

    def connectionLost(self, reason: Failure) -> None:
        self.ended(None if reason.check(MessageDone) else reason)

    def ended(self, reason: Optional[Failure]) -> None:
        """The body ended (C{None}) or was cut short."""
        if self._direct is not None:
            self._answer(reason)
            return
        if self._answered:
            # Answered directly; maybe from inside _answer (its callback discards the
            # stream, which ends it): _answer still fires done and lets go after.
            return
        done = self.done
        self._let_go()
        if done is None or done.called:
            return
        if reason is None:
            done.callback(None)
        else:
            done.errback(reason)

    def _let_go(self) -> None:
        """
        The outcome has left: drop the stream and C{done}, which hold this
        collector in turn (C{done} through its canceller). Without these
        cycles a message's objects are freed by reference counting as soon
        as nobody else holds them, so mail traffic gives the cyclic garbage
        collector nothing to collect and no reason to run (issue 13).
        A chunk's Deferred settling later then has nothing left to resume.
        """
        self._producer = None
        self.done = None
