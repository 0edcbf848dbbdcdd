# -*- test-case-name: tests.test_protocol_commands -*-
"""
The session commands of the dialogue: HELO/EHLO/LHLO, AUTH (RFC 4954),
STARTTLS (RFC 3207), XCLIENT/XFORWARD (Postfix), RSET, NOOP, QUIT, VRFY,
EXPN, HELP; and what happens when TLS comes up.

Handlers are C{_cmd_<VERB>(arg)}; L{_phases.COMMANDS} has said the command
may run in the current phase before one is called.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._commands import CommandError, parse_helo
from ._cmd_guard import SLEEP, GuardCommands
from ._core import START_TLS
from ._errors import Reply, SMTPError, format_reply, reply_line
from ._ipaddr import address_literal, parse_ip, plain_ipv4
from ._outcome import auth_outcome, hook_outcome
from ._phases import Phase
from ._sasl import Challenge, SASLAuthFailed, UnknownMechanism, start_mechanism
from ._xclient import (TEMPUNAVAIL, UNAVAILABLE, XCLIENT_ATTRIBUTES, XFORWARD_ATTRIBUTES, XClientError,
                       forwarded_client, parse_xclient, parse_xforward)

# Enum member lookups cost ~0.4 us each on Python 3.11: the hot paths compare module constants.
_GREETING = Phase.GREETING
_COMMAND = Phase.COMMAND
_AUTH = Phase.AUTH
_REFUSED = Phase.REFUSED
_CLOSING = Phase.CLOSING
_CLOSED = Phase.CLOSED

__all__ = ["SessionCommands", "ehlo_keywords"]


def ehlo_keywords(core: "SessionCommands") -> List[str]:
    """The EHLO/LHLO extension lines for this session (a module function: a seam for tests)."""
    o = core.options
    ext = []
    if o.lmtp or not o.hide_pipelining:
        ext.append("PIPELINING")
    if not o.hide_8bitmime:
        ext.append("8BITMIME")
    if o.offers_smtputf8:
        ext.append("SMTPUTF8")
    if core._esc:
        ext.append("ENHANCEDSTATUSCODES")
    if not o.hide_chunking:
        ext.append("CHUNKING")
        ext.append("BINARYMIME")
    if not o.hide_dsn:
        ext.append("DSN")
    if core._starttls_offered():
        ext.append("STARTTLS")
    if core.session.secure and not o.hide_requiretls:
        ext.append("REQUIRETLS")
    if core._auth_offered():
        ext.append("AUTH " + " ".join(o.auth_methods))
    if o.use_xclient and core._trusted and "XCLIENT" not in o.disabled_commands:
        ext.append("XCLIENT " + XCLIENT_ATTRIBUTES)
    if o.use_xforward and core._trusted and "XFORWARD" not in o.disabled_commands:
        ext.append("XFORWARD " + XFORWARD_ATTRIBUTES)
    if o.hide_size or not o.size:
        ext.append("SIZE")
    else:
        ext.append(f"SIZE {o.size}")
    return ext


@functools.lru_cache(maxsize=256)
def _hello_line(fmt: str, name: str, client_hostname: str, remote_address: str, helo: str) -> Tuple[str, bytes, bytes]:
    """
    The HELO/EHLO/LHLO answer's first line (C{helo_response} filled in):
    its text, the whole HELO reply and the first line of a multi-line one.
    Cached (bounded): a client that connects again says the same (issue 13).
    """
    text = fmt.format(name=name, client_hostname=client_hostname, remote_address=remote_address, helo=helo)
    return text, format_reply(250, [text], None), reply_line("250-", text)


class SessionCommands(GuardCommands):
    """Commands about the session rather than one message."""

    __slots__ = ()

    # -- connecting and greeting ----------------------------------------------------

    def start(self, log_connection: bool = True) -> None:
        """
        The connection is made: decide who the client is and greet (or ask first).

        @param log_connection: whether the "connection from" info line is
            wanted (the driver knows whether any log observer keeps info
            lines; when none does, the line is not even built: issue 13).
        """
        o = self.options
        s = self.session
        ip = s.remote_address
        # A peer as sockets spell IPv4 (the usual case) is shown as it is: the
        # address object is only made when a network list has to be checked.
        plain = bool(ip) and plain_ipv4(ip)
        xclient = (o.use_xclient or o.use_xforward) and o.xclient_trusted
        addr = parse_ip(ip) if ip and (not plain or o.ignored_hosts or xclient) else None
        self._deadline = self._clock() + o.socket_timeout
        self._quiet = addr is not None and any(addr in net for net in o.ignored_hosts)
        self._trusted = bool(xclient and addr is not None and any(addr in net for net in o.xclient_trusted))
        if plain:
            s.client_hostname = f"[{ip}]"
        elif ip:
            s.client_hostname = f"[{addr}]" if addr is not None and addr.version == 4 else address_literal(ip)
        # A trusted proxy is counted as the client it names with XCLIENT.
        if not self._trusted and not self._admit():
            self._quiet = True  # refusals are logged once a minute per address, not per connection
            return
        if not self.tls_active:
            self._sniff = b""
            self._screening = True
        if o.greeting_delay:
            self._start_greeting_delay()
        if log_connection and not self._quiet:
            self._log("info", "connection from {peer}", remote_address=ip, remote_port=s.remote_port,
                      peer=f"{ip}:{s.remote_port}" if ip else "a local socket")
        self._notify("connect", s)
        if self._hungup:
            return  # an observer closed the server (or the connection) meanwhile
        if not ip or o.disable_reverse_lookup:
            self._connect_hook()
        elif ip.startswith("127.") if plain else (addr is not None and addr.is_loopback):
            self._lookup_done("localhost", None, False)  # a PTR query for loopback tells nothing
        else:
            # During a greeting delay reading goes on, so that early talkers are caught.
            self._ask("reverse_lookup", (ip,), self._lookup_done, hold=not self._pregreet)

    def _lookup_done(self, name: Any, error: Optional[BaseException], timed_out: bool) -> None:
        if name:
            self.session.client_hostname = name
        self._connect_hook()

    def _connect_hook(self) -> None:
        self.phase = _GREETING
        if self._delaying:  # the greeting delay runs on: greet when it is over
            self._greet_waiting = True
            return
        if "on_connect" in self.hooks:
            self._ask("on_connect", (self.session,), self._connect_done, hold=not self._pregreet)
        else:
            self._greet()

    def _connect_done(self, value: Any, error: Optional[BaseException], timed_out: bool) -> None:
        if error is None and value is None:
            self._greet()
            return
        # A Reply is a custom greeting; a rejection (RFC 5321 3.1: 554) waits for QUIT, 421 or 521 closes.
        outcome = hook_outcome(value, error, timed_out, 220, "", "", name=self.options.name, greeting=True)
        if self._send(outcome):
            self.phase = _COMMAND
            self._greeted()
        else:
            self._refused("connect_hook")
            self._greeting_refused(outcome.code)

    def _greet(self) -> None:
        o = self.options
        self.phase = _COMMAND
        self._greeted()
        self._reply(220, None, f"{o.name} {'LMTP' if o.lmtp else 'ESMTP'}" + (f" {o.banner}" if o.banner else ""))

    # -- HELO / EHLO / LHLO ------------------------------------------------------

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
        if "on_helo" in self.hooks:
            self._ask("on_helo", (self.session, hostname), functools.partial(self._hello_answered, command, hostname))
        else:  # (no closure per command: a method, called at once)
            self._hello_answered(command, hostname, None, None, False)

    def _hello_answered(self, command: str, hostname: str, value: Any, error: Optional[BaseException],
                        timed_out: bool) -> None:
        """HELO/EHLO/LHLO's answer (the hook's, or the default): the greeting, keywords and the session's name."""
        custom = error is None and isinstance(value, Reply) and value.code < 400
        if not custom and (error is not None or value is not None):
            self._send(hook_outcome(value, error, timed_out, 250, "", ""))
            return
        self._reset_transaction()  # RFC 5321 4.1.4: like RSET
        s = self.session
        s.host_name_appears_as = hostname
        s.opening_command = command
        o = self.options
        first: Optional[Tuple[str, bytes, bytes]] = None
        if custom:  # a Reply from on_helo replaces the greeting line(s)
            lines = list(value.lines)
        else:
            first = _hello_line(o.helo_response, o.name, s.client_hostname, s.remote_address, hostname)
            lines = [first[0]]
        keywords: Tuple[str, ...] = () if command == "HELO" else tuple(ehlo_keywords(self))
        if self.observers["reply"]:
            self._notify("reply", s, command, 250, None, lines[0])
        if not self._hungup:
            if keywords:
                # The keyword lines are the same for every session in the
                # same state: framed once per server (what format_reply
                # would make of the greeting and keywords together).
                key = ("EHLO keywords", keywords)
                tail = self._cache.get(key)
                if tail is None:
                    tail = self._cache[key] = format_reply(250, keywords, None)
                if first is not None:
                    self._emit(first[2] + tail)
                else:
                    self._emit(b"".join([reply_line("250-", line) for line in lines]) + tail)
            else:
                self._emit(first[1] if first is not None else format_reply(250, lines, None))
        if self.observers["helo"]:
            self._notify("helo", s, hostname)

    # -- AUTH (RFC 4954); the mechanisms live in _sasl ------------------------------

    def _auth_offered(self) -> bool:
        o = self.options
        return ("on_auth" in self.hooks and bool(o.auth_methods) and "AUTH" not in o.disabled_commands
                and (self.session.secure or o.allow_insecure_auth))

    def _cmd_AUTH(self, arg: str) -> None:
        s = self.session
        o = self.options
        if "on_auth" not in self.hooks:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        if s.user is not None and s.opening_command == "EHLO":
            self._reply(503, "5.5.1", "Error: already authenticated")
            return
        refusal = self._auth_refusal(arg)
        if refusal is not None:
            if refusal:
                self._reply(*refusal)
            self._count_auth_refusal()
            return
        parts = arg.split(" ")
        name = parts[0].upper()
        if self._auth_refused(None):
            self._count_auth_refusal()  # 454 after 454 is no endless loop
            return
        try:
            exchange = start_mechanism(name, parts[1].encode("ascii", "replace") if len(parts) == 2 else None,
                                       hostname=o.name)
        except UnknownMechanism as e:  # pragma: no cover - auth_methods is validated
            self._reply_lines(e.code, e.enhanced, e.lines, False)
            return
        self._auth_step(exchange, None)

    def _auth_refusal(self, arg: str) -> Optional[Tuple[Any, ...]]:
        """
        Why this AUTH is refused before any exchange (RFC 4954 4, 6), or
        C{None}; C{()} when the phase rule answered already.
        """
        s = self.session
        o = self.options
        if s.opening_command != "EHLO":
            return (503, "5.5.1", "Error: send EHLO first")
        if self._phase_refused("AUTH"):  # during a mail transaction
            return ()
        parts = arg.split(" ")
        if not arg or len(parts) > 2:
            return (501, "5.5.4", "Error: syntax: AUTH mechanism [initial-response]")
        if parts[0].upper() not in o.auth_methods:
            return (504, "5.5.4", "Error: unrecognized authentication type")
        if o.needs_upgrade and not s.secure:
            return (530, "5.7.0", "Error: must issue a STARTTLS command first")
        if not (s.secure or o.allow_insecure_auth):
            return (538, "5.7.11", "Error: encryption required for requested authentication mechanism")
        return None

    def _count_auth_refusal(self) -> None:
        """
        An AUTH that ended before C{on_auth} judged anything (cancelled,
        malformed, refused) counts toward C{max_auth_failures} like a failed
        password: AUTH never counts toward
        C{max_allowed_unauthenticated_commands}, so without this a client
        could loop on refused AUTHs unbounded.
        """
        if self.session.user is not None:
            return
        self._auth_failures += 1
        limit = self.options.max_auth_failures
        if limit and self._auth_failures >= limit:
            self._close_over_limit("auth_failures", "failed authentication attempts")

    def _auth_step(self, exchange: Any, line: Optional[bytes]) -> None:
        try:
            result = exchange.step(line)
        except SMTPError as e:
            err = e
            if isinstance(e, SASLAuthFailed) and self._auth_error is not None:
                err = self._auth_error
            counted, self._auth_error = self._auth_error is not None, None
            self._reply_lines(err.code, err.enhanced, err.lines, False)
            if not counted:  # cancelled or malformed (an XOAUTH2 error challenge was counted already)
                self._count_auth_refusal()
            return
        if isinstance(result, Challenge):
            self._auth = exchange
            self.phase = _AUTH
            self._emit(result.reply_line())
            return

        if self._auth_refused(result.username):
            self._count_auth_refusal()
            return

        def done(value: Any, error: Optional[BaseException], timed_out: bool) -> None:
            self._auth_done(exchange, result, value, error, timed_out)

        self._ask("on_auth", (self.session, result), done)

    def _auth_done(self, exchange: Any, credentials: Any, value: Any, error: Optional[BaseException],
                   timed_out: bool) -> None:
        s = self.session
        user, outcome = auth_outcome(value, error, timed_out, credentials.username)
        if outcome.ok:
            s.user = user
            self._send(outcome)
            self._log("info", "authenticated with {method}", method=credentials.method)
            self._notify("auth", s, credentials.method, credentials.username, 235)
            return
        if outcome.problem is not None:
            self._log("failure", "hook on_auth failed", error=self._trace or outcome.error)
            outcome.problem = None
        # Logged (with the username, for fail2ban) by the session log's "auth" observer.
        self._notify("auth", s, credentials.method, credentials.username, outcome.code)
        delay = self._auth_failed(credentials.username) if outcome.code == 535 else 0.0
        if delay:  # the tarpit: only this connection waits
            self._ask(SLEEP, (delay,), lambda v, e, t: self._auth_failure_reply(exchange, outcome))
            return
        self._auth_failure_reply(exchange, outcome)

    def _auth_failure_reply(self, exchange: Any, outcome: Any) -> None:
        self._auth_failures += 1
        limit = self.options.max_auth_failures
        if limit and self._auth_failures >= limit and outcome.code == 535:
            self._send(outcome)
            self._close_over_limit("auth_failures", "failed authentication attempts")
            return
        if outcome.code == 535 and exchange.supports_error_challenge:
            # RFC 7628: an error challenge, then 535 once the client acknowledges it.
            self._auth = exchange
            err = outcome.error if isinstance(outcome.error, SMTPError) else SMTPError(
                outcome.code, outcome.lines, outcome.enhanced)
            self._auth_error = err
            self.phase = _AUTH
            self._emit(exchange.reject(getattr(err, "challenge", None)).reply_line())
            return
        self._send(outcome)

    # -- STARTTLS (RFC 3207) ---------------------------------------------------------

    def _starttls_offered(self) -> bool:
        o = self.options
        return (not o.hide_starttls and not self.session.secure and "STARTTLS" not in o.disabled_commands
                and self.tls_available)

    def _cmd_STARTTLS(self, arg: str) -> None:
        if arg:
            self._reply(501, "5.5.4", "Error: syntax: STARTTLS")
            return
        if self.session.secure or self.tls_active:
            self._reply(503, "5.5.1", "Error: TLS already active")
            return
        if self.options.hide_starttls:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        if not self.tls_available:
            self._reply(454, "4.7.0", "Error: TLS not available on this connection")
            return
        # The driver loads the server's TLS context: it may fail (a bad file).
        self._ask("tls_context", (), self._tls_ready)

    def _tls_ready(self, value: Any, error: Optional[BaseException], timed_out: bool) -> None:
        if error is not None:
            self._log("failure", "TLS configuration failed", error=self._trace or error)
            self._reply(454, "4.7.0", "Error: TLS not available due to temporary reason")
            return
        # Plaintext pipelined after STARTTLS must never run inside TLS
        # (CVE-2011-0411): drop it with the rest of the read.
        leftover = self.reader.discard()
        if leftover:
            self._log("warn", "discarded {n} bytes of plaintext sent after STARTTLS", n=len(leftover))
        self._reply(220, "2.0.0", "Ready to start TLS")
        self.actions.append((START_TLS,))
        self.tls_active = True
        # RFC 3207 4.2: forget everything learnt from the client in plaintext.
        self._reset_transaction()
        s = self.session
        s.opening_command = s.host_name_appears_as = ""
        s.user = None
        self._auth = self._auth_error = None
        self.phase = _COMMAND

    def tls_up(self, info: Any) -> None:
        """The TLS handshake completed (C{info}: a C{TLSInfo} or C{None}): tell C{on_secure}."""
        if self._hungup:
            return  # already said goodbye (e.g. on_connect's 421): let the close finish
        s = self.session
        s.secure = True
        self.tls_active = True
        s.tls = info
        if info is not None:
            self._log("info", "TLS established: {version} {cipher}", version=info.version, cipher=info.cipher)
        self._notify("tls", s, None)
        # Refused at the greeting (implicit TLS): no on_secure for a client that can only QUIT.
        if "on_secure" in self.hooks and not self._hungup and self.phase is not _REFUSED:
            self._ask("on_secure", (s,), self._secure_done)

    def _secure_done(self, value: Any, error: Optional[BaseException], timed_out: bool) -> None:
        if error is None and (value is None or (isinstance(value, Reply) and value.code < 400)):
            return
        self._send(hook_outcome(value, error, timed_out, 250, "", ""))
        self._close()

    # -- XCLIENT / XFORWARD (Postfix) ----------------------------------------------------

    def _x_attributes(self, verb: str, enabled: bool, parse: Callable[[str], Dict[str, Any]],
                      arg: str) -> Optional[Dict[str, Any]]:
        """Check who may send XCLIENT/XFORWARD and parse it, or answer why not."""
        if not enabled:
            self._reply(502, "5.5.1", "Error: command not implemented")
        elif not self._trusted:
            self._reply(550, "5.7.0", "Error: insufficient authorization")
        elif not self._phase_refused(verb):
            try:
                return parse(arg)
            except XClientError as e:
                self._reply(501, "5.5.4", f"Error: {e}", cache=False)
        return None

    @staticmethod
    def _as_text(attrs: Dict[str, Any]) -> Dict[str, str]:
        return {k: str(v.value if v in (UNAVAILABLE, TEMPUNAVAIL) else v) for k, v in attrs.items()}

    def _cmd_XCLIENT(self, arg: str) -> None:
        attrs = self._x_attributes("XCLIENT", self.options.use_xclient, parse_xclient, arg)
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
        s.xclient = {**s.xclient, **self._as_text(attrs)}
        self._log("info", "XCLIENT: client is now {remote_address}", remote_address=s.remote_address)
        s.opening_command = ""
        s.host_name_appears_as = str(known.get("HELO", ""))
        s.user = known.get("LOGIN")
        self._trusted = False  # the new client is not the trusted proxy
        self._let_go()
        if not self._admit():  # per-address limits apply to the real client
            return
        self._connect_hook()  # policy sees the real client (on_connect, then 220)

    def _cmd_XFORWARD(self, arg: str) -> None:
        attrs = self._x_attributes("XFORWARD", self.options.use_xforward, parse_xforward, arg)
        if attrs is not None:
            s = self.session
            s._begin_xforward(*forwarded_client(attrs, s.remote_address, s.client_hostname), self._as_text(attrs))
            self._log("info", "XFORWARD: client is {remote_address}", remote_address=s.remote_address)
            self._reply(250, "2.0.0", "OK")

    # -- the simple ones --------------------------------------------------------------------

    def _cmd_RSET(self, arg: str) -> None:
        if self._junk("RSET"):  # past max_junk_commands: 421 and closed
            return
        if arg:
            self._reply(501, "5.5.4", "Error: syntax: RSET")
            return
        self._reset_transaction()
        self._reply(250, "2.0.0", "OK")
        self._shutdown_if_idle()

    def _cmd_NOOP(self, arg: str) -> None:
        if self._junk("NOOP"):  # past max_junk_commands: 421 and closed
            return
        self._reply(250, "2.0.0", "OK")

    def _cmd_QUIT(self, arg: str) -> None:
        self._reply(221, "2.0.0", "Bye")
        self._close()

    def _cmd_VRFY(self, arg: str) -> None:
        if self._junk("VRFY"):  # past max_junk_commands: 421 and closed
            return
        if not arg:
            self._reply(501, "5.5.4", "Error: syntax: VRFY address")
            return
        self._reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def _cmd_EXPN(self, arg: str) -> None:
        if self._junk("EXPN"):  # past max_junk_commands: 421 and closed
            return
        self._reply(502, "5.5.1", "Error: EXPN not implemented")

    def _cmd_HELP(self, arg: str) -> None:
        if self._junk("HELP"):  # past max_junk_commands: 421 and closed
            return
        self._reply(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")
