# -*- test-case-name: tests.test_protocol -*-
"""
The SMTP dialogue: one L{SMTPServerProtocol} per connection.

It parses and sequences commands, calls the user's hooks and frames replies;
it decides no policy itself. Three rules shape it:

  - Replies go out in command order. While a hook has not answered, reading
    pauses (C{LineReceiver.pauseProducing}), so pipelined commands wait in
    the line buffer instead of overtaking it.
  - Replies produced while handling one read are written with one write.
  - DATA is read in raw mode, chunk by chunk, through L{DotDecoder} into a
    L{MessageStream}; the final reply waits for both the terminating dot and
    the data hook.
"""

from __future__ import annotations

import ipaddress
import os
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport, ITLSTransport
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ._authgate import CLOSE, REFUSE, unauthenticated_command
from ._commands import (CommandError, parse_bdat, parse_envid, parse_helo, parse_notify, parse_orcpt, parse_params,
                        parse_path_argument)
from ._data import BareLineEnding, BodyCheck, DotDecoder, MessageDiscarded, MessageStream
from ._errors import Reply, SMTPError, format_reply
from ._logging import SessionLogger
from ._rdns import address_literal, reverse_lookup
from ._xclient import (TEMPUNAVAIL, UNAVAILABLE, XCLIENT_ATTRIBUTES, XFORWARD_ATTRIBUTES, XClientError,
                       forwarded_client, parse_xclient, parse_xforward)
from ._sasl import Challenge, Exchange, SASLAuthFailed, UnknownMechanism, start_mechanism
from ._session import Address, Envelope, Session

if TYPE_CHECKING:
    from ._server import SMTPServer

__all__ = ["SMTPServerProtocol"]

# Why reading is paused; reading resumes when no reason is left. Hooks can
# nest (on_connect runs when the reverse lookup answers), so _HOOK counts.
_HOOK = 1  # a hook has not answered
_STREAM = 2  # the body's reader is behind
_VERDICT = 4  # the message ended; its final reply waits for the data hook
_WRITE = 8  # the client does not read our replies: the transport's buffer is full
_OURS = _HOOK | _STREAM | _VERDICT  # waits that never time the client out

_LOCAL_ERROR = "Requested action aborted: local error in processing"


def _ip(text: str) -> Any:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: match them as IPv4.
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped if mapped is not None else addr


def _address_parts(address: Any) -> Tuple[str, int]:
    host = getattr(address, "host", None)
    if host is None:  # UNIX sockets and friends
        return "", 0
    return str(host), int(getattr(address, "port", 0) or 0)


@implementer(IPushProducer)
class _ReplyBackpressure:
    """
    Registered with the transport: when a client pipelines commands but does
    not read the replies, the write buffer fills and we stop reading
    commands, so replies cannot pile up in memory.
    """

    __slots__ = ("_proto",)

    def __init__(self, proto: "SMTPServerProtocol") -> None:
        self._proto = proto

    def pauseProducing(self) -> None:
        self._proto._pause(_WRITE)

    def resumeProducing(self) -> None:
        self._proto._resume(_WRITE)

    def stopProducing(self) -> None:
        pass


@implementer(IHandshakeListener)
class SMTPServerProtocol(LineReceiver):
    """
    One SMTP (or LMTP) connection. Built by L{txsmtpsrv.SMTPServer}; users
    never subclass it, they pass hooks to the server.
    """

    delimiter = b"\n"  # commands end on LF; the CR is stripped (lenient like Postfix)
    log = SessionLogger()  # the session id goes into every line's text
    #: Command verb (upper-case bytes) -> handler; built from the _cmd_* methods below.
    _handlers: Dict[bytes, Callable[..., None]]

    # Thousands of idle connections must stay cheap: our state lives in slots.
    __slots__ = (
        "server", "options", "session", "_clock", "_esc", "_out", "_pauses", "_hook_waits", "_pending",
        "_closing", "_hungup", "_shutdown", "_backpressure", "_auth_failures", "_stream_wait", "_gone", "_discard_line", "_line_rest", "_unrecognized",
        "_unauthenticated", "_auth", "_auth_error", "_auth_needed", "_timer", "_tls_timer", "_deadline",
        "_per_byte", "_quiet", "_trusted", "_stream", "_decoder", "_data_dot", "_data_bare", "_data_hook",
        "_data_outcome", "_chunk_left", "_chunk_last", "_chunk_error", "_bdat_error", "_pre_xforward",
        "_bdat_check", "_verb",
    )

    def __init__(self, server: "SMTPServer") -> None:
        self.server = server
        options = server.options
        self.options = options
        self.MAX_LENGTH = options.max_command_length
        self._clock = server.reactor
        # RFC 2033: LMTP servers always do ENHANCEDSTATUSCODES and PIPELINING.
        self._esc = options.lmtp or not options.hide_enhancedstatuscodes
        self._out: List[bytes] = []
        self._pauses = 0
        self._hook_waits = 0
        self._pending: List[Deferred[Any]] = []
        self._closing = False  # QUIT or 421 sent: ignore the rest
        self._hungup = False  # the final reply is out: write nothing more
        self._backpressure = False  # _ReplyBackpressure registered with the transport
        self._shutdown = False  # the server is closing: 421 after this transaction
        self._gone = False  # connectionLost ran
        self._discard_line = False  # skipping the tail of an over-long line
        self._line_rest = b""  # commands after an over-long line, to parse again
        self._unrecognized = 0
        self._unauthenticated = 0
        self._auth_failures = 0
        self._stream_wait = 0.0  # when the body's reader paused us
        # AUTH: the exchange waiting for a client line, and the error to
        # give after an XOAUTH2 error challenge is acknowledged.
        self._auth: Optional[Exchange] = None
        self._auth_error: Optional[SMTPError] = None
        self._auth_needed = server._hooks.on_auth is not None and not options.auth_optional
        self._timer: Any = None
        self._tls_timer: Any = None
        self._deadline = 0.0
        self._per_byte = 1.0 / options.min_data_rate if options.min_data_rate else 0.0
        # DATA state
        self._stream: Optional[MessageStream] = None
        self._decoder: Optional[DotDecoder] = None
        self._data_dot = False
        self._data_bare = ""  # the 550 5.6.0 text once the body is refused
        self._data_hook: Optional[Deferred[Any]] = None
        self._bdat_check: Optional[BodyCheck] = None
        # BDAT state: bytes left in the chunk being read, whether it is the
        # last one, and the reply owed for it when the transaction failed.
        self._chunk_left: Optional[int] = None
        self._chunk_last = False
        self._chunk_error: Optional[Tuple[int, str, str]] = None
        self._bdat_error: Optional[Tuple[int, str, str]] = None
        self._data_outcome: Optional[Tuple[Any, Optional[Failure]]] = None
        # (remote_address, client_hostname) before an XFORWARD replaced them.
        self._pre_xforward: Optional[Tuple[str, str]] = None
        #: The verb the next replies answer, for the "reply" observers
        #: (CONNECT for the greeting, UNKNOWN for what is not a command).
        self._verb = "CONNECT"
        self.session: Session

    # -- connection lifecycle ----------------------------------------------

    def connectionMade(self) -> None:
        peer = _address_parts(self.transport.getPeer())
        host = _address_parts(self.transport.getHost())
        sid = os.urandom(8).hex()
        self.session = Session(sid, host[0], host[1], peer[0], peer[1], lmtp=self.options.lmtp)
        self.session.secure = self.options.secured
        self.server._connected(self)
        if ISSLTransport.providedBy(self.transport):  # implicit TLS: the handshake is under way
            self._tls_timer = self._start_handshake_timer()
        else:
            # Under TLS only once the handshake is done: before, the TLS layer
            # pauses its producer while it buffers our greeting.
            self._register_backpressure()
        now = self._clock.seconds()
        self._deadline = now + self.options.socket_timeout
        self._timer = self._clock.callLater(self.options.socket_timeout, self._check_timeout)
        ip = peer[0]
        # Behind our PROXY wrapper getPeer() is already the real client.
        self.session.proxy = getattr(self.transport, "proxy_info", None)
        o = self.options
        addr = _ip(ip)
        self._quiet = addr is not None and any(addr in net for net in o.ignored_hosts)
        self._trusted = (o.use_xclient or o.use_xforward) and addr is not None and any(
            addr in net for net in o.xclient_trusted)
        if ip:
            self.session.client_hostname = f"[{addr}]" if addr is not None and addr.version == 4 \
                else address_literal(ip)
        if not self._quiet:
            self.log.info("connection from {peer}", session_id=sid, remote_address=ip, remote_port=peer[1],
                          peer=f"{ip}:{peer[1]}" if ip else "a local socket")
        self.server._notify("connect", self.session)
        if not ip or o.disable_reverse_lookup:
            self._connect_hook()
        elif addr is not None and addr.is_loopback:
            self._lookup_done("localhost", None)  # a PTR query for loopback tells nothing
        else:
            self._invoke(self._reverse_lookup, (ip,), self._lookup_done, pause=True)
        if self._out:
            self._flush()

    def _reverse_lookup(self, ip: str) -> Any:
        return reverse_lookup(ip, self.server.resolver, self.options.reverse_lookup_timeout, self._clock)

    def _lookup_done(self, name: Any, failure: Optional[Failure]) -> None:
        if name:
            self.session.client_hostname = name
        self._connect_hook()

    def _connect_hook(self) -> None:
        hook = self.server._hooks.on_connect
        if hook is None:
            self._greet()
        else:
            self._invoke(hook, (self.session,), self._connect_done, pause=True)

    def _connect_done(self, value: Any, failure: Optional[Failure]) -> None:
        if failure is None and value is None:
            self._greet()
        # A Reply is a custom greeting; a rejection (RFC 5321 3.1: 554) closes.
        elif not self._send_outcome(value, failure, 220, "", "", greeting=True):
            self._refused("connect_hook")
            self._close()

    def _greet(self) -> None:
        o = self.options
        self._reply(220, None, f"{o.name} {'LMTP' if o.lmtp else 'ESMTP'}" + (f" {o.banner}" if o.banner else ""))

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._gone = True
        if self._tls_timer is not None and self.server._observers["tls"]:  # the handshake never finished
            why = reason.getErrorMessage() if reason is not None else "connection lost"
            self.server._notify("tls", self.session, why)
        for timer in (self._timer, self._tls_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._tls_timer = None
        if self._stream is not None and not self._stream.ended:
            self._stream.finish(Failure(ConnectionLost("client disconnected during DATA")))
        pending, self._pending = self._pending, []
        for d in pending:
            d.cancel()
        self.server._disconnected(self)
        self.server._notify("disconnect", self.session)
        hook = self.server._hooks.on_close
        if hook is not None:
            try:
                result = hook(self.session)
                if isinstance(result, CoroutineType):
                    result = Deferred.fromCoroutine(result)
                if isinstance(result, Deferred):
                    result.addErrback(self._log_hook_failure, "on_close")
            except Exception:
                self.log.failure("hook on_close failed", session_id=self.session.id)

    def _log_hook_failure(self, failure: Failure, name: str) -> None:
        self.log.failure("hook {hook} failed", failure, hook=name, session_id=self.session.id)

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._busyReceiving:  # setLineMode(rest) from rawDataReceived
            LineReceiver.dataReceived(self, data)
            return
        if self._closing:
            return
        if data:
            now = self._clock.seconds()
            if not self._per_byte or (self.line_mode and not self._buffer and not self._discard_line):
                # A new command starts (or no rate is enforced): a whole socket_timeout.
                self._deadline = now + self.options.socket_timeout
            else:  # each byte of a command or body buys 1/min_data_rate s only
                self._deadline = min(self._deadline + len(data) * self._per_byte,
                                     now + self.options.socket_timeout)
        while True:
            if self._discard_line and self.line_mode:
                nl = data.find(b"\n")
                if nl < 0:
                    break
                data, self._discard_line = data[nl + 1:], False
            LineReceiver.dataReceived(self, data)
            if not self._line_rest or self._closing:
                break
            data, self._line_rest = self._line_rest, b""
        if self._out:
            self._flush()

    def lineLengthExceeded(self, rest: bytes) -> None:
        nl = rest.find(b"\n")
        if nl < 0:
            self._discard_line = True
        else:
            self._line_rest = rest[nl + 1:]
        if self._auth is None:
            self._verb = "UNKNOWN"
        else:  # RFC 4954 6: the exchange ends
            self._auth = self._auth_error = None
            self._reply(500, "5.5.6", "Error: authentication exchange line is too long")
            return
        self._reply(500, "5.5.2", "Error: line too long")
        self._count_unrecognized()

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if line[-1:] == b"\r":
            line = line[:-1]
        if self._auth is not None:
            # A SASL response: never dispatched, observed or logged.
            exchange, self._auth = self._auth, None
            self._auth_step(exchange, line)
            return
        sp = line.find(b" ")
        verb = (line if sp < 0 else line[:sp]).upper()
        handler = self._handlers.get(verb)
        if handler is None:
            self._verb = "UNKNOWN"
            self._unrecognized_command(verb)
            return
        name = verb.decode("ascii")  # the table's keys are ASCII
        self._verb = name
        if name in self.options.disabled_commands:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        if self._auth_needed and self.session.user is None:
            self._unauthenticated, verdict = unauthenticated_command(
                name, self._unauthenticated, self.options.max_allowed_unauthenticated_commands)
            if verdict == CLOSE:
                self._refused("unauthenticated_commands")
                self._reply(421, "4.7.0", f"{self.options.name} Error: too many unauthenticated commands")
                self._close()
                return
            if verdict == REFUSE:  # RFC 4954 6
                self._reply(530, "5.7.0", self._auth_required_text())
                return
        try:
            arg = line[sp + 1:].decode("utf-8").strip(" ") if sp >= 0 else ""
        except UnicodeDecodeError:
            self._reply(501, "5.5.2", "Error: command is not valid UTF-8")
            return
        if self._shutdown and self._shutdown_if_idle():
            return
        if self.server._observers["command"]:
            # AUTH's argument may hold a password (initial response): not shown.
            self.server._notify("command", self.session, name, arg.split(" ", 1)[0] if name == "AUTH" else arg)
        try:
            handler(self, arg)
        except Exception:
            # A bug of ours must cost one command, not the connection.
            self.log.failure("error handling {verb}", verb=name, session_id=self.session.id)
            self._reply(451, "4.3.0", _LOCAL_ERROR)

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
            self._refused("unrecognized_commands")
            self._reply(421, "4.7.0", f"{self.options.name} Error: too many unrecognized commands")
            self._close()

    # -- writing and flow control --------------------------------------------

    def _refused(self, reason: str) -> None:
        """Tell the "refused" observers why this connection is being closed."""
        self.server._notify("refused", reason, self.session.remote_address, self.session)

    def _reply(self, code: int, enhanced: Optional[str], text: str, cache: bool = True) -> None:
        """Queue a reply; fixed texts (C{cache}) are encoded once per server."""
        if self.server._observers["reply"]:
            self.server._notify("reply", self.session, self._verb, code, enhanced, text)
        if not cache:
            self._out.append(format_reply(code, text.split("\n"), enhanced if self._esc else None))
            return
        key = (code, enhanced, text)
        replies = self.server._reply_cache
        data = replies.get(key)
        if data is None:
            data = replies[key] = format_reply(code, text.split("\n"), enhanced if self._esc else None)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._gone or self._hungup:
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _close(self) -> None:
        """Send what is queued and close; nothing more is read or answered."""
        self._closing = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        pending, self._pending = self._pending, []
        for d in pending:
            d.cancel()
        self.clearLineBuffer()
        if self._out:
            self._flush()
        if not self._gone:
            # A registered producer would hold the close back until it leaves.
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        self._hungup = True  # whatever happens later is not sent

    def _register_backpressure(self) -> None:
        # Once per connection: startTLS carries a registered producer over.
        if not self._backpressure:
            self._backpressure = True
            self.transport.registerProducer(_ReplyBackpressure(self), True)

    def _pause(self, why: int) -> None:
        if not self._pauses and not self._gone:
            self.pauseProducing()
        self._pauses |= why
        if why == _HOOK:
            self._hook_waits += 1

    def _resume(self, why: int) -> None:
        if not self._pauses & why:
            return
        if why == _HOOK:
            self._hook_waits -= 1
            if self._hook_waits:
                return
        self._pauses &= ~why
        if why == _WRITE:
            # The client read its replies: it gets a whole timeout again.
            self._deadline = max(self._deadline, self._clock.seconds() + self.options.socket_timeout)
        if why == _HOOK and self._tls_timer is not None:
            self._tls_timer.restart()  # our hook held the handshake up, not the client
        if not self._pauses and not self._gone and not self._closing:
            if self._shutdown_if_idle():
                return
            self._deadline = self._clock.seconds() + self.options.socket_timeout
            self.resumeProducing()  # replays buffered lines via dataReceived(b"")

    def _check_timeout(self) -> None:
        if self._gone or self._closing:
            return
        now = self._clock.seconds()
        timeout = self.options.socket_timeout
        stream = self._stream
        if (self._pauses & _OURS == _STREAM and stream is not None and self._data_outcome is not None
                and now - self._stream_wait >= self.options.hook_timeout):
            # The hook answered but left a reader that stopped reading.
            self.log.warn("message reader stalled for {timeout}s", timeout=self.options.hook_timeout,
                          session_id=self.session.id)
            self._data_outcome = (None, Failure(TimeoutError("the message reader stalled")))
            stream.abort(Failure(TimeoutError("the message reader stalled")))
        ours = self._pauses & _OURS
        if ours or now < self._deadline:
            # Waiting on our own hooks or reader never times the client out.
            delay = timeout if ours else self._deadline - now
            self._timer = self._clock.callLater(delay, self._check_timeout)
            return
        self._timer = None
        self.log.info("timeout after {timeout}s", timeout=timeout, session_id=self.session.id)
        self._refused("timeout")
        if self._stream is not None and not self._stream.ended:
            self._stream.finish(Failure(ConnectionLost("timeout during DATA")))
        if self._pauses & _WRITE:  # it does not read: a 421 would never arrive
            self._closing = True
            self.transport.abortConnection()
            return
        self._reply(421, "4.4.2", f"{self.options.name} Error: timeout exceeded")
        self._close()

    # -- hooks -----------------------------------------------------------------

    def _invoke(self, hook: Callable[..., Any], args: Tuple[Any, ...],
                done: Callable[[Any, Optional[Failure]], None], pause: bool) -> Optional[Deferred[Any]]:
        """
        Call C{hook(*args)} and pass its outcome to C{done(value, failure)},
        at once when the hook answers at once (no Deferred is made then).

        A Deferred or coroutine result is bounded by C{hook_timeout} and
        cancelled on disconnect; with C{pause}, reading stops until it fires,
        which keeps pipelined replies in command order.

        @return: the hook's Deferred while it is pending, else C{None}.
        """
        if self.server._observers["hook"]:
            done = self._timed(hook, done)
        try:
            result = hook(*args)
            if isinstance(result, CoroutineType):
                result = Deferred.fromCoroutine(result)
        except Exception:
            done(None, Failure())
            return None
        if not isinstance(result, Deferred):
            done(result, None)
            return None
        waiting = answered = False

        def fired(outcome: Any) -> None:
            nonlocal answered
            answered = True
            if waiting:
                if result in self._pending:  # connectionLost empties the list
                    self._pending.remove(result)
                if self._gone or self._closing:
                    # Nobody to answer. A hook failing because the client left
                    # (or we cancelled it) is not worth a traceback.
                    if isinstance(outcome, Failure) and not outcome.check(
                            CancelledError, ConnectionLost, ConnectionDone, MessageDiscarded):
                        self._log_hook_failure(outcome, getattr(hook, "__name__", "hook"))
                    return None
            try:
                if isinstance(outcome, Failure):
                    done(None, outcome)
                else:
                    done(outcome, None)
            except Exception:
                if not waiting:
                    raise  # synchronous: the command's own safety net answers
                # Our own bug, in a state we cannot trust: end the session cleanly.
                self.log.failure("error after hook {hook}", hook=getattr(hook, "__name__", "hook"),
                                 session_id=self.session.id)
                self._reply(421, "4.3.0", f"{self.options.name} Error: local error, closing")
                self._close()
                return None
            if waiting and not self._gone:
                if pause:
                    self._resume(_HOOK)  # also says 421 when shutting down and now idle
                if self._out and not self._busyReceiving:
                    self._flush()
            return None

        if not result.called or result.paused:  # pending, or waiting on another Deferred
            result.addTimeout(self.options.hook_timeout, self._clock)
        result.addBoth(fired)
        if answered:
            return None  # fired already: done ran synchronously
        waiting = True
        self._pending.append(result)
        if pause:
            self._pause(_HOOK)
        return result

    def _timed(self, hook: Callable[..., Any],
               done: Callable[[Any, Optional[Failure]], None]) -> Callable[[Any, Optional[Failure]], None]:
        """C{done}, first telling the "hook" observers how long C{hook} took."""
        started = self._clock.seconds()
        name = getattr(hook, "__name__", "hook").lstrip("_")

        def timed(value: Any, failure: Optional[Failure]) -> None:
            self.server._notify("hook", self.session, name, self._clock.seconds() - started)
            done(value, failure)

        return timed

    def _send_outcome(self, value: Any, failure: Optional[Failure], code: int, enhanced: str,
                      text: str, greeting: bool = False, cache: bool = True) -> bool:
        """
        Reply with a hook's outcome: its Reply, its SMTPError, or the default
        C{code enhanced text}. Other errors become 451 4.3.0 and are logged.

        @return: whether the outcome was a success.
        """
        if failure is None:
            if value is None:
                self._reply(code, enhanced, text, cache)
                return True
            if isinstance(value, Reply):
                enh = value.enhanced
                if enh is None and enhanced and enhanced[0] == str(value.code)[0]:
                    enh = enhanced  # the command's own code, e.g. 2.1.5 for RCPT
                self._reply_obj(value.code, enh, value.lines, greeting)
                return value.code < 400
            failure = Failure(TypeError(f"hook returned {value!r}; expected None or a Reply"))
        err = failure.value
        if isinstance(err, SMTPError):
            self._reply_obj(err.code, err.enhanced, err.lines, greeting)
            return False
        if isinstance(err, TimeoutError):
            self.log.warn("hook timed out after {timeout}s", timeout=self.options.hook_timeout,
                          session_id=self.session.id)
        else:
            self.log.failure("hook failed", failure, session_id=self.session.id)
        if greeting:  # RFC 5321 4.3.2: only 220, 421 or 554 may greet
            self._reply(421, "4.3.0", f"{self.options.name} Service not available, try again later")
        else:
            self._reply(451, "4.3.0", _LOCAL_ERROR)
        return False

    def _reply_obj(self, code: int, enhanced: Optional[str], lines: Tuple[str, ...], greeting: bool) -> None:
        if self.server._observers["reply"]:
            self.server._notify("reply", self.session, self._verb, code, enhanced, "\n".join(lines))
        if greeting and code < 400:
            enhanced = None
        elif enhanced is None:
            enhanced = f"{str(code)[0]}.0.0" if code >= 400 or code < 300 else None
        self._out.append(format_reply(code, lines, enhanced if self._esc else None))

    # -- commands -----------------------------------------------------------------

    def _cmd_EHLO(self, arg: str) -> None:
        self._hello("EHLO", arg)

    def _cmd_HELO(self, arg: str) -> None:
        self._hello("HELO", arg)

    def _cmd_LHLO(self, arg: str) -> None:
        self._hello("LHLO", arg)

    def _hello(self, command: str, arg: str) -> None:
        if self.options.lmtp != (command == "LHLO"):
            if command == "LHLO":
                self._unrecognized_command(b"LHLO")
            else:
                self._reply(500, "5.5.1", "Error: this is an LMTP server, send LHLO")
            return
        try:
            hostname = parse_helo(arg, command)
        except CommandError as e:
            self._reply(e.code, e.enhanced, e.text, cache=False)
            return
        hook = self.server._hooks.on_helo

        def done(value: Any, failure: Optional[Failure]) -> None:
            custom = failure is None and isinstance(value, Reply) and value.code < 400
            if not custom and (failure is not None or value is not None):
                self._send_outcome(value, failure, 250, "", "")
                return
            self._reset_transaction()  # RFC 5321 4.1.4: like RSET
            s = self.session
            s.host_name_appears_as = hostname
            s.opening_command = command
            o = self.options
            if custom:  # a Reply from on_helo replaces the greeting line(s)
                lines = list(value.lines)
            else:
                lines = [o.helo_response.format(name=o.name, client_hostname=s.client_hostname,
                                                remote_address=s.remote_address, helo=hostname)]
            if command != "HELO":
                lines.extend(self._extensions())
            if self.server._observers["reply"]:
                self.server._notify("reply", s, command, 250, None, lines[0])
            self._out.append(format_reply(250, lines, None))
            self.server._notify("helo", s, hostname)

        if hook is None:
            done(None, None)
        else:
            self._invoke(hook, (self.session, hostname), done, pause=True)

    def _extensions(self) -> List[str]:
        o = self.options
        ext = []
        if o.lmtp or not o.hide_pipelining:
            ext.append("PIPELINING")
        if not o.hide_8bitmime:
            ext.append("8BITMIME")
        if not o.hide_smtputf8:
            ext.append("SMTPUTF8")
        if self._esc:
            ext.append("ENHANCEDSTATUSCODES")
        if not o.hide_chunking:
            ext.append("CHUNKING")
            ext.append("BINARYMIME")
        if not o.hide_dsn:
            ext.append("DSN")
        if self._starttls_offered():
            ext.append("STARTTLS")
        if self.session.secure and not o.hide_requiretls:
            ext.append("REQUIRETLS")
        if self._auth_offered():
            ext.append("AUTH " + " ".join(o.auth_methods))
        if o.use_xclient and self._trusted and "XCLIENT" not in o.disabled_commands:
            ext.append("XCLIENT " + XCLIENT_ATTRIBUTES)
        if o.use_xforward and self._trusted and "XFORWARD" not in o.disabled_commands:
            ext.append("XFORWARD " + XFORWARD_ATTRIBUTES)
        if o.hide_size or not o.size:
            ext.append("SIZE")
        else:
            ext.append(f"SIZE {o.size}")
        return ext

    def _cmd_MAIL(self, arg: str) -> None:
        s = self.session
        if not s.opening_command:
            self._reply(503, "5.5.1", "Error: send LHLO first" if self.options.lmtp else "Error: send HELO/EHLO first")
            return
        if s.envelope.mail_from is not None:
            self._reply(503, "5.5.1", "Error: nested MAIL command")
            return
        if self.options.needs_upgrade and not s.secure:
            self._reply(530, "5.7.0", "Error: must issue a STARTTLS command first")
            return
        if self._auth_needed and s.user is None:
            self._reply(530, "5.7.0", self._auth_required_text())
            return
        try:
            mailbox, ptext = parse_path_argument(arg, "FROM", null_ok=True)
            params = parse_params(ptext)
            env = self._mail_params(params)
        except CommandError as e:
            self._reply(e.code, e.enhanced, e.text, cache=False)
            return
        if not mailbox.isascii() and not env.smtputf8:
            self._reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
            return
        address = Address(mailbox, params)
        env.mail_from = address
        hook = self.server._hooks.on_mail_from

        def done(value: Any, failure: Optional[Failure]) -> None:
            if self._send_outcome(value, failure, 250, "2.1.0", "Accepted"):
                s.envelope = env
                s.transaction += 1
                self.server._notify("mail", s, address)

        if hook is None:
            done(None, None)
        else:
            self._invoke(hook, (s, address), done, pause=True)

    def _mail_params(self, params: Dict[str, Optional[str]]) -> Envelope:
        """Check MAIL parameters; the result is the envelope to use on success."""
        o = self.options
        env = Envelope()
        if params and self.session.opening_command == "HELO":
            raise CommandError(555, "5.5.4", "Error: MAIL parameters need EHLO")
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                    raise CommandError(501, "5.5.4", "Error: bad SIZE value")
                env.size = int(value)
                if o.size and env.size > o.size and o.reject_oversized:
                    raise CommandError(552, "5.3.4", "Error: message exceeds fixed maximum message size")
            elif key == "BODY":
                body = (value or "").upper()
                if body == "7BIT" or (body == "8BITMIME" and not o.hide_8bitmime) or (
                        body == "BINARYMIME" and not o.hide_chunking):
                    env.body_type = body
                else:
                    raise CommandError(501, "5.5.4", f"Error: unsupported BODY value {(value or '')[:20]}")
            elif key == "SMTPUTF8" and not o.hide_smtputf8:
                if value is not None:
                    raise CommandError(501, "5.5.4", "Error: SMTPUTF8 takes no value")
                env.smtputf8 = True
            elif key == "RET" and not o.hide_dsn:
                ret = (value or "").upper()
                if ret not in ("FULL", "HDRS"):
                    raise CommandError(501, "5.5.4", "Error: RET must be FULL or HDRS")
                env.dsn_ret = ret
            elif key == "ENVID" and not o.hide_dsn:
                env.dsn_envid = parse_envid(value)
            elif key == "REQUIRETLS" and not o.hide_requiretls:
                if not self.session.secure:
                    raise CommandError(530, "5.7.10", "Error: REQUIRETLS needs a TLS connection")
                if value is not None:
                    raise CommandError(501, "5.5.4", "Error: REQUIRETLS takes no value")
                env.requiretls = True
            elif key not in o.mail_params:
                raise CommandError(555, "5.5.4", f"Error: unsupported MAIL parameter {key[:40]}")
        return env

    def _cmd_RCPT(self, arg: str) -> None:
        s = self.session
        env = s.envelope
        if env.mail_from is None:
            self._reply(503, "5.5.1", "Error: need MAIL command")
            return
        if self._stream is not None:
            self._reply(503, "5.5.1", "Error: RCPT not allowed once BDAT has begun")
            return
        if len(env.rcpt_to) >= self.options.max_recipients:
            self._reply(452, "4.5.3", "Error: too many recipients")
            return
        dsn = not self.options.hide_dsn
        notify = orcpt = None
        try:
            mailbox, ptext = parse_path_argument(arg, "TO", null_ok=False)
            params = parse_params(ptext)
            if params and s.opening_command == "HELO":
                raise CommandError(555, "5.5.4", "Error: RCPT parameters need EHLO")
            for key, value in params.items():
                if key == "NOTIFY" and dsn:
                    notify = parse_notify(value)
                elif key == "ORCPT" and dsn:
                    orcpt = parse_orcpt(value)
                elif key not in self.options.rcpt_params:
                    raise CommandError(555, "5.5.4", f"Error: unsupported RCPT parameter {key[:40]}")
        except CommandError as e:
            self._reply(e.code, e.enhanced, e.text, cache=False)
            return
        if not mailbox.isascii() and not env.smtputf8:
            self._reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
            return
        address = Address(mailbox, params, notify, orcpt)
        hook = self.server._hooks.on_rcpt_to

        def done(value: Any, failure: Optional[Failure]) -> None:
            if self._send_outcome(value, failure, 250, "2.1.5", "Accepted"):
                if s.envelope is env:  # not reset meanwhile
                    env.rcpt_to.append(address)
                    self.server._notify("rcpt", s, address)

        if hook is None:
            done(None, None)
        else:
            self._invoke(hook, (s, address), done, pause=True)

    def _cmd_DATA(self, arg: str) -> None:
        env = self.session.envelope
        if arg:
            self._reply(501, "5.5.4", "Error: syntax: DATA")
            return
        if env.mail_from is None:
            self._reply(503, "5.5.1", "Error: need MAIL command")
            return
        if not env.rcpt_to:
            self._reply(554, "5.5.1", "Error: no valid recipients")
            return
        if self._stream is not None:
            self._reply(503, "5.5.1", "Error: DATA not allowed after BDAT in one transaction")
            return
        if env.body_type == "BINARYMIME":
            self._reply(503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT")
            return
        self._reply(354, None, "End data with <CR><LF>.<CR><LF>")
        self.setRawMode()
        self._deadline = self._clock.seconds() + self.options.socket_timeout
        self._decoder = DotDecoder(self.options.bare_line_endings == "reject")
        self._start_data()

    def _start_data(self) -> None:
        """Open the stream and call the data hook; shared by DATA and BDAT."""
        self._data_dot = False
        self._data_bare = ""
        self._data_outcome = None
        stream = self._stream = MessageStream(self._stream_paused, lambda: self._resume(_STREAM),
                                              self.options.size, self.options.reject_oversized)
        hook = self.server._hooks.on_data
        self._data_hook = None
        if hook is None:
            stream.discard()
            self._data_outcome = (None, None)
        else:
            def done(value: Any, failure: Optional[Failure]) -> None:
                if stream is self._stream:  # not a transaction abandoned meanwhile
                    self._data_hook_done(value, failure)
            self._data_hook = self._invoke(hook, (self.session, stream), done, pause=False)

    def _stream_paused(self) -> None:
        self._stream_wait = self._clock.seconds()
        self._pause(_STREAM)

    def _data_hook_done(self, value: Any, failure: Optional[Failure]) -> None:
        self._data_outcome = (value, failure)
        self._data_hook = None
        stream = self._stream
        if stream is not None and (not stream.has_reader or failure is not None):
            # Nobody reads the rest: skip it up to the end, then answer. This
            # may resume reading and so reach the end (and the reply) at once.
            stream.discard()
        if self._data_dot and stream is not None and self._stream is stream:
            self._data_reply()

    def _abandon_data(self) -> None:
        """A BDAT transaction was reset or failed: stop its stream and hook."""
        stream, self._stream = self._stream, None
        if stream is not None and not stream.ended:
            stream.finish(Failure(MessageDiscarded("transaction abandoned")))
        hook, self._data_hook = self._data_hook, None
        if hook is not None:
            hook.cancel()

    def rawDataReceived(self, data: bytes) -> None:
        if self._chunk_left is not None:
            self._read_chunk(data)
            return
        decoder = self._decoder
        assert decoder is not None and self._stream is not None
        payload, rest = decoder.feed(data)
        stream = self._stream
        if decoder.bare and not self._data_bare:
            # Refuse before writing: a reader that streams the body on must
            # never be handed the bytes that make it refused (smuggling).
            self._body_refused(stream, decoder.fault)
        if payload:
            stream.write(payload)  # only counted once the stream is refused
        if rest is None:
            return
        self._decoder = None
        self._body_ended(stream)
        self.setLineMode(rest)

    def _body_refused(self, stream: MessageStream, fault: Optional[str]) -> None:
        """A bare CR/LF or a NUL (L{body_fault}): answered 550 5.6.0 at the end."""
        self._data_bare = fault or "Error: message refused"
        stream.abort(Failure(BareLineEnding(self._data_bare)))

    def _body_ended(self, stream: MessageStream) -> None:
        """The dot (or BDAT LAST) arrived: answer now, or once the data hook has."""
        self._data_dot = True
        stream.finish()  # may run the data hook to completion, and so reply
        if self._stream is not stream:
            return
        if self._data_outcome is None and self._data_hook is not None and (
                stream.refused_for_size or self._data_bare):
            self._data_hook.cancel()  # the verdict is known: no need to wait (replies)
        if self._stream is not stream:
            return
        if self._data_outcome is None:
            self._pause(_VERDICT)  # commands after the end wait for the verdict
        else:
            self._data_reply()

    def _data_reply(self) -> None:
        stream = self._stream
        assert stream is not None and self._data_outcome is not None
        self._stream = None
        self._data_dot = False
        value, failure = self._data_outcome
        s = self.session
        # LMTP answers once per accepted recipient (RFC 2033 4.2), in order.
        rcpts = s.envelope.rcpt_to if self.options.lmtp else [None]
        if stream.refused_for_size:
            for _ in rcpts:
                self._reply(552, "5.3.4", "Error: message exceeds fixed maximum message size")
            ok = False
        elif self._data_bare:
            for _ in rcpts:
                self._reply(550, "5.6.0", self._data_bare)
            ok = False
        elif self.options.lmtp and failure is None and isinstance(value, (list, tuple)):
            if len(value) != len(rcpts):
                self.log.error("on_data returned {n} answers for {m} recipients", n=len(value),
                               m=len(rcpts), session_id=s.id)
                value = [SMTPError(451, _LOCAL_ERROR, "4.3.0")] * len(rcpts)
            ok = False
            for rcpt, item in zip(rcpts, value):
                if isinstance(item, BaseException):
                    ok = self._send_outcome(None, Failure(item), 250, "", "") or ok
                else:
                    ok = self._send_outcome(item, None, 250, "2.0.0", f"OK: message accepted for <{rcpt}>",
                                            cache=False) or ok
        else:
            ok = False
            for rcpt in rcpts:
                text = "OK: message accepted" if rcpt is None else f"OK: message accepted for <{rcpt}>"
                ok = self._send_outcome(value, failure, 250, "2.0.0", text, cache=rcpt is None) or ok
        if ok:  # logged by deliveries and observers, not here: this is the hot path
            self.server._notify("message", s, s.envelope, stream.byte_length)
        self._reset_transaction()
        self._end_transaction()

    def _end_transaction(self) -> None:
        self._resume(_VERDICT)
        if self._shutdown_if_idle():
            return
        if self._out and not self._busyReceiving:
            self._flush()

    # -- TLS (RFC 3207) ---------------------------------------------------------------

    def _starttls_offered(self) -> bool:
        return (not self.options.hide_starttls and not self.session.secure
                and "STARTTLS" not in self.options.disabled_commands
                and ITLSTransport.providedBy(self.transport))

    def _cmd_STARTTLS(self, arg: str) -> None:
        if arg:
            self._reply(501, "5.5.4", "Error: syntax: STARTTLS")
            return
        if self.session.secure or ISSLTransport.providedBy(self.transport):
            self._reply(503, "5.5.1", "Error: TLS already active")
            return
        if self.options.hide_starttls:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        if not ITLSTransport.providedBy(self.transport):
            self._reply(454, "4.7.0", "Error: TLS not available on this connection")
            return
        try:
            holder = self.server.tls
        except Exception:
            self.log.failure("TLS configuration failed", session_id=self.session.id)
            self._reply(454, "4.7.0", "Error: TLS not available due to temporary reason")
            return
        # Plaintext pipelined after STARTTLS must never run inside TLS
        # (CVE-2011-0411): drop it with the rest of the read.
        leftover = self.clearLineBuffer()
        self._line_rest, self._discard_line = b"", False
        if leftover:
            self.log.warn("discarded {n} bytes of plaintext sent after STARTTLS", n=len(leftover),
                          session_id=self.session.id)
        self._reply(220, "2.0.0", "Ready to start TLS")
        self._flush()
        self.transport.startTLS(holder)
        self._tls_timer = self._start_handshake_timer()
        # RFC 3207 4.2: forget everything learnt from the client in plaintext.
        self._reset_transaction()
        s = self.session
        s.opening_command = s.host_name_appears_as = ""
        s.user = None
        self._auth = self._auth_error = None

    def _start_handshake_timer(self) -> Any:
        from ._tls import start_handshake_timer
        try:
            timeout = self.server.tls.handshake_timeout
        except Exception:
            timeout = 30.0
        return start_handshake_timer(self.transport, timeout, self._clock,
                                     hold=lambda: bool(self._pauses & _HOOK), session_id=self.session.id)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is up; tell the on_secure hook."""
        from ._tls import tls_info
        if self._tls_timer is not None and self._tls_timer.active():
            self._tls_timer.cancel()
        self._tls_timer = None
        if self._gone or self._closing:
            return  # already said goodbye (e.g. on_connect refused): let the close finish
        s = self.session
        self._register_backpressure()
        s.secure = True
        s.tls = tls_info(self.transport)
        if s.tls is not None:
            self.log.info("TLS established: {version} {cipher}", version=s.tls.version, cipher=s.tls.cipher,
                          session_id=s.id)
        self.server._notify("tls", s, None)
        hook = self.server._hooks.on_secure
        if hook is not None:
            self._invoke(hook, (s,), self._secure_done, pause=True)

    def _secure_done(self, value: Any, failure: Optional[Failure]) -> None:
        if failure is None and (value is None or (isinstance(value, Reply) and value.code < 400)):
            return
        self._send_outcome(value, failure, 250, "", "")
        self._close()

    # -- XCLIENT / XFORWARD (Postfix) -------------------------------------------------

    def _x_attributes(self, enabled: bool, parse: Callable[[str], Dict[str, Any]],
                      arg: str) -> Optional[Dict[str, Any]]:
        """Check who may send XCLIENT/XFORWARD and parse it, or answer why not."""
        if not enabled:
            self._reply(502, "5.5.1", "Error: command not implemented")
        elif not self._trusted:
            self._reply(550, "5.7.0", "Error: insufficient authorization")
        elif self.session.envelope.mail_from is not None:
            self._reply(503, "5.5.1", "Error: not allowed during a mail transaction")
        else:
            try:
                return parse(arg)
            except XClientError as e:
                self._reply(501, "5.5.4", f"Error: {e}", cache=False)
        return None

    @staticmethod
    def _as_text(attrs: Dict[str, Any]) -> Dict[str, str]:
        return {k: str(v.value if v in (UNAVAILABLE, TEMPUNAVAIL) else v) for k, v in attrs.items()}

    def _cmd_XCLIENT(self, arg: str) -> None:
        attrs = self._x_attributes(self.options.use_xclient, parse_xclient, arg)
        if attrs is None:
            return
        s = self.session
        # Postfix restarts the session as if the real client had connected
        # (first, so that no XFORWARD of before is undone over our values).
        self._reset_transaction()
        known = {k: v for k, v in attrs.items() if v is not UNAVAILABLE and v is not TEMPUNAVAIL}
        s.remote_address, s.client_hostname = forwarded_client(attrs, s.remote_address, s.client_hostname)
        s.remote_port = int(known.get("PORT", s.remote_port))
        s.local_address = str(known.get("DESTADDR", s.local_address))
        s.local_port = int(known.get("DESTPORT", s.local_port))
        s.xclient.update(self._as_text(attrs))
        self.log.info("XCLIENT: client is now {remote_address}", remote_address=s.remote_address, session_id=s.id)
        s.opening_command = ""
        s.host_name_appears_as = str(known.get("HELO", ""))
        s.user = known.get("LOGIN")
        self._trusted = False  # the new client is not the trusted proxy
        self._connect_hook()  # policy sees the real client (on_connect, then 220)

    def _cmd_XFORWARD(self, arg: str) -> None:
        attrs = self._x_attributes(self.options.use_xforward, parse_xforward, arg)
        if attrs is not None:
            s = self.session
            if self._pre_xforward is None:  # the proxy's own identity, back after the transaction
                self._pre_xforward = (s.remote_address, s.client_hostname)
            s.remote_address, s.client_hostname = forwarded_client(attrs, s.remote_address, s.client_hostname)
            s.xforward.update(self._as_text(attrs))
            self.log.info("XFORWARD: client is {remote_address}", remote_address=s.remote_address, session_id=s.id)
            self._reply(250, "2.0.0", "OK")

    # -- BDAT (RFC 3030) ------------------------------------------------------------

    def _cmd_BDAT(self, arg: str) -> None:
        if self.options.hide_chunking:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        try:
            size, last = parse_bdat(arg)
        except CommandError as e:
            # Without a size we cannot find the next command: give up.
            self._reply(e.code, e.enhanced, e.text, cache=False)
            self._close()
            return
        env = self.session.envelope
        error: Optional[Tuple[int, str, str]] = None
        if self._auth_needed and self.session.user is None:  # RFC 4954 6; the chunk is still read
            error = (530, "5.7.0", self._auth_required_text())
        elif env.mail_from is None:
            error = (503, "5.5.1", "Error: need MAIL command")
        elif not env.rcpt_to:
            error = (554, "5.5.1", "Error: no valid recipients")
        elif self._bdat_error is not None:
            error = self._bdat_error
        elif self._stream is None:
            # RFC 3030 2: only BODY=BINARYMIME content may hold bare CR/LF or
            # NUL; other BDAT content is checked as DATA is, so that nothing
            # received by BDAT can smuggle when relayed with DATA.
            self._bdat_check = (BodyCheck() if self.options.bare_line_endings == "reject"
                                and env.body_type != "BINARYMIME" else None)
            self._start_data()
        self._chunk_error = error
        self._chunk_last = last
        if error is None and self._per_byte:
            # A chunk may take as long as its size needs at min_data_rate.
            self._deadline = self._clock.seconds() + self.options.socket_timeout
        if size == 0:
            self._chunk_done()
            return
        self._chunk_left = size
        self.setRawMode()

    def _read_chunk(self, data: bytes) -> None:
        left = self._chunk_left
        assert left is not None
        if len(data) <= left:
            piece, rest = data, b""
        else:
            piece, rest = data[:left], data[left:]
        left -= len(piece)
        if self._chunk_error is None and self._stream is not None:
            check = self._bdat_check  # judged before the reader gets it, as in DATA
            if check is not None and check.feed(piece) and not self._data_bare:
                self._body_refused(self._stream, check.fault)
            self._stream.write(piece)
        if left:
            self._chunk_left = left
            return
        self._chunk_left = None
        self._chunk_done()
        self.setLineMode(rest)

    def _chunk_done(self) -> None:
        """A whole chunk was read: answer it, or (LAST) wait for the verdict."""
        error = self._chunk_error
        stream = self._stream
        last = self._chunk_last
        # LMTP answers the last chunk once per recipient, like the end of DATA.
        count = max(1, len(self.session.envelope.rcpt_to)) if last and self.options.lmtp else 1
        if error is None and stream is not None:
            check = self._bdat_check
            if last and check is not None and check.end() and not self._data_bare:
                self._body_refused(stream, check.fault)
            if stream.refused_for_size:
                error = (552, "5.3.4", "Error: message exceeds fixed maximum message size")
            elif self._data_bare:
                error = (550, "5.6.0", self._data_bare)
            elif self._data_outcome is not None and self._data_outcome[1] is not None:
                # The hook refused before the last chunk: its reply, now.
                for _ in range(count):
                    self._send_outcome(None, self._data_outcome[1], 250, "", "")
                self._chunk_failed((554, "5.6.0", "Error: message refused"), last)
                return
        if error is not None:
            for _ in range(count):
                self._reply(*error)
            self._chunk_failed(error, last)
            return
        assert stream is not None
        if not last:
            self._reply(250, "2.0.0", f"{stream.byte_length} octets received", cache=False)
            return
        self._body_ended(stream)

    def _chunk_failed(self, error: Tuple[int, str, str], last: bool) -> None:
        """A failed chunk ends a LAST transfer; otherwise later chunks get C{error} too."""
        if last:
            self._reset_transaction()
        elif self._stream is not None:
            self._bdat_error = error

    # -- AUTH (RFC 4954); the mechanisms live in _sasl -------------------------

    def _auth_offered(self) -> bool:
        return (self.server._hooks.on_auth is not None and bool(self.options.auth_methods)
                and "AUTH" not in self.options.disabled_commands
                and (self.session.secure or self.options.allow_insecure_auth))

    def _auth_required_text(self) -> str:
        if self.options.needs_upgrade and not self.session.secure:
            return "Error: must issue a STARTTLS command first"
        return self.options.auth_required_message

    def _cmd_AUTH(self, arg: str) -> None:
        s = self.session
        if self.server._hooks.on_auth is None:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        if s.opening_command != "EHLO":
            self._reply(503, "5.5.1", "Error: send EHLO first")
            self._count_auth_refusal()
            return
        if s.user is not None:
            self._reply(503, "5.5.1", "Error: already authenticated")
            return
        if s.envelope.mail_from is not None:
            self._reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction")
            self._count_auth_refusal()
            return
        parts = arg.split(" ")
        if not arg or len(parts) > 2:
            self._reply(501, "5.5.4", "Error: syntax: AUTH mechanism [initial-response]")
            self._count_auth_refusal()
            return
        name = parts[0].upper()
        if name not in self.options.auth_methods:
            self._reply(504, "5.5.4", "Error: unrecognized authentication type")
            self._count_auth_refusal()
            return
        if self.options.needs_upgrade and not s.secure:
            self._reply(530, "5.7.0", "Error: must issue a STARTTLS command first")
            self._count_auth_refusal()
            return
        if not (s.secure or self.options.allow_insecure_auth):
            self._reply(538, "5.7.11", "Error: encryption required for requested authentication mechanism")
            self._count_auth_refusal()
            return
        try:
            exchange = start_mechanism(name, parts[1].encode("ascii", "replace") if len(parts) == 2 else None,
                                       hostname=self.options.name)
        except UnknownMechanism as e:  # pragma: no cover - auth_methods is validated
            self._reply_obj(e.code, e.enhanced, e.lines, False)
            return
        self._auth_step(exchange, None)

    def _auth_step(self, exchange: Exchange, line: Optional[bytes]) -> None:
        try:
            result = exchange.step(line)
        except SMTPError as e:
            err = e
            if isinstance(e, SASLAuthFailed) and self._auth_error is not None:
                err = self._auth_error
            counted, self._auth_error = self._auth_error is not None, None
            self._reply_obj(err.code, err.enhanced, err.lines, False)
            if not counted:  # cancelled or malformed (an XOAUTH2 error challenge was counted already)
                self._count_auth_refusal()
            return
        if isinstance(result, Challenge):
            self._auth = exchange
            self._out.append(result.reply_line())
            return
        hook = self.server._hooks.on_auth
        assert hook is not None

        def done(value: Any, failure: Optional[Failure]) -> None:
            self._auth_done(exchange, result, value, failure)

        self._invoke(hook, (self.session, result), done, pause=True)

    def _count_auth_refusal(self) -> None:
        """
        An AUTH that ended before C{on_auth} judged anything (cancelled, malformed,
        refused) counts toward C{max_auth_failures} like a failed password:
        AUTH never counts toward C{max_allowed_unauthenticated_commands}, so
        without this a client could loop on refused AUTHs unbounded.
        """
        if self.session.user is not None:
            return
        self._auth_failures += 1
        limit = self.options.max_auth_failures
        if limit and self._auth_failures >= limit:
            self._refused("auth_failures")
            self._reply(421, "4.7.0", f"{self.options.name} Error: too many failed authentication attempts")
            self._close()

    def _auth_done(self, exchange: Exchange, credentials: Any, value: Any, failure: Optional[Failure]) -> None:
        s = self.session
        if value is True:
            value = credentials.username
        elif value is False:
            value = None
        if failure is None and value is not None and not (isinstance(value, Reply) and value.code >= 300):
            if isinstance(value, Reply):  # a custom success message
                s.user = credentials.username
                self._reply_obj(235, value.enhanced or "2.7.0", value.lines, False)
            else:
                s.user = value
                self._reply(235, "2.7.0", "Authentication successful")
            self.log.info("authenticated with {method}", method=credentials.method, session_id=s.id)
            self.server._notify("auth", s, credentials.method, credentials.username, 235)
            return
        if failure is None and isinstance(value, Reply):  # a refusal given as a Reply
            err = SMTPError(value.code if value.code >= 400 else 535, value.lines, value.enhanced
                            if value.code >= 400 else "5.7.8")
        elif failure is None:
            err = SMTPError(535, "Authentication credentials invalid", "5.7.8")  # None: fail closed
        elif isinstance(failure.value, SMTPError):
            err = failure.value
        else:  # RFC 4954 6: a failure of ours is temporary
            self.log.failure("hook on_auth failed", failure, session_id=s.id)
            err = SMTPError(454, "Temporary authentication failure", "4.7.0")
        # Logged (with the username, for fail2ban) by the session log's "auth" observer.
        self.server._notify("auth", s, credentials.method, credentials.username, err.code)
        self._auth_failures += 1
        limit = self.options.max_auth_failures
        if limit and self._auth_failures >= limit and err.code == 535:
            self._reply_obj(err.code, err.enhanced, err.lines, False)
            self._refused("auth_failures")
            self._reply(421, "4.7.0", f"{self.options.name} Error: too many failed authentication attempts")
            self._close()
            return
        if err.code == 535 and exchange.supports_error_challenge:
            # RFC 7628: an error challenge, then 535 once the client acknowledges it.
            self._auth, self._auth_error = exchange, err
            self._out.append(exchange.reject(getattr(err, "challenge", None)).reply_line())
            return
        self._reply_obj(err.code, err.enhanced, err.lines, False)

    def _cmd_RSET(self, arg: str) -> None:
        if arg:
            self._reply(501, "5.5.4", "Error: syntax: RSET")
            return
        self._reset_transaction()
        self._reply(250, "2.0.0", "OK")
        self._shutdown_if_idle()

    def _reset_transaction(self) -> None:
        if self._stream is not None and self._chunk_left is None and self._decoder is None:
            self._abandon_data()  # RSET or EHLO between BDAT chunks
        self._bdat_error = None
        s = self.session
        if s.envelope.mail_from is not None or s.envelope.rcpt_to:
            s.envelope = Envelope()
        if s.xforward:  # XFORWARD describes one transaction
            s.xforward = {}
            if self._pre_xforward is not None:
                s.remote_address, s.client_hostname = self._pre_xforward
                self._pre_xforward = None

    def _cmd_NOOP(self, arg: str) -> None:
        self._reply(250, "2.0.0", "OK")

    def _cmd_QUIT(self, arg: str) -> None:
        self._reply(221, "2.0.0", "Bye")
        self._close()

    def _cmd_VRFY(self, arg: str) -> None:
        if not arg:
            self._reply(501, "5.5.4", "Error: syntax: VRFY address")
            return
        self._reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def _cmd_EXPN(self, arg: str) -> None:
        self._reply(502, "5.5.1", "Error: EXPN not implemented")

    def _cmd_HELP(self, arg: str) -> None:
        self._reply(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")

    # -- server shutdown ------------------------------------------------------

    def shutdown(self) -> None:
        """
        The server is closing: an idle connection gets 421 now, one in a
        transaction when the transaction ends.
        """
        if self._gone or self._closing:
            return
        self._shutdown = True
        self._shutdown_if_idle()
        if self._out and not self._gone:
            self._flush()

    def _shutdown_if_idle(self) -> bool:
        """During shutdown, a client between transactions gets 421 and is closed."""
        if not self._shutdown or self._closing or self._gone:
            return False
        if self.session.envelope.mail_from is not None or self._stream is not None or self._pauses:
            return False
        self._say_shutting_down()
        return True

    def _say_shutting_down(self) -> None:
        self._reply(421, "4.3.2", f"{self.options.name} Service shutting down")
        self._close()

    def force_close(self) -> None:
        """close_timeout passed: 421 and drop whatever is going on."""
        if self._gone:
            return
        if not self._closing:
            self._say_shutting_down()

    def abort(self) -> None:
        if not self._gone:
            self.transport.abortConnection()


def _build_handlers() -> Dict[bytes, Callable[..., None]]:
    table = {}
    for name in dir(SMTPServerProtocol):
        if name.startswith("_cmd_"):
            table[name[5:].encode("ascii")] = getattr(SMTPServerProtocol, name)
    return table


SMTPServerProtocol._handlers = _build_handlers()
