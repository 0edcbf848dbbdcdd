# -*- test-case-name: tests.test_dialogue -*-
"""
The dialogue's reading loop: buffered bytes to body bytes, BDAT chunk bytes
or command lines, and each command line to its handler (after the checks
every command shares: disabled commands, authentication required, UTF-8,
shutdown, the "command" observers, the phase it may run in).

The machinery it uses (replies, holds, hook questions) is L{_core}; the
handlers are L{_cmd_session} and L{_cmd_mail}; L{_dialogue.Dialogue} puts
them together and builds the verb table.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import ClassVar, Callable, Dict, FrozenSet, Tuple

from ._authgate import CLOSE as GATE_CLOSE, REFUSE as GATE_REFUSE, unauthenticated_command
from ._cmd_mail import MailCommands
from ._outcome import LOCAL_ERROR
from ._phases import Phase
from ._reader import TOO_LONG

# Enum member lookups cost ~0.4 us each on Python 3.11: the hot paths compare module constants.
_COMMAND = Phase.COMMAND
_AUTH = Phase.AUTH
_DATA = Phase.DATA
_BDAT_CHUNK = Phase.BDAT_CHUNK
_REFUSED = Phase.REFUSED

__all__ = ["CommandDispatch"]


class CommandDispatch(MailCommands):
    """Reads what the client sent and hands each command to its handler."""

    __slots__ = ()

    #: Command verb (upper-case bytes) -> (name, handler, phases it runs in); built by L{_dialogue}.
    _handlers: ClassVar[Dict[bytes, Tuple[str, Callable[..., None], FrozenSet[Phase]]]] = {}

    def _process(self) -> None:
        """Handle buffered input until it runs out or something holds us."""
        reader = self.reader
        # _hungup, not the phase: an observer may close the dialogue while a
        # handler runs, and the handler may then still set its next phase.
        # reader._buf is empty exactly when nothing is buffered (see
        # CommandReader.line): no call to learn that there is nothing to read.
        while reader._buf and not self.holds and not self._hungup:
            phase = self.phase
            if phase is _DATA:
                data = reader.take()
                if not data:
                    return
                self._body_bytes(data)
            elif phase is _BDAT_CHUNK:
                data = reader.take(self._chunk_left)
                if not data:
                    return
                self._chunk_bytes(data)
            else:
                line = reader.line()
                if line is None:
                    return
                if line is TOO_LONG:
                    self._line_too_long()
                else:
                    self._line(line)  # type: ignore[arg-type]

    def _line_too_long(self) -> None:
        if self._auth is None:
            self._verb = "UNKNOWN"
        else:  # RFC 4954 6: the exchange ends
            self._auth = self._auth_error = None
            self.phase = _COMMAND
            self._reply(500, "5.5.6", "Error: authentication exchange line is too long")
            return
        self._reply(500, "5.5.2", "Error: line too long")
        self._count_unrecognized()

    def _line(self, line: bytes) -> None:
        if self.phase is _AUTH:
            # A SASL response: never dispatched, observed or logged.
            exchange, self._auth = self._auth, None
            self.phase = _COMMAND
            self._auth_step(exchange, line)
            return
        word, sp, rest = line.partition(b" ")  # (bytes.find parses its arguments as a tuple: dearer)
        verb = word.upper()
        entry = self._handlers.get(verb)
        if entry is None:
            self._verb = "UNKNOWN"
            if not self._other_protocol(verb, line):
                self._unrecognized_command(verb)
            return
        name, handler, phases = entry
        self._verb = name
        o = self.options
        # After a refused greeting (RFC 5321 3.1) a disabled command or one
        # not in UTF-8 is refused like any other (503, counted), and QUIT runs.
        if name in o.disabled_commands and self.phase is not _REFUSED:
            self._reply(502, "5.5.1", "Error: command not implemented")
            return
        if self._auth_needed and self.session.user is None:
            self._unauthenticated, verdict = unauthenticated_command(
                name, self._unauthenticated, o.max_allowed_unauthenticated_commands)
            if verdict == GATE_CLOSE:
                self._close_over_limit("unauthenticated_commands", "unauthenticated commands")
                return
            if verdict == GATE_REFUSE:  # RFC 4954 6
                self._reply(530, "5.7.0", self._auth_required_text())
                return
        try:
            arg = rest.decode().strip(" ") if sp else ""  # (UTF-8, the default: no codec name to look up)
        except UnicodeDecodeError:
            if self.phase is not _REFUSED:
                self._reply(501, "5.5.2", "Error: command is not valid UTF-8")
                return
            arg = ""
        if self._shutdown and self._shutdown_if_idle():
            return
        if self.observers["command"]:
            # AUTH's argument may hold a password (initial response): not shown.
            self._notify("command", self.session, name, arg.split(" ", 1)[0] if name == "AUTH" else arg)
            if self._hungup:
                return  # an observer closed the server (or the connection) meanwhile
        if self.phase not in phases:
            self._phase_refused(name)
            return
        try:
            handler(self, arg)
        except Exception as e:
            # A bug of ours must cost one command, not the connection.
            self._log("failure", "error handling {verb}", verb=name, error=e)
            self._reply(451, "4.3.0", LOCAL_ERROR)
