# -*- test-case-name: tests.test_threaded -*-
"""
Capturing accepted messages for tests: the record, the mailbox, the hooks.

L{CapturingHooks} wraps the user's hooks object: every hook is the user's,
except that the body is also copied into a L{CapturedMessage} once the
message is accepted, before the final reply leaves. So when a client's
C{sendmail()} returns, the message is already in the mailbox: tests need no
sleep, and L{Mailbox.wait_for} is only for senders that do not wait.
"""

from __future__ import annotations

import email.message
import email.policy
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from functools import cached_property
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from ._data import MessageStream
from ._errors import Reply
from ._session import Address, Envelope, Session

__all__ = ["CapturedMessage", "CapturingHooks", "Mailbox", "MessagesNotReceived"]


@dataclass(frozen=True, eq=False)
class CapturedMessage:
    """
    One message the server accepted, with what the session knew about it.

    @ivar mail_from: the reverse-path (C{""} for C{<>}).
    @ivar rcpt_to: the recipients the message was accepted for (in LMTP, those
        the data hook did not reject).
    @ivar body: the message exactly as received (CRLF line ends, dots unstuffed).
    @ivar envelope: a copy of the L{Envelope} (ESMTP parameters, DSN, body type).
    @ivar session_id: the session id, as in the server's log.
    @ivar peer: C{(address, port)} of the client.
    @ivar helo: the name the client gave in HELO/EHLO/LHLO.
    @ivar secure: whether the message came over TLS.
    @ivar tls: the session's L{TLSInfo} (version, cipher, SNI name) or C{None}.
    @ivar user: what the auth hook returned, or C{None} without AUTH.
    @ivar lmtp: whether it came over LMTP.
    """

    mail_from: str
    rcpt_to: Tuple[str, ...]
    body: bytes
    envelope: Envelope = field(repr=False)
    session_id: str = ""
    peer: Tuple[str, int] = ("", 0)
    helo: str = ""
    secure: bool = False
    tls: Any = field(default=None, repr=False)
    user: Any = None
    lmtp: bool = False

    @cached_property
    def message(self) -> email.message.EmailMessage:
        """
        The body parsed with C{email.policy.default} (on first use), line ends
        turned into Python's C{\\n} so that C{get_content()} compares with
        ordinary strings; C{body} keeps the bytes as received.
        """
        msg = BytesParser(policy=email.policy.default).parsebytes(self.body.replace(b"\r\n", b"\n"))
        assert isinstance(msg, email.message.EmailMessage)
        return msg

    def __str__(self) -> str:
        subject = self.message.get("Subject")
        return (f"<{self.mail_from}> -> {', '.join(f'<{r}>' for r in self.rcpt_to)}"
                f" ({len(self.body)} bytes{', subject ' + repr(str(subject)) if subject is not None else ''})")


class MessagesNotReceived(AssertionError):
    """
    L{Mailbox.wait_for} timed out; C{messages} holds what did arrive.
    An C{AssertionError}, so test runners report it as a failed expectation.
    """

    def __init__(self, count: int, timeout: float, messages: Sequence[CapturedMessage]) -> None:
        self.messages = list(messages)
        got = "".join(f"\n  {i}: {m}" for i, m in enumerate(self.messages, 1)) or " none"
        super().__init__(f"expected {count} message(s) within {timeout:g} s, "
                         f"{len(self.messages)} arrived:{got}")


class Mailbox:
    """The captured messages, safe to read from any thread."""

    def __init__(self) -> None:
        self._messages: List[CapturedMessage] = []
        self._cond = threading.Condition()
        self._waiters: List[Tuple[int, Deferred[List[CapturedMessage]]]] = []

    def add(self, message: CapturedMessage) -> None:
        """Record C{message} (in the reactor thread) and wake whoever waits for it."""
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()
            count = len(self._messages)
            ready = [d for n, d in self._waiters if n <= count]
            self._waiters = [(n, d) for n, d in self._waiters if n > count]
            snapshot = list(self._messages)
        for d in ready:
            d.callback(snapshot)

    @property
    def messages(self) -> List[CapturedMessage]:
        """A copy of the list of messages accepted so far, oldest first."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages captured so far."""
        with self._cond:
            self._messages.clear()

    def wait_for(self, count: int, timeout: float) -> List[CapturedMessage]:
        """Block until C{count} messages are in; see L{ThreadedServer.wait_for}."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise MessagesNotReceived(count, timeout, self._messages)
            return list(self._messages)

    def when(self, count: int, timeout: float, clock: Any) -> "Deferred[List[CapturedMessage]]":
        """A Deferred for the reactor thread: fires like L{wait_for} returns, or fails likewise."""
        with self._cond:
            if len(self._messages) >= count:
                return succeed(list(self._messages))
            d: Deferred[List[CapturedMessage]] = Deferred()
            entry = (count, d)
            self._waiters.append(entry)

        def expire() -> None:
            with self._cond:
                if entry not in self._waiters:
                    return
                self._waiters.remove(entry)
                arrived = list(self._messages)
            d.errback(MessagesNotReceived(count, timeout, arrived))

        timer = clock.callLater(timeout, expire)

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(cancel_timer)


def _copy_envelope(envelope: Envelope) -> Envelope:
    copy = Envelope()
    for name in Envelope.__slots__:
        value = getattr(envelope, name)
        setattr(copy, name, list(value) if isinstance(value, list) else value)
    return copy


def _rejected(item: Any) -> bool:
    """Whether one LMTP per-recipient answer refuses the message for that recipient."""
    return isinstance(item, BaseException) or (isinstance(item, Reply) and item.code >= 400)


def _accepted_for(session: Session, result: Any) -> Tuple[str, ...]:
    rcpts: List[Address] = list(session.envelope.rcpt_to)
    if session.lmtp and isinstance(result, (list, tuple)) and len(result) == len(rcpts):
        return tuple(r.address for r, item in zip(rcpts, result) if not _rejected(item))
    if isinstance(result, Reply) and result.code >= 400:
        return ()
    return tuple(r.address for r in rcpts)


class CapturingHooks:
    """
    The user's hooks plus a copy of every accepted message into C{mailbox}.

    Hooks other than C{on_data} are the user's own methods (looked up on
    each access, so a user may swap them between tests). When the user has
    an C{on_data}, it reads a tee of the body: the user's reader sets the
    pace (backpressure intact) while the copy is kept here.
    """

    def __init__(self, hooks: Optional[object], mailbox: Mailbox) -> None:
        self._user = hooks
        self._mailbox = mailbox

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_") or self._user is None:
            raise AttributeError(name)
        return getattr(self._user, name)

    def on_data(self, session: Session, stream: MessageStream) -> "Deferred[Any]":
        user: Optional[Callable[..., Any]] = getattr(self._user, "on_data", None)
        from ._hooks import Hooks
        if user is not None and getattr(user, "__func__", None) is Hooks.on_data:
            user = None
        if user is None:
            return stream.content().addCallback(self._captured, session, None)
        return Deferred.fromCoroutine(self._tee(user, session, stream))

    def _captured(self, body: bytes, session: Session, result: Any) -> Any:
        rcpts = _accepted_for(session, result)
        if rcpts:
            envelope = session.envelope
            self._mailbox.add(CapturedMessage(
                mail_from=envelope.mail_from.address if envelope.mail_from is not None else "",
                rcpt_to=rcpts, body=body, envelope=_copy_envelope(envelope), session_id=session.id,
                peer=(session.remote_address, session.remote_port), helo=session.host_name_appears_as,
                secure=session.secure, tls=session.tls, user=session.user, lmtp=session.lmtp))
        return result

    async def _tee(self, user: Callable[..., Any], session: Session, stream: MessageStream) -> Any:
        chunks: List[bytes] = []
        gate: List[Deferred[None]] = []

        def pause() -> None:
            gate.append(Deferred())

        def resume() -> None:
            while gate:
                gate.pop().callback(None)

        inner = MessageStream(pause, resume)

        def feed(chunk: bytes) -> Optional[Deferred[None]]:
            chunks.append(chunk)
            inner.write(chunk)
            return gate[-1] if gate else None

        body_done = stream.collect(feed)
        ended: Deferred[None] = Deferred()
        failures: List[Any] = []

        def finished(failure: Any) -> None:
            if failure is not None:
                failures.append(failure)
            inner.finish(failure)
            if not ended.called:
                ended.callback(None)

        body_done.addCallbacks(lambda _: finished(None), finished)

        try:
            result = await maybeDeferred(user, session, inner)
        finally:
            if not inner.has_reader:
                inner.discard()
        await ended
        if failures or stream.size_exceeded:
            return result  # the server answers the size or transfer error itself
        return self._captured(b"".join(chunks), session, result)
