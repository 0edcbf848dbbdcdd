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
from typing import Any, Callable, List, Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["DotDecoder", "MessageStream", "MessageDone", "MessageTooLarge", "BareLineEnding",
           "MessageDiscarded", "BodyCheck", "body_fault", "BARE_LINE_ENDING", "NUL_IN_BODY"]

_CRLF = b"\r\n"
# Every byte but CR, LF and NUL: bytes.translate deletes these, keeping the three.
_NOT_CR_LF_NUL = bytes(i for i in range(256) if i not in (0, 10, 13))
# Reply texts for a refused body (550 5.6.0), also the reason the stream is aborted with.
BARE_LINE_ENDING = "Error: message contains bare CR or LF characters"
NUL_IN_BODY = "Error: message contains NUL characters"
# Dots a line-start search looks at one by one (memchr speed) before it falls
# back to searching for CRLF "." (a slower byte-by-byte scan) in that buffer.
_DOT_PROBES = 8


def body_fault(data: bytes, end: int) -> Optional[str]:
    """
    Check C{data[:end]} for a CR not followed by LF, an LF not preceded by CR,
    or a NUL (RFC 5321 2.3.8 and 4.1.1.4, RFC 6152, RFC 2045 2.7/2.8).

    The caller must not cut a CRLF between two calls (a CR last in one call
    and its LF first in the next would both look bare).

    Only C-speed passes, no per-line Python work, and none of the slow
    multi-byte searches: C{translate} keeps the CR, LF and NUL bytes, which
    must read C{CRLF CRLF ...}; that alone misses a CR and an LF with other
    bytes between (C{"a\\rX\\nb"} keeps C{"\\r\\n"} too: the smuggling bypass of
    issue 10), so the text without its CRs must also equal the text without its
    LFs once CR is written as LF. With the CRs and LFs alternating, that
    equality holds exactly when each CR's LF comes right after it: the i-th
    line break then has as many other bytes before it in both texts.

    @return: C{None} if clean, else the reply text saying what is wrong.
    """
    text = data if end == len(data) else data[:end]
    ends = text.translate(None, _NOT_CR_LF_NUL)
    if not ends:
        return None
    if ends != _CRLF * (len(ends) >> 1):
        return NUL_IN_BODY if b"\0" in ends else BARE_LINE_ENDING
    if text.replace(b"\r", b"") != text.replace(b"\n", b"").replace(b"\r", b"\n"):
        return BARE_LINE_ENDING
    return None


class BodyCheck:
    """
    L{body_fault} over a body that arrives in arbitrary pieces (BDAT chunks):
    a CR last in one piece is held until the next piece shows whether an LF
    follows it.
    """

    __slots__ = ("_cr", "fault")

    def __init__(self) -> None:
        self._cr = False  # the previous piece ended with a CR not yet judged
        self.fault: Optional[str] = None

    def feed(self, data: bytes) -> Optional[str]:
        """Check the next piece; return (and remember) the first fault found."""
        if self.fault is not None or not data:
            return self.fault
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        self.fault = body_fault(data, len(data) - 1 if self._cr else len(data))
        return self.fault

    def end(self) -> Optional[str]:
        """The body is complete: a CR still held is bare."""
        if self.fault is None and self._cr:
            self.fault = BARE_LINE_ENDING
        return self.fault


def _dot_line(buf: bytes, start: int, probe: bool) -> tuple[int, bool]:
    """
    Find C{CRLF "."} in C{buf} from C{start}: the next line whose leading dot
    must go, or the terminator.

    Looking at each dot with C{find(b".")} runs at memchr speed where dots are
    rare (base64, most large bodies); once a buffer shows many dots that do
    not start a line, the search for the three bytes takes over for the rest
    of it, so prose costs what it always did.

    @return: C{(position of the CR or -1, whether to keep probing)}.
    """
    if probe:
        dot = buf.find(b".", start + 2)
        for _ in range(_DOT_PROBES):
            if dot < 0:
                return -1, True
            if buf.startswith(_CRLF, dot - 2):
                return dot - 2, True
            dot = buf.find(b".", dot + 1)
        if dot < 0:
            return -1, False
        start = dot - 2
    return buf.find(b"\r\n.", start), False


class MessageDone(Exception):
    """The body ended normally: the reader has seen every byte."""


class MessageTooLarge(Exception):
    """The body grew past the server's size limit; the rest is discarded."""


class BareLineEnding(Exception):
    """The body had a CR or LF not part of a CRLF, or a NUL, and the server rejects that."""


class MessageDiscarded(Exception):
    """The data hook finished or stopped the stream, so the rest of the body is skipped."""


class DotDecoder:
    """
    Incremental DATA decoder (RFC 5321 4.1.1.4, 4.5.2).

    @ivar bare: set once a bare CR or LF, or a NUL, was seen (only if C{check_bare}).
    @ivar fault: then the reply text saying which (L{BARE_LINE_ENDING} or L{NUL_IN_BODY}).
    """

    __slots__ = ("_carry", "_first", "_check_bare", "bare", "fault")

    def __init__(self, check_bare: bool = True) -> None:
        # The body starts at a line start: pretend a CRLF came before it so
        # that a dot on the first line is handled like any other.
        self._carry = b"\r\n"
        self._first = True
        self._check_bare = check_bare
        self.bare = False
        self.fault: Optional[str] = None

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """
        Decode the next bytes.

        One scan for C{CRLF "."} finds both the end of the message and the
        lines whose leading dot must go (RFC 5321 4.5.2: the first character
        of a line is deleted when it is a period); L{body_fault} checks the
        payload part of the same buffer. Only a CR or a CRLF (or CRLF "."
        and what may follow) is carried to the next read, so no CRLF is ever
        split between two checks.

        @return: C{(payload, rest)}; C{rest} is C{None} while the message goes
            on, else the bytes after the terminating dot (pipelined commands).
        """
        buf = self._carry + data if self._carry else data
        n = len(buf)
        parts: list[bytes] = []
        start = 0
        end = n  # where the payload of this buffer stops
        rest: Optional[bytes] = None
        pos, probe = _dot_line(buf, 0, True)
        while pos >= 0:
            after = buf[pos + 3:pos + 5]
            if after == b"\r\n":  # the terminator
                end = pos + 2
                rest = buf[pos + 5:]
                break
            if after == b"" or after == b"\r":  # cannot tell yet: keep it
                end = pos
                break
            parts.append(buf[start:pos + 2])  # keep the CRLF, drop the dot
            start = pos + 3
            pos, probe = _dot_line(buf, start, probe)
        else:
            # Keep a tail that may begin the terminator.
            if buf.endswith(b"\r"):
                end = n - 1
            elif buf.endswith(b"\r\n"):
                end = n - 2
        self._carry = buf[end:] if rest is None else b""
        if self._check_bare and not self.bare:
            self.fault = body_fault(buf, end)
            self.bare = self.fault is not None
        if parts:
            parts.append(buf[start:end])
            body = b"".join(parts)
        elif start == 0 and end == n:
            body = buf
        else:
            body = buf[start:end]
        if self._first and body:
            self._first = False
            body = body[2:]
        return body, rest


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
        L{MessageDone} or the failure that cut the body short.
        """
        if self._consumer is not None:
            raise RuntimeError("the message body is already being read")
        self._consumer = protocol
        # As in twisted.web's Response.deliverBody, the producer stands in
        # for the transport: the reader may pause, resume or stop it.
        protocol.makeConnection(cast(ITransport, self))
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
        self.deliver_body(collector)
        return collector.done

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
        self._release()


@implementer(IProtocol)
class _Collector:
    """An IProtocol that feeds chunks to a callback, honouring Deferreds it returns."""

    def __init__(self, callback: Callable[[bytes], Any]) -> None:
        self._callback = callback
        self._producer: Optional[MessageStream] = None
        self._failed = False
        self.done: Deferred[None] = Deferred()

    def makeConnection(self, transport: ITransport) -> None:
        self._producer = cast(MessageStream, transport)  # see MessageStream.deliver_body

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, chunk: bytes) -> None:
        if self._failed:
            return
        try:
            result = self._callback(chunk)
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

    def _fail(self, failure: Failure) -> None:
        if self._failed:
            return
        self._failed = True
        if not self.done.called:
            self.done.errback(failure)
        if self._producer is not None:
            self._producer.discard()

    def connectionLost(self, reason: Failure) -> None:
        self.ended(None if reason.check(MessageDone) else reason)

    def ended(self, reason: Optional[Failure]) -> None:
        """The body ended (C{None}) or was cut short."""
        if self.done.called:
            return
        if reason is None:
            self.done.callback(None)
        else:
            self.done.errback(reason)
