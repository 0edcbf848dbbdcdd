# -*- test-case-name: tests.test_protocol_transaction -*-
"""
The mail transaction in the dialogue: MAIL, RCPT, DATA and BDAT (RFC 5321,
RFC 3030), the message body on its way to the data hook, and the verdict.

A body is decoded here (L{DotDecoder} for DATA, counted bytes for BDAT) and
handed to the driver as C{BODY} actions; the driver feeds them to the
L{MessageStream} the data hook reads. The final reply waits for both the
end of the body and the data hook's answer.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional, Tuple

from ._commands import (CommandError, fast_mail_argument, parse_auth_param, parse_bdat, parse_envid, parse_mail_argument,
                        parse_notify, parse_orcpt)
from ._cmd_session import SessionCommands
from ._core import ASKING, BODY, BODY_ABORT, BODY_END, BODY_START, CANCEL, VERDICT
from ._dotcodec import BodyCheck, DotDecoder
from ._junk import JunkCounter
from ._outcome import hook_outcome, lmtp_outcomes
from ._phases import COMMANDS, Phase, refusal
from ._session import Address, Envelope

#: What later chunks of a transaction get after one was refused for want of a recipient.
_EARLIER_CHUNK_REFUSED = (554, "5.5.1", "Error: transaction failed: an earlier chunk was refused")
# Enum member lookups cost ~0.4 us each on Python 3.11: the hot paths compare module constants.
_COMMAND = Phase.COMMAND
_TRANSACTION = Phase.TRANSACTION
_DATA = Phase.DATA
_BDAT_CHUNK = Phase.BDAT_CHUNK
_BETWEEN_CHUNKS = Phase.BETWEEN_CHUNKS
_VERDICT = Phase.VERDICT

__all__ = ["MailCommands"]

#: What MAIL's parameters set once it is accepted: the envelope's body_type, smtputf8, size,
#: dsn_ret, dsn_envid, requiretls, and the sender's submitter (L{MailCommands._mail_params}).
_MailValues = Tuple[str, bool, Optional[int], Optional[str], Optional[str], bool, Optional[str]]

_IN_TRANSACTION = frozenset({_TRANSACTION, _DATA, _BDAT_CHUNK, _BETWEEN_CHUNKS, _VERDICT})


class MailCommands(SessionCommands):
    """The commands of one mail transaction, and its body."""

    __slots__ = ()

    #: The junk-command count (a C{GuardCommands} slot; the C{Dialogue} has both): a delivery resets it.
    _junk_counter: Optional[JunkCounter]

    # -- the transaction's state ---------------------------------------------------

    def _settle(self) -> None:
        """Back to reading commands: in the phase the transaction's state says."""
        if self._body:
            self.phase = _BETWEEN_CHUNKS
        elif self.session.envelope.mail_from is not None:
            self.phase = _TRANSACTION
        else:
            self.phase = _COMMAND

    def _reset_transaction(self) -> None:
        if self._body and self.phase is _BETWEEN_CHUNKS:
            self._abandon_data()  # RSET or EHLO between BDAT chunks
        self._bdat_error = None
        s = self.session
        env = s.envelope
        if env.mail_from is not None or env._rcpt:  # (_rcpt: asking rcpt_to would make the list)
            s.envelope = Envelope()
        if s._extra is not None:  # XFORWARD describes one transaction (no call without extras: the hot path)
            s._end_xforward()
        if self.phase in _IN_TRANSACTION:
            self.phase = _COMMAND

    def _abandon_data(self) -> None:
        """A BDAT transaction was reset or failed: stop its stream and hook."""
        self._body = False
        self.actions.append((BODY_ABORT, "abandoned", ""))
        token, self._data_token = self._data_token, None
        self._cancel(token)

    # -- MAIL -------------------------------------------------------------------

    def _cmd_MAIL(self, arg: str) -> None:
        s = self.session
        o = self.options
        if not s.opening_command:
            self._reply(503, "5.5.1", "Error: send LHLO first" if o.lmtp else "Error: send HELO/EHLO first")
            return
        if o.needs_upgrade and not s.secure:
            self._reply(530, "5.7.0", "Error: must issue a STARTTLS command first")
            return
        if self._auth_needed and s.user is None:
            self._reply(530, "5.7.0", self._auth_required_text())
            return
        try:
            parsed = fast_mail_argument(arg, "FROM")  # (the common form; parse_mail_argument would try it too)
            mailbox, params = parsed if parsed is not None else parse_mail_argument(arg, "FROM", null_ok=True)
            values = self._mail_params(params) if params else None
        except CommandError as e:
            self._reply(e.code, e.enhanced, e.text, cache=False)
            return
        if not mailbox.isascii() and not (values is not None and values[1]):
            self._reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
            return
        address = Address(mailbox, params) if values is None or values[6] is None else \
            Address(mailbox, params, submitter=values[6])
        if "on_mail_from" in self.hooks:
            self._ask("on_mail_from", (s, address), partial(self._mail_answered, address, values))
        else:  # (no closure per command: a method, called at once)
            self._mail_answered(address, values, None, None, False)

    def _mail_answered(self, address: Address, values: Optional[_MailValues], value: Any,
                       error: Optional[BaseException], timed_out: bool) -> None:
        """MAIL's answer (the hook's, or the default): the reply, and the envelope's sender once accepted."""
        if value is None and error is None:  # the default answer: _answered's hot path, inline
            self._reply(250, "2.1.0", "Accepted")
        elif not self._answered(value, error, timed_out, 250, "2.1.0", "Accepted"):
            return
        # The envelope made when the last transaction ended (or the
        # session began) is this transaction's: one per transaction.
        s = self.session
        env = s.envelope
        env.mail_from = address
        if values is not None:
            env.body_type, env.smtputf8, env.size, env.dsn_ret, env.dsn_envid, env.requiretls, _ = values
        s.transaction += 1
        if self.phase is _COMMAND:
            self.phase = _TRANSACTION
        if self.observers["mail"]:
            self._notify("mail", s, address)

    def _mail_params(self, params: Dict[str, Optional[str]]) -> _MailValues:
        """
        Check MAIL parameters; the result is what they set in the envelope
        once MAIL is accepted: (body_type, smtputf8, size, dsn_ret, dsn_envid, requiretls),
        and the sender's C{submitter}.
        """
        o = self.options
        body_type, smtputf8, size, dsn_ret, dsn_envid, requiretls = "7BIT", False, None, None, None, False
        submitter: Optional[str] = None
        if self.session.opening_command == "HELO":
            raise CommandError(555, "5.5.4", "Error: MAIL parameters need EHLO")
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                    raise CommandError(501, "5.5.4", "Error: bad SIZE value")
                size = int(value)
                if o.size and size > o.size and o.reject_oversized:
                    raise CommandError(552, "5.3.4", "Error: message exceeds fixed maximum message size")
            elif key == "BODY":
                body = (value or "").upper()
                if body == "7BIT" or (body == "8BITMIME" and not o.hide_8bitmime) or (
                        body == "BINARYMIME" and not o.hide_chunking):
                    body_type = body
                else:
                    raise CommandError(501, "5.5.4", f"Error: unsupported BODY value {(value or '')[:20]}")
            elif key == "SMTPUTF8" and o.offers_smtputf8:
                if value is not None:
                    raise CommandError(501, "5.5.4", "Error: SMTPUTF8 takes no value")
                smtputf8 = True
            elif key == "RET" and not o.hide_dsn:
                ret = (value or "").upper()
                if ret not in ("FULL", "HDRS"):
                    raise CommandError(501, "5.5.4", "Error: RET must be FULL or HDRS")
                dsn_ret = ret
            elif key == "ENVID" and not o.hide_dsn:
                dsn_envid = parse_envid(value)
            elif key == "REQUIRETLS" and not o.hide_requiretls:
                if not self.session.secure:
                    raise CommandError(530, "5.7.10", "Error: REQUIRETLS needs a TLS connection")
                if value is not None:
                    raise CommandError(501, "5.5.4", "Error: REQUIRETLS takes no value")
                requiretls = True
            elif key == "AUTH" and self._auth_offered():
                # RFC 4954 5: taken from any client, but as AUTH=<> from one that did not authenticate.
                submitter = parse_auth_param(value)
                if self.session.user is None:
                    submitter = "<>"
            elif key not in o.mail_params:
                raise CommandError(555, "5.5.4", f"Error: unsupported MAIL parameter {key[:40]}")
        return body_type, smtputf8, size, dsn_ret, dsn_envid, requiretls, submitter

    # -- RCPT ---------------------------------------------------------------------

    def _cmd_RCPT(self, arg: str) -> None:
        s = self.session
        env = s.envelope
        o = self.options
        if env._rcpt is not None and len(env._rcpt) >= o.max_recipients:  # (_rcpt: no property call)
            self._reply(452, "4.5.3", "Error: too many recipients")
            return
        notify = orcpt = None
        try:
            parsed = fast_mail_argument(arg, "TO")
            mailbox, params = parsed if parsed is not None else parse_mail_argument(arg, "TO", null_ok=False)
            if params:  # (the usual RCPT has none: no loop over an empty dict)
                if s.opening_command == "HELO":
                    raise CommandError(555, "5.5.4", "Error: RCPT parameters need EHLO")
                dsn = not o.hide_dsn
                for key, value in params.items():
                    if key == "NOTIFY" and dsn:
                        notify = parse_notify(value)
                    elif key == "ORCPT" and dsn:
                        orcpt = parse_orcpt(value)
                    elif key not in o.rcpt_params:
                        raise CommandError(555, "5.5.4", f"Error: unsupported RCPT parameter {key[:40]}")
        except CommandError as e:
            self._reply(e.code, e.enhanced, e.text, cache=False)
            return
        if not mailbox.isascii() and not env.smtputf8:
            self._reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
            return
        address = Address(mailbox, params, notify, orcpt)
        if "on_rcpt_to" in self.hooks:
            self._ask("on_rcpt_to", (s, address), partial(self._rcpt_answered, address, env))
        else:  # (no closure per command: a method, called at once)
            self._rcpt_answered(address, env, None, None, False)

    def _rcpt_answered(self, address: Address, env: Envelope, value: Any, error: Optional[BaseException],
                       timed_out: bool) -> None:
        """RCPT's answer (the hook's, or the default): the reply, and the recipient added once accepted."""
        if value is None and error is None:  # the default answer: _answered's hot path, inline
            self._reply(250, "2.1.5", "Accepted")
        elif not self._answered(value, error, timed_out, 250, "2.1.5", "Accepted"):
            return
        s = self.session
        if s.envelope is env:  # not reset meanwhile
            rcpt = env._rcpt  # (rcpt_to without the property call; the list is made by the first)
            if rcpt is None:
                env._rcpt = [address]
            else:
                rcpt.append(address)
            if self.observers["rcpt"]:
                self._notify("rcpt", s, address)

    # -- DATA (RFC 5321 4.1.1.4) ------------------------------------------------------

    def _cmd_DATA(self, arg: str) -> None:
        env = self.session.envelope
        if arg:
            self._reply(501, "5.5.4", "Error: syntax: DATA")
            return
        if self.phase is not _TRANSACTION and self._phase_refused("DATA"):
            return
        if self._bdat_error is not None:  # RFC 3030 2: after a BDAT of this transaction, even a refused one
            self._reply(*COMMANDS["DATA"].refusals[_BETWEEN_CHUNKS])
            return
        if not env._rcpt:  # (rcpt_to without the property call)
            # RFC 5321 3.3 lets SMTP say 503 or 554; RFC 2033 4.2: LMTP MUST say 503.
            self._reply(503 if self.options.lmtp else 554, "5.5.1", "Error: no valid recipients")
            return
        if env.body_type == "BINARYMIME":
            self._reply(503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT")
            return
        self._reply(354, None, "End data with <CR><LF>.<CR><LF>")
        self.phase = _DATA
        self._deadline = self._clock() + self.options.socket_timeout
        self._decoder = DotDecoder(self.options.bare_line_endings == "reject")
        self._start_data()

    def _start_data(self) -> None:
        """Open the stream and ask the data hook; shared by DATA and BDAT."""
        self._data_dot = False
        self._data_bare = ""
        self._data_outcome = None
        self._body = True
        self.byte_length = 0
        self.refused_for_size = False
        if "on_data" in self.hooks:
            self._token += 1
            token = self._data_token = self._token
            waiting = self._waiting
            if waiting is None:
                waiting = self._waiting = {}
            waiting[token] = (self._data_answered, False)
            # Read no more until the driver has called the hook: an answer
            # it gives at once applies to the bytes that follow.
            self._asking = token
            self.holds |= ASKING
            self.actions.append((BODY_START, token, self.session))
        else:
            self._data_token = None
            self._data_outcome = (None, None, False, None)
            self.actions.append((BODY_START, None, self.session))

    def _data_answered(self, value: Any, error: Optional[BaseException], timed_out: bool) -> None:
        self._data_outcome = (value, error, timed_out, self._trace)
        self._data_token = None
        if self._data_dot:
            self._data_reply()

    def _body_chunk(self, payload: bytes) -> None:
        self.byte_length += len(payload)
        limit = self.options.size
        if limit and self.byte_length > limit and self.options.reject_oversized:
            self.refused_for_size = True
        self.actions.append((BODY, payload))

    def _body_bytes(self, data: bytes) -> None:
        decoder = self._decoder
        payload, rest = decoder.feed(data)
        if decoder.fault is not None and not self._data_bare:
            # Refuse before handing it on: a reader that streams the body on
            # must never be given the bytes that make it refused (smuggling).
            self._body_refused(decoder.fault)
        if payload:
            self._body_chunk(payload)  # only counted once the stream is refused
        if rest is None:
            return
        self._decoder = None
        if rest:  # pipelined commands after the dot
            self.reader.push_back(rest)
        self._body_ended()

    def _body_refused(self, fault: Optional[str]) -> None:
        """A bare CR/LF or a NUL (L{body_fault}): answered 550 5.6.0 at the end."""
        self._data_bare = fault or "Error: message refused"
        self.actions.append((BODY_ABORT, "bare", self._data_bare))

    def _body_ended(self) -> None:
        """The dot (or BDAT LAST) arrived: answer now, or once the data hook has."""
        self._data_dot = True
        self.actions.append((BODY_END,))
        if self._data_outcome is None and self._data_token is not None and (self.refused_for_size or self._data_bare):
            self.actions.append((CANCEL, self._data_token))  # the verdict is known: no need to wait
        if self._data_outcome is None:
            self.phase = _VERDICT
            self.holds |= VERDICT  # (_hold, inline) commands after the end wait for the verdict
        else:
            self._data_reply()

    def _end_replies(self) -> int:
        """
        How many replies the end of a message (DATA's dot, BDAT LAST) gets:
        LMTP answers once per accepted recipient (RFC 2033 4.2), SMTP once.
        """
        return max(1, len(self.session.envelope.rcpt_to)) if self.options.lmtp else 1

    def _data_reply(self) -> None:
        assert self._data_outcome is not None
        self._body = False
        self._data_dot = False
        value, error, timed_out, self._trace = self._data_outcome
        s = self.session
        o = self.options
        if self.refused_for_size:
            for _ in range(self._end_replies()):
                self._reply(552, "5.3.4", "Error: message exceeds fixed maximum message size")
            ok = False
        elif self._data_bare:
            for _ in range(self._end_replies()):
                self._reply(550, "5.6.0", self._data_bare)
            ok = False
        elif o.lmtp:
            # LMTP answers once per accepted recipient (RFC 2033 4.2), in order.
            outcomes, problem = lmtp_outcomes(value, error, timed_out, s.envelope.rcpt_to)
            if problem:
                self._log("error", "on_data returned {n} answers for {m} recipients", n=problem[0], m=problem[1])
            ok = False
            for outcome in outcomes:
                ok = self._send(outcome) or ok
        elif value is None and error is None:  # the default answer: _answered's hot path, inline
            self._reply(250, "2.0.0", "OK: message accepted")
            ok = True
        else:
            ok = self._answered(value, error, timed_out, 250, "2.0.0", "OK: message accepted")
        if ok:
            if self._junk_counter is not None:
                self._junk_counter.delivered()  # real work done: count junk afresh
        if ok and self.observers["message"]:  # logged by deliveries and observers, not here: the hot path
            self._notify("message", s, s.envelope, self.byte_length)
        self._reset_transaction()
        self.phase = _COMMAND
        self._release(VERDICT, True)
        if self._shutdown:
            self._shutdown_if_idle()

    # -- BDAT (RFC 3030) ------------------------------------------------------------------

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
        error: Optional[Tuple[int, str, str]]
        if self._auth_needed and self.session.user is None:  # RFC 4954 6; the chunk is still read
            error = (530, "5.7.0", self._auth_required_text())
        else:
            error = refusal("BDAT", self.phase)
        if error is None:
            if not env._rcpt:  # (rcpt_to without the property call, as in DATA: no list made for none)
                error = (554, "5.5.1", "Error: no valid recipients")
            elif self._bdat_error is not None:
                error = self._bdat_error
            elif not self._body:
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
            self._deadline = self._clock() + self.options.socket_timeout
        if size == 0:
            self._settle()
            self._chunk_done()
            return
        self._chunk_left = size
        self.phase = _BDAT_CHUNK

    def _chunk_bytes(self, piece: bytes) -> None:
        self._chunk_left -= len(piece)
        if self._chunk_error is None and self._body:
            check = self._bdat_check  # judged before the reader gets it, as in DATA
            if check is not None and check.feed(piece) and not self._data_bare:
                self._body_refused(check.fault)
            self._body_chunk(piece)
        if not self._chunk_left:
            self._settle()
            self._chunk_done()

    def _chunk_done(self) -> None:
        """A whole chunk was read: answer it, or (LAST) wait for the verdict."""
        error = self._chunk_error
        last = self._chunk_last
        count = self._end_replies() if last else 1
        if error is None and self._body:
            check = self._bdat_check
            if last and check is not None and check.end() and not self._data_bare:
                self._body_refused(check.fault)
            if self.refused_for_size:
                error = (552, "5.3.4", "Error: message exceeds fixed maximum message size")
            elif self._data_bare:
                error = (550, "5.6.0", self._data_bare)
            elif self._data_outcome is not None and self._data_outcome[1] is not None:
                # The hook refused before the last chunk: its reply, now.
                value, err, timed_out, self._trace = self._data_outcome
                for _ in range(count):
                    self._send(hook_outcome(None, err, timed_out, 250, "", ""))
                self._chunk_failed((554, "5.6.0", "Error: message refused"), last)
                return
        if error is not None:
            for _ in range(count):
                self._reply(*error)
            self._chunk_failed(error, last)
            return
        if not last:
            self._reply(250, "2.0.0", f"{self.byte_length} octets received", cache=False)
            return
        self._body_ended()

    def _chunk_failed(self, error: Tuple[int, str, str], last: bool) -> None:
        """A failed chunk ends a LAST transfer; otherwise later chunks get C{error} too."""
        if last:
            self._reset_transaction()
        elif self._body:
            self._bdat_error = error  # RFC 3030 2: the transaction failed
        elif self.session.envelope.mail_from is not None:
            # A chunk refused before a recipient was accepted is lost, so no later chunk may
            # end the message without it; "no valid recipients" would no longer be why.
            self._bdat_error = _EARLIER_CHUNK_REFUSED

