# -*- test-case-name: tests.test_oplog -*-
"""
The operator's log: one line per refusal and one summary line per session,
in a fixed format that tools such as fail2ban can parse.

Every L{SMTPServer} writes these through its observers (L{SessionLog}),
so an embedding program gets the same lines as C{twistd smtpsrv}. The
lines (all carrying the session id in their system, see L{SessionLogger})::

    refused MAIL from 192.0.2.7: 530 5.7.0 Error: authentication required
    refused RCPT from 192.0.2.7: 550 5.1.1 No such user here
    refused DATA from 192.0.2.7: 552 5.3.4 Error: message exceeds fixed maximum message size
    refused AUTH PLAIN from 192.0.2.7 user="alice": 535 5.7.8 Authentication credentials invalid
    refused connection from 192.0.2.7: max_clients
    refused connection from 192.0.2.8: max_clients_per_ip (37 more in the last minute)
    connection closed: client=192.0.2.7 name=mail.example.org helo=mail.example.org tls=TLSv1.3
        user=- accepted=1 refused=0 bytes=1234 duration=0.412s

(the last is one line). Client-supplied values (user, helo, name) are
quoted and escaped as JSON strings when they hold anything but printable
non-space ASCII, and always come after the client address, so a crafted
user name cannot make a line name another address.

Refusals by a per-address limit (C{max_clients_per_ip}, C{max_connect_rate})
are logged once per address per minute, with the number held back since
the last line: a flood from one address must not flood the log.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Union

from twisted.logger import LogLevel

from ._addrlimits import OncePer, address_key
from ._core import REFUSAL_REPLY
from ._ipaddr import parse_ip
from ._logging import SessionLogger, instance_logger_wants

__all__ = ["SessionLog", "log_value"]

#: Verbs whose refusals are logged (with code and client address).
LOGGED_VERBS = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "AUTH", "HELO", "EHLO", "LHLO"})
#: Replies to these verbs end (or refuse) a message.
MESSAGE_VERBS = frozenset({"DATA", "BDAT"})
_MAX_TEXT = 200
#: Refusal reasons logged once per address per minute (the observers still see each one).
ONCE_A_MINUTE = frozenset({"max_clients_per_ip", "max_connect_rate"})


def log_value(value: Any) -> str:
    """C{value} for a C{key=value} field: bare when safe, else a JSON string; C{-} when empty."""
    if value is None or value == "":
        return "-"
    text = str(value)
    if text.isascii() and text.isprintable() and not any(c in text for c in ' "\\='):
        return text[:_MAX_TEXT]
    return json.dumps(text[:_MAX_TEXT])


def _reply_text(code: int, enhanced: Optional[str], text: str) -> str:
    first = text.split("\n", 1)[0][:_MAX_TEXT]
    first = first.encode("unicode_escape").decode("ascii") if not first.isprintable() else first
    return f"{code} {enhanced} {first}" if enhanced else f"{code} {first}"


class _Tally:
    """What the summary line of one session reports."""

    __slots__ = ("started", "accepted", "refused", "bytes", "auth_reply_logged")

    def __init__(self, started: float) -> None:
        self.started = started
        self.accepted = 0
        self.refused = 0
        self.bytes = 0
        self.auth_reply_logged = False


class SessionLog:
    """
    Observers of one L{SMTPServer} that write the operator's lines.

    Created by the server itself (C{server.session_log}); call L{stop} to
    silence it, e.g. when a program writes its own lines from observers.
    Sessions from C{ignored_hosts} are not logged.
    """

    log = SessionLogger()

    def __init__(self, server: Any) -> None:
        self._server = server
        # session id -> when it started (a float) until something is counted, then its _Tally:
        # an idle connection costs a float, not a tally.
        self._sessions: Dict[str, Union[float, _Tally]] = {}
        self._once = OncePer(60.0)  # bounded: at most 50,000 addresses remembered
        self._removers: List[Callable[[], None]] = [
            server.observe(event, handler) for event, handler in (
                ("connect", self._connect), ("disconnect", self._disconnect),
                ("auth", self._auth), ("refused", self._refused),
            )
        ]
        # "message" is observed only while a session is followed: a server
        # logging at warn calls no observer per message (issue 13).
        self._counting: Optional[Callable[[], None]] = None
        # Only refusals are logged: the server's own event for replies of 400
        # and more spares every accepted command the call (issue 13).
        self._removers.append(server._observe(REFUSAL_REPLY, self._reply))

    def stop(self) -> None:
        """Remove the observers: no more lines from this server."""
        for remove in self._removers:
            remove()
        self._removers = []
        if self._counting is not None:
            self._counting()
            self._counting = None

    def _quiet(self, address: str) -> bool:
        if not self._server.options.ignored_hosts:
            return False
        ip = parse_ip(address)  # dual-stack listeners: IPv4-mapped matches as IPv4
        if ip is None:
            return False
        return any(ip in net for net in self._server.options.ignored_hosts)

    def _connect(self, session: Any) -> None:
        # Every line but the refused connection's is info: a session that starts
        # while no observer keeps info lines is not followed (no entry per idle
        # connection in a server logging at warn; issue 13).
        if instance_logger_wants(self, LogLevel.info) and not self._quiet(session.remote_address):
            self._sessions[session.id] = self._server.reactor.seconds()
            if self._counting is None and self._removers:
                self._counting = self._server.observe("message", self._message)

    def _disconnect(self, session: Any) -> None:
        tally = self._sessions.pop(session.id, None)
        if tally is None:
            return
        if not self._sessions and self._counting is not None:
            self._counting()
            self._counting = None
        if not isinstance(tally, _Tally):
            tally = _Tally(tally)
        if not instance_logger_wants(self, LogLevel.info):
            return  # no observer keeps the line: not built (issue 13)
        log = self.log
        tls = getattr(session.tls, "version", None) if session.secure else None
        log.info(
            "connection closed: client={client} name={name} helo={helo} tls={tls} user={user} "
            "accepted={accepted} refused={refused} bytes={bytes} duration={duration:.3f}s",
            session_id=session.id,
            client=log_value(session.remote_address or "local"),
            name=log_value(session.client_hostname),
            helo=log_value(session.host_name_appears_as),
            tls=log_value(tls if tls else ("yes" if session.secure else None)),
            user=log_value(session.user),
            accepted=tally.accepted,
            refused=tally.refused,
            bytes=tally.bytes,
            duration=self._server.reactor.seconds() - tally.started,
            remote_address=session.remote_address,
        )

    def _tally(self, session_id: str) -> Optional[_Tally]:
        """The counts of a session being logged (made on first use), or None."""
        tally = self._sessions.get(session_id)
        if tally is None or isinstance(tally, _Tally):
            return tally
        tally = self._sessions[session_id] = _Tally(tally)
        return tally

    def _reply(self, session: Any, verb: str, code: int, enhanced: Optional[str], text: str) -> None:
        if code < 400 or verb not in LOGGED_VERBS:
            return
        tally = self._tally(session.id)
        if tally is None:
            return
        if verb in MESSAGE_VERBS:
            tally.refused += 1
        if code == 421:
            return  # the connection ends: logged as a refused connection with its reason
        if verb == "AUTH" and tally.auth_reply_logged:
            tally.auth_reply_logged = False  # the "auth" observer wrote this one, with the user
            return
        self.log.info("refused {verb} from {client}: {reply}", session_id=session.id, verb=verb,
                      client=session.remote_address or "local", reply=_reply_text(code, enhanced, text),
                      remote_address=session.remote_address, code=code)

    def _auth(self, session: Any, mechanism: str, username: Optional[str], code: int) -> None:
        if code < 400:
            return
        tally = self._tally(session.id)
        if tally is None:
            return
        tally.auth_reply_logged = True
        self.log.info("refused AUTH {mechanism} from {client} user={user}: {code}", session_id=session.id,
                      mechanism=mechanism, client=session.remote_address or "local",
                      user=json.dumps(str(username or "")[:_MAX_TEXT]), code=code,
                      remote_address=session.remote_address, username=username)

    def _message(self, session: Any, envelope: Any, size: int) -> None:
        tally = self._tally(session.id)
        if tally is not None:
            tally.accepted += 1
            tally.bytes += size

    def _refused(self, reason: str, address: str, session: Any) -> None:
        if session is not None:
            if session.id not in self._sessions and self._quiet(session.remote_address):
                return  # an ignored host
        elif self._quiet(address):
            return
        extra: Dict[str, Any] = {}
        if session is not None:
            extra["session_id"] = session.id
        more = ""
        if reason in ONCE_A_MINUTE:
            key = address_key(address, self._server.options.ipv6_prefix) or address
            held = self._once(f"{reason} {key}", self._server.reactor.seconds())
            if held is None:
                return
            extra["held_back"] = held
            more = f" ({held} more in the last minute)" if held else ""
        self.log.warn("refused connection from {client}: {reason}{more}", client=address or "local",
                      reason=reason, more=more, remote_address=address, **extra)
