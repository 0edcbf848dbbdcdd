# -*- test-case-name: tests.test_dialogue -*-
"""
The machinery of the sans-IO dialogue: inputs, actions, replies, hook
questions, holds and timeouts. The commands live in L{_cmd_session} and
L{_cmd_mail}; L{_dialogue.Dialogue} puts them together.

The dialogue never does I/O. Its driver (L{_protocol.SMTPServerProtocol})
feeds it received bytes, hook answers, TLS-up, timer ticks and shutdown, and
after each input performs the actions it queued, in order:

  - reply bytes collect in L{CoreBase.out} (the bytes of one reply, or a
    list of several); the driver writes them in one write once it is done
    with the input (one write per read);
  - everything else is a tuple in L{CoreBase.actions}: C{(ASK, token, hook,
    args)} (call a hook, answer with L{CoreBase.answer} and the token),
    C{(CANCEL, token)}, C{(BODY_START, token, session)} (open the message
    stream and, with a token, call C{on_data} with it), C{(BODY, chunk)},
    C{(BODY_END,)}, C{(BODY_ABORT, why, text)}, C{(START_TLS,)}, C{(CLOSE,)},
    C{(ABORT,)}, C{(NOTIFY, event, args)} for observers and
    C{(LOG, level, format, fields)}.

Reading stops (L{CoreBase.holds}) while a hook that must answer first has
not, the body's reader is behind, a verdict is awaited or the client does
not read our replies; what arrives meanwhile waits in the L{CommandReader}.
Pure: no Twisted import (see C{tests/test_layering.py}); see also
C{docs/architecture.md}.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from ._actions import ActionQueue
from ._errors import format_reply
from ._outcome import LOCAL_ERROR, Outcome, hook_outcome
from ._phases import Phase, refusal
from ._reader import CommandReader
from ._session import Session

# Enum member lookups cost ~0.4 us each on Python 3.11: the hot paths compare module constants.
_GREETING = Phase.GREETING
_COMMAND = Phase.COMMAND
_TRANSACTION = Phase.TRANSACTION
_AUTH = Phase.AUTH
_DATA = Phase.DATA
_BDAT_CHUNK = Phase.BDAT_CHUNK
_BETWEEN_CHUNKS = Phase.BETWEEN_CHUNKS
_VERDICT = Phase.VERDICT
_REFUSED = Phase.REFUSED
_CLOSING = Phase.CLOSING
_CLOSED = Phase.CLOSED

__all__ = ["CoreBase", "ASK", "CANCEL", "BODY_START", "BODY", "BODY_END", "BODY_ABORT", "START_TLS", "CLOSE",
           "ABORT", "NOTIFY", "LOG", "REFUSAL_REPLY", "HOOK", "STREAM", "VERDICT", "WRITE", "ASKING"]

#: An observer event of our own, not offered by C{SMTPServer.observe}: the
#: "reply" arguments, for replies with a code of 400 or more only. The
#: operator's log (L{_oplog}) needs only those; observing every reply cost
#: it several calls per reply on every message.
REFUSAL_REPLY = "refusal reply"

# Actions
ASK, CANCEL, BODY_START, BODY, BODY_END, BODY_ABORT, START_TLS, CLOSE, ABORT, NOTIFY, LOG = range(11)

# Why reading is held; it goes on when no reason is left. Hooks can nest
# (on_connect is asked when the reverse lookup answers), so HOOK counts.
HOOK = 1  # a hook has not answered
STREAM = 2  # the body's reader is behind
VERDICT = 4  # the message ended; its final reply waits for the data hook
WRITE = 8  # the client does not read our replies
ASKING = 16  # the data hook is being called: its answer may apply to the next bytes
_OURS = HOOK | STREAM | VERDICT | ASKING  # holds that never time the client out


Done = Callable[[Any, Optional[BaseException], bool], None]


@functools.lru_cache(maxsize=16)
def _seconds_per_byte(min_data_rate: float) -> float:
    """C{1 / min_data_rate}, 0 for no rate: one float per server, not one per connection."""
    return 1.0 / min_data_rate if min_data_rate else 0.0


class CoreBase:
    """
    State and machinery shared by the command mixins.

    @ivar phase: the current L{Phase}.
    @ivar out: reply bytes not yet written: one reply's bytes (the usual
        case: no list per reply), a list of several, or C{None} when there are none.
    @ivar actions: actions not yet performed (see the module docstring).
    """

    __slots__ = (
        "options", "session", "hooks", "observers", "phase", "out", "actions", "reader", "_clock",
        "_esc", "_cache", "holds", "_hook_waits", "_waiting", "_token", "_shutdown", "_hungup",
        "_unrecognized", "_unauthenticated", "_auth_failures", "_stream_wait", "_auth", "_auth_error",
        "_auth_needed", "_deadline", "_per_byte", "_quiet", "_trusted", "tls_available", "tls_active",
        "_decoder", "_body", "_data_token", "_data_dot", "_data_bare", "_data_outcome", "byte_length",
        "refused_for_size", "_chunk_left", "_chunk_last", "_chunk_error", "_bdat_error", "_late", "_trace",
        "_asking", "_bdat_check", "_verb", "_tell",
    )

    def __init__(self, options: Any, session: Session, hooks: FrozenSet[str],
                 observers: Mapping[str, List[Any]], reply_cache: Dict[Any, bytes],
                 clock: Callable[[], float], *, tls_available: bool = False, tls_active: bool = False,
                 notify: Optional[Callable[..., None]] = None) -> None:
        """
        @param hooks: the names of the hooks the user defined.
        @param observers: event name -> observer list (only emptiness is read).
        @param notify: C{notify(event, *args)} calls the observers at once;
            without it they are queued as C{NOTIFY} actions.
        @param reply_cache: shared by the server's connections: fixed replies encoded once.
        @param clock: returns the time now, in seconds.
        @param tls_available: whether the transport can start TLS.
        @param tls_active: whether it is TLS already (implicit TLS).
        """
        self.options = options
        self._tell = notify
        self.session = session
        self.hooks = hooks
        self.observers = observers
        self._cache = reply_cache
        self._clock = clock
        self.tls_available = tls_available
        self.tls_active = tls_active
        # RFC 2033: LMTP servers always do ENHANCEDSTATUSCODES and PIPELINING.
        self._esc = options.lmtp or not options.hide_enhancedstatuscodes
        self.phase = _GREETING
        self.out: Union[None, bytes, List[bytes]] = None  # reply bytes not yet written (None: none)
        self.actions = ActionQueue()
        self.reader = CommandReader(options.max_command_length)
        #: Why reading waits (HOOK | STREAM | VERDICT | WRITE | ASKING); 0: it goes on.
        self.holds = 0
        self._hook_waits = 0
        self._waiting: Optional[Dict[int, Tuple[Done, bool]]] = None  # token -> answer handler; made on first use
        self._token = 0
        self._late = False  # the answer being handled came after its question returned
        self._trace: Any = None  # the driver's record of the failure being handled, for logs
        self._shutdown = False  # the server is closing: 421 after this transaction
        self._hungup = False  # the last reply is queued: queue nothing more
        self._unrecognized = 0
        self._unauthenticated = 0
        self._auth_failures = 0
        self._stream_wait = 0.0  # when the body's reader held us
        # AUTH: the exchange waiting for a client line, and the error to
        # give after an XOAUTH2 error challenge is acknowledged.
        self._auth: Any = None
        self._auth_error: Any = None
        self._auth_needed = "on_auth" in hooks and not options.auth_optional
        self._deadline = 0.0
        self._per_byte = _seconds_per_byte(options.min_data_rate)
        self._quiet = False
        self._trusted = False
        # The message: its decoder (DATA), whether a stream is open, the data
        # hook's token, whether the end was read, a bare CR/LF seen, and the
        # hook's answer (value, error, timed_out) once it came.
        self._decoder: Any = None
        self._body = False
        self._data_token: Optional[int] = None
        self._data_dot = False
        self._data_bare = ""  # the 550 5.6.0 text once the body is refused (bare CR/LF, NUL)
        self._bdat_check: Any = None
        # (value, error, timed_out, the driver's record of the error for logs)
        self._data_outcome: Optional[Tuple[Any, Optional[BaseException], bool, Any]] = None
        self._asking: Optional[int] = None
        # The verb the next replies answer, for the "reply" observers (CONNECT for
        # the greeting and what is said between commands, UNKNOWN for what is not a command).
        self._verb = "CONNECT"
        self.byte_length = 0
        self.refused_for_size = False  # the body went past the size limit and the server refuses that
        # BDAT: bytes left in the chunk being read, whether it is the last
        # one, and the reply owed for it when the transaction failed.
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_error: Optional[Tuple[int, str, str]] = None
        self._bdat_error: Optional[Tuple[int, str, str]] = None

    # -- inputs -------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Whether this client is in C{ignored_hosts}: no info log lines."""
        return self._quiet

    def receive(self, data: bytes) -> None:
        """Bytes arrived from the client."""
        if self._hungup:  # closing or closed (the phase may be stale after a re-entrant close)
            return
        if self._screening and data and not self._screen(data):  # type: ignore[attr-defined]
            return
        phase = self.phase
        if data:
            # A new command starts (or no rate is enforced): a whole
            # socket_timeout; else each byte of a command or body buys
            # 1/min_data_rate s only.
            reader = self.reader
            if reader._buf or reader._skip:
                idle = reader.feed(data)
            else:  # nothing buffered (the usual case): the read is the buffer, as CommandReader.feed makes it
                reader._buf = data
                idle = True
            if not self._per_byte or (idle and phase is not _DATA and phase is not _BDAT_CHUNK):
                self._deadline = self._clock() + self.options.socket_timeout
            else:
                self._deadline = min(self._deadline + len(data) * self._per_byte,
                                     self._clock() + self.options.socket_timeout)
        if not self.holds:
            self._process()

    def answer(self, token: int, value: Any, error: Optional[BaseException] = None, timed_out: bool = False,
               late: bool = False, trace: Any = None) -> None:
        """
        The hook asked with C{token} answered C{value} or failed with C{error}.

        @param timed_out: the error is the hook running past C{hook_timeout}.
        @param late: the answer came after the hook returned (a Deferred).
        @param trace: the driver's record of C{error}, passed back in log actions.
        """
        entry = self._waiting.pop(token, None) if self._waiting else None
        if entry is None or self.phase is _CLOSED:
            self.asked(token)
            return  # cancelled, or a transaction abandoned meanwhile
        done, holds = entry
        self._late, self._trace = late, trace
        try:
            done(value, error, timed_out)
        except Exception as e:
            # A bug of ours. Answered at once, it costs the command; later, in
            # a state we cannot trust, it ends the session cleanly.
            self._log("failure", "error after hook", error=e)
            if late:
                self._reply(421, "4.3.0", f"{self.options.name} Error: local error, closing")
                self._close()
                return
            self._reply(451, "4.3.0", LOCAL_ERROR)
        finally:
            self._late, self._trace = False, None
        if holds:
            self._release(HOOK, late)
        if token == self._asking:
            self.asked(token)

    def asked(self, token: int) -> None:
        """The driver called the hook of C{token} (and passed on any answer it gave at once)."""
        if token == self._asking:
            self._asking = None
            self.holds &= ~ASKING
            if not self.holds and not self._hungup and self.reader._buf:
                self._process()

    def pause_stream(self) -> None:
        """The body's reader is behind: stop reading."""
        self._stream_wait = self._clock()
        self._hold(STREAM)

    def resume_stream(self) -> None:
        """The body's reader caught up."""
        self._release(STREAM, True)

    def pause_write(self) -> None:
        """The client does not read our replies: stop reading its commands."""
        self._hold(WRITE)

    def resume_write(self) -> None:
        """The client read its replies."""
        self._release(WRITE, True)

    def connection_lost(self) -> None:
        """The connection is gone: stop the body and every pending question."""
        self._let_go()  # type: ignore[attr-defined]
        self.phase = _CLOSED
        self._hungup = True
        if self._body:
            self.actions.append((BODY_ABORT, "lost", ""))
        self._cancel_all()

    def shutdown(self) -> None:
        """The server is closing: 421 now if idle, else when the transaction ends."""
        if self._hungup:
            return
        self._shutdown = True
        self._shutdown_if_idle()

    def force_close(self) -> None:
        """C{close_timeout} passed: 421 and drop whatever is going on."""
        if not self._hungup:
            self._say_shutting_down()

    def check_timeout(self) -> Optional[float]:
        """
        The timer fired: time the client out, or say when to check again.

        @return: seconds until the next check, or C{None} (closed or closing).
        """
        if self._hungup:
            return None
        now = self._clock()
        o = self.options
        if (self.holds & _OURS == STREAM and self._body and self._data_outcome is not None
                and now - self._stream_wait >= o.hook_timeout):
            # The hook answered but left a reader that stopped reading.
            self._log("warn", "message reader stalled for {timeout}s", timeout=o.hook_timeout)
            self._data_outcome = (None, TimeoutError("the message reader stalled"), True, self._data_outcome[3])
            self.actions.append((BODY_ABORT, "stalled", ""))
        ours = self.holds & _OURS
        if ours or now < self._deadline:
            # Waiting on our own hooks or reader never times the client out.
            return o.socket_timeout if ours else self._deadline - now
        self._log("info", "timeout after {timeout}s", timeout=o.socket_timeout)
        self._refused("timeout")
        if self._body:
            self.actions.append((BODY_ABORT, "timeout", ""))
        if self.holds & WRITE:  # it does not read: a 421 would never arrive
            self.phase = _CLOSING
            self._hungup = True
            self._cancel_all()
            self.actions.append((ABORT,))
            return None
        self._unprompted()
        self._reply(421, "4.4.2", f"{o.name} Error: timeout exceeded")
        self._close()
        return None

    def _unprompted(self) -> None:
        """
        A 421 said on our own: when it is the client's turn to send a command, it
        answers none (not a DATA answered 250 already, then counted refused).
        Between two BDAT chunks it cuts the message short: BDAT's answer, as
        mid-chunk or mid-DATA (whatever command came last, a NOOP say).
        """
        if self.holds & _OURS:
            return
        phase = self.phase
        if phase is _COMMAND or phase is _TRANSACTION or phase is _REFUSED:
            self._verb = "CONNECT"
        elif phase is _BETWEEN_CHUNKS:
            self._verb = "BDAT"

    @property
    def hook_pending(self) -> bool:
        """Whether a hook that holds the dialogue has not answered."""
        return self._hook_waits > 0

    @property
    def finished(self) -> bool:
        """Whether the last reply is queued (or the connection gone): nobody to answer."""
        return self._hungup

    def take_output(self) -> bytes:
        """The reply bytes to write now, in one write."""
        out, self.out = self.out, None
        if out is None:
            return b""
        return out if isinstance(out, bytes) else b"".join(out)

    def _auth_required_text(self) -> str:
        if self.options.needs_upgrade and not self.session.secure:
            return "Error: must issue a STARTTLS command first"
        return str(self.options.auth_required_message)

    def _phase_refused(self, verb: str) -> bool:
        """Refuse C{verb} if L{_phases.COMMANDS} does not allow it in this phase."""
        refused = refusal(verb, self.phase)
        if refused is None:
            return False
        self._reply(*refused)
        if self.phase is _REFUSED:  # a client that will not QUIT is bounded like one sending junk
            self._count_unrecognized()
        return True

    def _unrecognized_command(self, verb: bytes) -> None:
        if not verb:
            self._reply(500, "5.5.2", "Error: bad syntax")
        else:
            self._reply(500, "5.5.2", "Error: command not recognized")
        self._count_unrecognized()

    def _count_unrecognized(self) -> None:
        self._unrecognized += 1
        limit = self.options.max_unrecognized_commands
        if limit and self._unrecognized >= limit:
            self._close_over_limit("unrecognized_commands", "unrecognized commands")

    # -- replies and actions ----------------------------------------------------------

    def _refused(self, reason: str) -> None:
        """Tell the "refused" observers why this connection is being closed."""
        self._refusal(reason, self.session)

    def _refusal(self, reason: str, session: Any) -> None:
        """
        Tell the "refused" observers (log, metrics) why this connection is
        closed; C{session} is C{None} for a client never admitted. Once: a
        connection waiting for QUIT after its refused greeting was counted then.
        """
        if self.phase is not _REFUSED:
            self._notify("refused", reason, self.session.remote_address, session)

    def _close_over_limit(self, reason: str, what: str) -> None:
        """A per-connection limit was reached: tell the "refused" observers, say 421 "too many C{what}", close."""
        self._refused(reason)
        self._reply(421, "4.7.0", f"{self.options.name} Error: too many {what}")
        self._close()

    def _reply(self, code: int, enhanced: Optional[str], text: str, cache: bool = True) -> None:
        """Queue a reply; fixed texts (C{cache}) are encoded once per server."""
        if self.observers["reply"]:
            tell = self._tell or self._notify  # _tell at once: one *args call less per reply
            tell("reply", self.session, self._verb, code, enhanced, text)
        if code >= 400 and self.observers.get(REFUSAL_REPLY):
            self._notify(REFUSAL_REPLY, self.session, self._verb, code, enhanced, text)
        if self._hungup:
            return
        if not cache:
            self._emit(format_reply(code, text.split("\n"), enhanced if self._esc else None))
            return
        key = (code, enhanced, text)
        data = self._cache.get(key)
        if data is None:
            data = self._cache[key] = format_reply(code, text.split("\n"), enhanced if self._esc else None)
        out = self.out  # _emit, inline: this is every fixed reply's path
        if out is None:
            self.out = data
        elif isinstance(out, bytes):
            self.out = [out, data]
        else:
            out.append(data)

    def _emit(self, data: bytes) -> None:
        """Queue reply bytes (a list only for a second reply: an idle connection keeps none)."""
        out = self.out
        if out is None:
            self.out = data
        elif isinstance(out, bytes):
            self.out = [out, data]
        else:
            out.append(data)

    def _reply_lines(self, code: int, enhanced: Optional[str], lines: Tuple[str, ...], greeting: bool) -> None:
        """Queue a reply with a hook's text; the enhanced code is derived when not given."""
        if self.observers["reply"]:
            self._notify("reply", self.session, self._verb, code, enhanced, "\n".join(lines))
        if code >= 400 and self.observers.get(REFUSAL_REPLY):
            self._notify(REFUSAL_REPLY, self.session, self._verb, code, enhanced, "\n".join(lines))
        if self._hungup:
            return
        if greeting and code < 400:
            enhanced = None
        elif enhanced is None:
            enhanced = f"{str(code)[0]}.0.0" if code >= 400 or code < 300 else None
        self._emit(format_reply(code, lines, enhanced if self._esc else None))

    def _send(self, outcome: Outcome) -> bool:
        """Reply with an outcome (logging what needs it); return whether it was a success."""
        if outcome.problem == "timeout":
            self._log("warn", "hook timed out after {timeout}s", timeout=self.options.hook_timeout)
        elif outcome.problem is not None:
            self._log("failure", "hook failed", error=self._trace or outcome.error)
        if outcome.fixed:
            self._reply(outcome.code, outcome.enhanced, "\n".join(outcome.lines))
        else:
            self._reply_lines(outcome.code, outcome.enhanced, outcome.lines, outcome.greeting)
        return outcome.ok

    def _answered(self, value: Any, error: Optional[BaseException], timed_out: bool, code: int, enhanced: str,
                  text: str) -> bool:
        """
        Reply to a hook's answer (see L{hook_outcome}) with C{code enhanced
        text} as the default; return whether it accepted. The default answer
        (C{None}) is the hot path and skips building an L{Outcome}.
        """
        if value is None and error is None:
            self._reply(code, enhanced, text)
            return True
        return self._send(hook_outcome(value, error, timed_out, code, enhanced, text, name=self.options.name))

    def _log(self, level: str, fmt: str, **fields: Any) -> None:
        """Queue a log event; C{error} (exception or the driver's trace) asks for a traceback."""
        self.actions.append((LOG, level, fmt, fields))

    def _notify(self, event: str, *args: Any) -> None:
        if self.observers[event]:
            if self._tell is not None:
                self._tell(event, *args)
            else:
                self.actions.append((NOTIFY, event, args))

    def _ask(self, hook: str, args: Tuple[Any, ...], done: Done, hold: bool = True) -> int:
        """
        Ask C{hook(*args)}; C{done(value, error, timed_out)} gets the answer.
        With C{hold}, no command is read until it answers (replies stay in
        command order).
        """
        self._token += 1
        token = self._token
        self._waiting_for()[token] = (done, hold)
        if hold:
            self._hold(HOOK)
        self.actions.append((ASK, token, hook, args))
        return token

    def _waiting_for(self) -> Dict[int, Tuple[Done, bool]]:
        if self._waiting is None:
            self._waiting = {}
        return self._waiting

    def _cancel(self, token: Optional[int]) -> None:
        if token is not None and self._waiting and self._waiting.pop(token, None) is not None:
            self.actions.append((CANCEL, token))

    def _cancel_all(self) -> None:
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, None
        for token in waiting:
            self.actions.append((CANCEL, token))

    def _close(self) -> None:
        """Send what is queued and close; nothing more is read or answered."""
        self.phase = _CLOSING
        self._cancel_all()
        self.reader.discard()
        self.actions.append((CLOSE,))
        self._hungup = True

    # -- holds ----------------------------------------------------------------------

    def _hold(self, why: int) -> None:
        self.holds |= why
        if why == HOOK:
            self._hook_waits += 1

    def _release(self, why: int, late: bool) -> None:
        """
        C{why} no longer holds reading. C{late} says whether reading was
        really paused (a hook answering at once never paused it).
        """
        if not self.holds & why:
            return
        if why == HOOK:
            self._hook_waits -= 1
            if self._hook_waits:
                return
        self.holds &= ~why
        if why == WRITE:
            # The client read its replies: it gets a whole timeout again.
            self._deadline = max(self._deadline, self._clock() + self.options.socket_timeout)
        if self.holds or self._hungup:
            return
        if late:
            if self._shutdown and self._shutdown_if_idle():
                return
            self._deadline = self._clock() + self.options.socket_timeout
        if self.reader._buf:  # (nothing buffered: nothing to process)
            self._process()

    # -- lifecycle ------------------------------------------------------------------

    def _shutdown_if_idle(self) -> bool:
        """During shutdown, a client between transactions gets 421 and is closed."""
        if not self._shutdown or self._hungup:
            return False
        if self.session.envelope.mail_from is not None or self._body or self.holds:
            return False
        self._say_shutting_down()
        return True

    def _say_shutting_down(self) -> None:
        self._unprompted()
        self._reply(421, "4.3.2", f"{self.options.name} Service shutting down")
        self._close()

    # Provided by the command mixins (and the reading loop by _dispatch).
    def _process(self) -> None: raise NotImplementedError  # noqa: E704
    def _reset_transaction(self) -> None: raise NotImplementedError  # noqa: E704
    def _connect_hook(self) -> None: raise NotImplementedError  # noqa: E704
    def _auth_step(self, exchange: Any, line: Optional[bytes]) -> None: raise NotImplementedError  # noqa: E704
    def _body_bytes(self, data: bytes) -> None: raise NotImplementedError  # noqa: E704
    def _chunk_bytes(self, data: bytes) -> None: raise NotImplementedError  # noqa: E704

