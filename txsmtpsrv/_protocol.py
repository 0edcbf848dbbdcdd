# -*- test-case-name: tests.test_protocol_commands,tests.test_protocol_transaction,tests.test_protocol_hooks,tests.test_protocol_observers -*-
"""
The Twisted side of one SMTP/LMTP connection: L{SMTPServerProtocol} drives
a sans-IO L{Dialogue}.

The dialogue decides everything said; this class does what it cannot: it
owns the transport (one write per read, pausing reading, STARTTLS, closing),
the timers (C{IReactorTime}), the hooks (called directly; a Deferred or
coroutine result is bounded by C{hook_timeout} and cancelled on disconnect;
no Deferred is made for a hook that answers at once), the L{MessageStream}
a data hook reads, and the logs. It gets what it needs from the server as a
L{ServerContext} and never imports the server module.

How a DATA chunk travels: C{dataReceived(bytes)} -> L{Dialogue.receive}
-> L{CommandReader} buffer -> (DATA phase) L{DotDecoder.feed} -> a
C{(BODY, payload)} action -> L{MessageStream.write} -> the hook's reader
(C{collect} callback or C{deliver_body} protocol). A reader that falls
behind pauses the stream, which holds the dialogue and pauses the transport.
"""

from __future__ import annotations

from types import CoroutineType
from typing import Any, Callable, Dict, Optional, Protocol as TypingProtocol, Tuple, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (IAddress, IDelayedCall, IHandshakeListener, ILoggingContext, IProtocol,
                                         IPushProducer, ISSLTransport, ITLSTransport, ITransport)
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ._accepted import accepted, address_parts, session_id
from ._context import ServerContext
from ._deadlines import Deadline, Linger
from ._data import BareLineEnding, MessageDiscarded, MessageStream
from ._logging import SessionLogger, instance_logger_wants
from ._dialogue import (ABORT, ASK, BODY, BODY_ABORT, BODY_END, BODY_START, CANCEL, CLOSE, LOG, NOTIFY,
                        SLEEP, START_TLS, Dialogue)
from ._rdns import reverse_lookup
from ._sendnow import ReplyWriter, reply_writer
from ._halfclose import HalfCloseable, pass_half_close_through_tls
from ._session import Session

__all__ = ["SMTPServerProtocol"]

_QUIET_FAILURES = (CancelledError, ConnectionLost, ConnectionDone, MessageDiscarded)
#: The deadline of a hook that ran past hook_timeout and is being cancelled (see L{_expire_hooks}).
_EXPIRED = -1.0
#: Slack in comparing a hook's deadline with the clock (timer arithmetic may round down).
_EPSILON = 1e-6
_LEVELS = {level.name: level for level in LogLevel.iterconstants()}  # LogLevel.levelWithName, a dict lookup


class _Connection(TypingProtocol):
    """
    What this protocol uses of its transport. TCP, UNIX and TLS transports
    and the PROXY wrapper provide all of it; Twisted's own annotation
    (C{ITransport | None}) names neither producers nor TLS.
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def getHost(self) -> IAddress: ...
    def startTLS(self, contextFactory: Any) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


@implementer(IProtocol, ILoggingContext, IHandshakeListener, IPushProducer)
class SMTPServerProtocol(HalfCloseable):
    """
    One SMTP (or LMTP) connection. Built by L{txsmtpsrv.SMTPServer}; users
    never subclass it, they pass hooks to the server.

    An C{IProtocol} with slots only: Twisted's C{Protocol} base class would
    give every connection an instance dict for its three attributes
    (C{factory}, C{transport}, C{connected}), ~60 bytes of an idle connection.

    @ivar core: the L{Dialogue} (a test seam: tests may drive or inspect it).
    """

    log = SessionLogger()  # the session id goes into every line's text

    __slots__ = ("factory", "transport", "context", "core", "_pending", "_stream",
                 "_data_token", "_timer", "_tls_timer", "_backpressure", "_paused", "_driving", "_gone", "_holder",
                 "_timing", "_out")

    def __init__(self, context: ServerContext) -> None:
        self.factory: Any = None  # set by the server
        self.transport: _Connection = None  # type: ignore[assignment]  # set by makeConnection
        self.context = context
        # token -> (a hook's Deferred or the timer of one of our sleeps: either
        # is cancelled; its hook_timeout deadline, None for none); made on first use.
        self._pending: Optional[Dict[int, Tuple[Deferred[Any] | IDelayedCall, Optional[float]]]] = None
        self._stream: Optional[MessageStream] = None
        self._data_token: Optional[int] = None
        self._timer: Optional[Deadline] = None  # the connection's one timer, in the server's Deadlines
        self._tls_timer: Any = None
        self._backpressure = False  # registered with the transport as its producer
        self._paused = False  # we paused the transport
        self._driving = False  # performing the dialogue's actions
        self._gone = False  # connectionLost ran
        self._input_ended = False  # the client half-closed (see HalfCloseable)
        self._holder: Any = None
        # token -> (hook name, when asked), for "hook" observers; made on first use.
        self._timing: Optional[Dict[int, Tuple[str, float]]] = None
        self.core: Dialogue
        self._out: ReplyWriter  # every write to the transport goes through it

    @property
    def session(self) -> Session:
        """The L{Session} (the dialogue's: one slot less per connection)."""
        return self.core.session

    @property
    def connected(self) -> int:
        """C{IProtocol}'s flag, as C{BaseProtocol} keeps it: 1 once C{makeConnection} ran."""
        return 0 if self.transport is None else 1

    def makeConnection(self, transport: Any) -> None:
        """IProtocol: the connection is up (what C{BaseProtocol.makeConnection} does)."""
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        """Twisted's log context (its transport keeps two strings made of it per connection): short."""
        return "SMTP"

    # -- connection lifecycle ----------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        peer_address = transport.getPeer()
        peer = address_parts(peer_address)
        host = accepted(transport)  # Nagle off; the Session shares one (address, port) per listener
        ctx = self.context
        o = ctx.options
        s = Session(session_id(), host[0], host[1], peer[0], peer[1], lmtp=o.lmtp)
        s.secure = o.secured
        # Behind our PROXY wrapper getPeer() is already the real client.
        s.proxy = getattr(transport, "proxy_info", None)
        implicit = ISSLTransport.providedBy(transport)
        self.core = Dialogue(o, s, ctx.hook_names, ctx.observers, ctx.reply_cache, ctx.reactor.seconds,
                             tls_available=ITLSTransport.providedBy(transport), tls_active=implicit, guard=ctx.guard,
                             notify=ctx.notify)
        self._out = reply_writer(transport, peer_address)  # (held to the end of a pass for a client on this host)
        ctx.connected(self)
        if implicit:  # the handshake is under way (on Twisted's layer: gather its tiny records)
            from ._tlsgather import gather_records
            gather_records(transport)
            self._tls_timer = self._start_handshake_timer()
        else:
            # Under TLS only once the handshake is done: before, the TLS layer
            # pauses its producer while it buffers our greeting.
            self._register_backpressure()
        self._timer = ctx.deadlines.call_later(o.socket_timeout, self)
        self.core.start(instance_logger_wants(self, LogLevel.info))  # the check _log would make of the line
        self._run()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._gone = True
        if self._tls_timer is not None and self.context.observers["tls"]:  # the handshake never finished
            why = reason.getErrorMessage() if reason is not None else "connection lost"
            self.context.notify("tls", self.session, why)
        self._stop_timer()
        if self._tls_timer is not None and self._tls_timer.active():
            self._tls_timer.cancel()
        self._tls_timer = None
        self.core.connection_lost()
        self._run()
        # The last message's stream calls back into us (pause, resume): let go of it, so
        # that the connection's objects are freed at once, not by the cyclic collector.
        self._stream = None
        s = self.session
        self.context.disconnected(self)
        self.context.notify("disconnect", s)
        hook = self.context.hooks.on_close
        if hook is not None:
            # A value, a Deferred or a coroutine; a failure, raised now or later, is logged.
            maybeDeferred(hook, s).addErrback(self._log_hook_failure, "on_close")

    def _log_hook_failure(self, failure: Failure, name: str) -> None:
        self.log.failure("hook {hook} failed", failure, hook=name, session_id=self.session.id)

    def dataReceived(self, data: bytes) -> None:
        core = self.core
        core.receive(data)
        if core.actions:
            self._run()
        else:  # the common case: replies only, in one write (_flush, inline: one call less per read)
            out = core.out
            if out is not None:
                core.out = None
                if not self._gone:
                    self._out.write(out if isinstance(out, bytes) else b"".join(out))
            if self._paused or core.holds:
                self._sync_reading()

    # -- performing the dialogue's actions -------------------------------------

    def _run(self) -> None:
        """Perform the dialogue's actions, then write its replies in one write."""
        if self._driving:
            return  # an outer call is performing them
        core = self.core
        actions = core.actions
        self._driving = True
        try:
            while actions:
                action = actions.pop(0)  # an ActionQueue (a list): the C method, not its popleft
                kind = action[0]
                if kind == BODY:
                    assert self._stream is not None
                    self._stream.write(action[1])
                elif kind == ASK:
                    self._ask(action[1], action[2], action[3])
                elif kind == BODY_START:
                    self._body_start(action[1], action[2])
                elif kind == BODY_END:
                    assert self._stream is not None
                    self._stream.finish()
                elif kind == BODY_ABORT:
                    self._body_abort(action[1], action[2])
                elif kind == CANCEL:
                    entry = self._pending.pop(action[1], None) if self._pending else None
                    if entry is not None:
                        entry[0].cancel()
                elif kind == NOTIFY:
                    self.context.notify(action[1], *action[2])
                elif kind == LOG:
                    self._log(action[1], action[2], action[3])
                elif kind == START_TLS:
                    self._flush()
                    from ._tlslayer import upgrade  # our TLS layer on plain TCP, else Twisted's
                    self._out = upgrade(self.transport, self._holder, self, self._out)
                    self._tls_timer = self._start_handshake_timer()
                elif kind == CLOSE:
                    self._stop_timer(closing=True)
                    self._flush()
                    self._out.stop()
                    if not self._gone:
                        # A registered producer would hold the close back until it leaves.
                        self.transport.unregisterProducer()
                        self.transport.loseConnection()
                elif kind == ABORT:
                    self._stop_timer()
                    self._out.stop()
                    self.transport.abortConnection()
        finally:
            self._driving = False
        out = core.out  # _flush, inline (this runs for most reads)
        if out is not None:
            core.out = None
            if not self._gone:
                self._out.write(out if isinstance(out, bytes) else b"".join(out))
        if self._paused or core.holds:
            self._sync_reading()
        if self._input_ended:
            self._close_when_answered()

    def _flush(self) -> None:
        """Write the replies the dialogue has made so far, in one write."""
        data = self.core.take_output()
        if data and not self._gone:
            self._out.write(data)

    def _sync_reading(self) -> None:
        """Pause or resume the transport as the dialogue wants."""
        want = bool(self.core.holds) and not self._gone
        if want != self._paused:
            self._paused = want
            if want:
                self.transport.pauseProducing()
            elif not self.core.finished:
                self.transport.resumeProducing()

    def _stop_timer(self, closing: bool = False) -> None:
        """Cancel the connection's timer; C{closing}: the client has socket_timeout to read the rest (L{Linger})."""
        timer = self._timer
        if closing and not self._gone:
            ctx = self.context
            linger = Linger(self, ctx.reactor.seconds() + ctx.options.socket_timeout)
            if timer is not None and timer.owner is not None and timer.when <= linger._until:
                timer.owner = linger  # the pending entry wakes it (no heap work per close)
            else:
                self._wake_by(linger._until, ctx.options.socket_timeout, linger)
            return
        if timer is not None:
            self._timer = None
            self.context.deadlines.cancel(timer)

    def _log(self, level: str, fmt: str, fields: Dict[str, Any]) -> None:
        error = fields.pop("error", None)
        if level == "failure":
            if error is not None and not isinstance(error, Failure):
                error = Failure(error, type(error), error.__traceback__)
            self.log.failure(fmt, error, session_id=self.session.id, **fields)
        elif instance_logger_wants(self, _LEVELS[level]):  # else nobody keeps it: self.log not even made
            getattr(self.log, level)(fmt, session_id=self.session.id, **fields)

    # -- hooks -----------------------------------------------------------------

    def _ask(self, token: int, name: str, args: Tuple[Any, ...]) -> None:
        hook: Callable[..., Any]
        if name == SLEEP:
            # A delay of ours (greeting delay, AUTH tarpit): a timer, cancelled like a hook.
            self._pending_calls()[token] = (self.context.reactor.callLater(args[0], self._slept, token), None)
            self.core.asked(token)
            return
        if name == "reverse_lookup":
            hook = self._reverse_lookup
        elif name == "tls_context":
            hook = self._tls_context
            self._call(token, hook, args, timed=False)
            return
        else:
            hook = getattr(self.context.hooks, name)
        self._call(token, hook, args)

    def _slept(self, token: int) -> None:
        if self._pending:
            self._pending.pop(token, None)
        if self._gone:
            return
        self._answer(token, None, None, True)
        self._run()

    def _reverse_lookup(self, ip: str) -> Any:
        ctx = self.context
        return reverse_lookup(ip, ctx.resolver(), ctx.options.reverse_lookup_timeout, ctx.reactor)

    def _tls_context(self) -> None:
        self._holder = self.context.tls()

    def _call(self, token: int, hook: Callable[..., Any], args: Tuple[Any, ...], timed: bool = True,
              stream: Optional[MessageStream] = None) -> None:
        """
        Call C{hook(*args)} and give the dialogue its answer: at once when
        the hook answers at once (no Deferred is made then), else when its
        Deferred fires, bounded by C{hook_timeout} (kept by the connection's
        timer: no timer per call). The data hook's answer when it returns
        the Deferred of its C{stream}'s C{collect} comes straight from the
        stream, without Deferred callbacks. The "hook" observers learn how
        long it took.
        """
        if timed and self.context.observers["hook"]:
            if self._timing is None:
                self._timing = {}
            self._timing[token] = (getattr(hook, "__name__", "hook").lstrip("_"), self.context.reactor.seconds())
        try:
            result = hook(*args)
            if isinstance(result, CoroutineType):
                result = Deferred.fromCoroutine(result)
        except Exception:
            failure = Failure()
            self._answer(token, None, failure, False)
            return
        if not isinstance(result, Deferred):
            self._answer(token, result, None, False)
            return
        if result.called and not result.paused:  # fired already: answered synchronously
            result.addBoth(self._settled, token)
            return
        deadline = None
        if timed:
            timeout = self.context.options.hook_timeout  # (positive: the options check it)
            deadline = self.context.reactor.seconds() + timeout
            if not self._gone:
                self._wake_by(deadline, timeout)  # the connection's timer fires by the hook's deadline
        (self._pending if self._pending is not None else self._pending_calls())[token] = (result, deadline)
        if stream is None or not stream.answer_directly(result, self._fired, token, hook):
            result.addBoth(self._fired, token, hook)
        self.core.asked(token)

    def _settled(self, outcome: Any, token: int) -> None:
        """A hook's Deferred that had fired before it was returned: its answer, at once."""
        if isinstance(outcome, Failure):
            self._answer(token, None, outcome, False)
        else:
            self._answer(token, outcome, None, False)

    def _fired(self, outcome: Any, token: int, hook: Any) -> None:
        """A hook's pending Deferred fired (or the stream it reads ended, for a direct data hook)."""
        entry = self._pending.pop(token, None) if self._pending else None
        if (entry is not None and entry[1] == _EXPIRED and isinstance(outcome, Failure)
                and outcome.check(CancelledError)):
            # What Deferred.addTimeout makes of the cancellation.
            outcome = Failure(TimeoutError(self.context.options.hook_timeout, "Deferred"))
        if self._gone or self.core.finished:
            # Nobody to answer. A hook failing because the client left
            # (or we cancelled it) is not worth a traceback.
            if isinstance(outcome, Failure) and not outcome.check(*_QUIET_FAILURES):
                self._log_hook_failure(outcome, getattr(hook, "__name__", "hook"))
            return None
        if isinstance(outcome, Failure):
            self._answer(token, None, outcome, True)
        else:
            self._answer(token, outcome, None, True)
        if not self._driving:  # else the _run under way (a direct data hook answers from it) goes on
            self._run()
        return None

    def _pending_calls(self) -> Dict[int, Tuple[Deferred[Any] | IDelayedCall, Optional[float]]]:
        if self._pending is None:
            self._pending = {}
        return self._pending

    def _expire_hooks(self, now: float) -> Optional[float]:
        """
        Cancel every hook past its C{hook_timeout} deadline (its answer is
        then a timeout, as with C{Deferred.addTimeout}); return the next
        deadline of those still pending, or None.
        """
        pending = self._pending
        if not pending:
            return None
        expired = [token for token, (_, deadline) in pending.items()
                   if deadline is not None and deadline != _EXPIRED and deadline <= now + _EPSILON]
        for token in expired:
            entry = pending.get(token)
            if entry is not None and entry[1] != _EXPIRED:
                pending[token] = (entry[0], _EXPIRED)
                entry[0].cancel()
        deadlines = [deadline for _, deadline in pending.values() if deadline is not None and deadline != _EXPIRED]
        return min(deadlines) if deadlines else None

    def _answer(self, token: int, value: Any, failure: Optional[Failure], late: bool) -> None:
        if self._timing:
            timing = self._timing.pop(token, None)
            if timing is not None:
                self.context.notify("hook", self.session, timing[0], self.context.reactor.seconds() - timing[1])
        core = self.core
        holding = late and self._tls_timer is not None and core.hook_pending  # (only a handshake needs it)
        stream = self._stream
        if failure is None:
            core.answer(token, value, None, False, late)
        else:
            core.answer(token, None, failure.value, bool(failure.check(TimeoutError)), late, failure)
            # Its traceback's frames hold the failure again (and this connection): a cycle only
            # the cyclic collector would free. A log of it still has the text of every frame.
            failure.cleanFailure()
        if token == self._data_token:
            self._data_token = None
            if stream is not None and (not stream.has_reader or failure is not None):
                # Nobody reads the rest: skip it up to the end. This may
                # resume reading and so reach the end (and the reply) at once.
                stream.discard()
        if holding and not core.hook_pending and self._tls_timer is not None:
            self._tls_timer.restart()  # our hook held the handshake up, not the client

    # -- the message body ------------------------------------------------------------

    def _body_start(self, token: Optional[int], session: Session) -> None:
        o = self.context.options
        stream = self._stream = MessageStream(self._stream_paused, self._stream_resumed, o.size, o.reject_oversized)
        if token is None:
            stream.discard()
            return
        self._data_token = token
        self._call(token, self.context.hooks.on_data, (session, stream), stream=stream)

    def _stream_paused(self) -> None:
        self.core.pause_stream()
        self._sync_reading()

    def _stream_resumed(self) -> None:
        self.core.resume_stream()
        self._run()

    def _body_abort(self, why: str, text: str) -> None:
        stream = self._stream
        if stream is None:
            return
        if why == "bare":
            stream.abort(Failure(BareLineEnding(text)))
        elif why == "stalled":
            stream.abort(Failure(TimeoutError("the message reader stalled")))
        elif why == "abandoned":
            self._stream = None
            self._data_token = None
            if not stream.ended:
                stream.finish(Failure(MessageDiscarded("transaction abandoned")))
        elif not stream.ended:  # "lost", "timeout"
            text = "client disconnected during DATA" if why == "lost" else "timeout during DATA"
            stream.finish(Failure(ConnectionLost(text)))

    # -- timers and TLS ---------------------------------------------------------------

    def deadline_reached(self) -> None:
        """The connection's one timer (see L{Deadlines}): hooks past hook_timeout, then the client's timeouts."""
        self._timer = None
        if self._gone:
            return
        now = self.context.reactor.seconds()
        hooks = self._expire_hooks(now)
        delay = self.core.check_timeout()  # None once closed (or gone meanwhile)
        if delay is not None:
            if hooks is not None:
                delay = min(delay, max(0.0, hooks - now))
            self._wake_by(now + delay, delay)
        self._run()

    def _wake_by(self, when: float, delay: float, owner: Any = None) -> None:
        """
        Have the timer (none, or set again meanwhile by a hook's answer) wake
        C{owner} (default: the connection) by C{when}, C{delay} from now: a
        later one is moved, as C{DelayedCall.reset(delay)} would.
        """
        deadlines, timer = self.context.deadlines, self._timer
        if timer is None or timer.when > when or owner is not None:
            # The new entry first: the shared reactor call is moved, never dropped and made again.
            self._timer = deadlines.call_later(delay, self if owner is None else owner)
            if timer is not None:
                deadlines.cancel(timer)

    def _register_backpressure(self) -> None:
        # Once per connection: startTLS carries a registered producer over.
        if not self._backpressure:
            self._backpressure = True
            self.transport.registerProducer(self, True)

    # IPushProducer, registered with the transport (the connection itself: no
    # object of its own per connection). When a client pipelines commands but
    # does not read the replies, the write buffer fills and we stop reading
    # commands, so replies cannot pile up in memory.

    def pauseProducing(self) -> None:
        self.core.pause_write()
        self._sync_reading()

    def resumeProducing(self) -> None:
        self.core.resume_write()
        self._run()

    def stopProducing(self) -> None:
        pass

    def _start_handshake_timer(self) -> Any:
        from ._tls import start_handshake_timer
        try:
            timeout = self.context.tls().handshake_timeout
        except Exception:
            self.log.failure("TLS configuration failed", session_id=self.session.id)
            timeout = 30.0
        return start_handshake_timer(cast(ITransport, self.transport), timeout, self.context.reactor,
                                     hold=lambda: self.core.hook_pending, session_id=self.session.id)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is up; tell the dialogue (and so the on_secure hook)."""
        from ._tls import tls_info
        if self._tls_timer is not None and self._tls_timer.active():
            self._tls_timer.cancel()
        self._tls_timer = None
        if self._gone or self.core.finished:
            return  # already said goodbye (e.g. on_connect's 421): let the close finish
        pass_half_close_through_tls(self.transport)
        self._register_backpressure()
        self.core.tls_up(tls_info(self.transport))
        self._run()

    # -- server shutdown ------------------------------------------------------------------

    def shutdown(self) -> None:
        """
        The server is closing: an idle connection gets 421 now, one in a
        transaction when the transaction ends.
        """
        if not self._gone:
            self.core.shutdown()
            self._run()

    def force_close(self) -> None:
        """close_timeout passed: 421 and drop whatever is going on."""
        if not self._gone:
            self.core.force_close()
            self._run()

    def abort(self) -> None:
        if not self._gone:
            self._out.stop()
            self.transport.abortConnection()
