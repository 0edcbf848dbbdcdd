# -*- test-case-name: tests.test_guard -*-
"""
Abuse limits in the dialogue: per-address connection limits at the
greeting, the greeting delay and early talkers, other protocols (HTTP, TLS
on a plaintext port), junk commands, and AUTH guessing (a L{_guard.Guard}
holds what connections share).

Nothing here sleeps: a delay is asked of the driver as the L{SLEEP} hook,
which it schedules on its clock; other clients are served meanwhile.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional

from ._addrlimits import OVER_RATE
from ._core import HOOK, CoreBase
from ._guard import Guard
from ._junk import JunkCounter
from ._phases import Phase
from ._session import Session
from ._sniff import HTTP_METHODS, is_http_request_line, looks_like_tls

__all__ = ["GuardCommands", "SLEEP"]

#: The hook name a delay is asked with: the driver answers C{None} after C{args[0]} seconds.
SLEEP = "sleep"

_GREETING = Phase.GREETING
_REFUSED = Phase.REFUSED


class GuardCommands(CoreBase):
    """The dialogue's side of the limits; L{CoreBase} calls these at the right moments."""

    __slots__ = ("_guard", "_client_key", "_sniff", "_pregreet", "_delaying", "_greet_waiting", "_screening",
                 "_junk_counter")

    def __init__(self, options: Any, session: Session, hooks: FrozenSet[str],
                 observers: Mapping[str, List[Any]], reply_cache: Dict[Any, bytes],
                 clock: Callable[[], float], *, tls_available: bool = False, tls_active: bool = False,
                 notify: Optional[Callable[..., None]] = None, guard: Optional[Guard] = None) -> None:
        """
        @param guard: the server's L{Guard} (per-address limits shared by
            its connections); by default one of this dialogue's own.
        """
        super().__init__(options, session, hooks, observers, reply_cache, clock, tls_available=tls_available,
                         tls_active=tls_active, notify=notify)
        self._guard = guard if guard is not None else Guard(self.options)
        self._client_key: Optional[str] = None  # counted under this address key while connected
        self._sniff: Optional[bytes] = None  # the first bytes, until they tell whether TLS comes
        self._pregreet = self._delaying = self._greet_waiting = self._screening = False
        self._junk_counter: Optional[JunkCounter] = None  # made at the first junk command

    # -- per-address connection limits -------------------------------------------------

    def _admit(self) -> bool:
        """
        The client (its real address: after PROXY, or XCLIENT) starts a
        session: count it, or answer C{421 4.7.0}, close and return False.
        """
        guard = self._guard
        limiter = guard.connections
        if not limiter.enabled:
            return True
        key = limiter.admission_key(self.session.remote_address)  # None: connection_limit_exceptions
        now = self._clock()
        why = limiter.admit(key, now)
        if why is None:
            self._client_key = key
            return True
        # Not a session for the observers (no "connect"): the operator's log says it once a minute.
        self._refusal("max_connect_rate" if why == OVER_RATE else "max_clients_per_ip", None)
        o = self.options
        text = ("Error: too many connections from your address per minute, try again later" if why == OVER_RATE
                else "Error: too many connections from your address, try again later")
        self._reply(421, "4.7.0", f"{o.name} {text}")
        self._close()
        return False

    def _let_go(self) -> None:
        """The counted session ended (or its client changed): count it out."""
        key, self._client_key = self._client_key, None
        if key is not None:
            self._guard.connections.release(key)

    # -- first bytes: TLS on a plaintext port, early talkers --------------------------------

    def _screen(self, data: bytes) -> bool:
        """
        Look at bytes that arrive before the client has sent a whole first
        line; return False when they ended the session.
        """
        if self._sniff is not None:
            first = self._sniff + data[:3]
            verdict = looks_like_tls(first)
            if verdict:
                self._refusal("tls_on_plaintext_port", self.session)
                self._close()  # no reply: it would only be garbage to a TLS stack
                return False
            self._sniff = first[:3] if verdict is None else None
        if self._pregreet and self.phase is _GREETING:
            # A 554 instead of the greeting, as from on_connect; what it sent
            # is then read as commands (each 503, QUIT 221).
            self._refusal("early_talker", self.session)
            self._reply(554, "5.7.1", f"{self.options.name} Error: you talk before your turn")
            self._greeting_refused(554)
        self._screening = self._sniff is not None or self._pregreet
        return True

    def _greeting_refused(self, code: int) -> None:
        """
        A refusal was said instead of the 220 greeting. After a 5xx the
        client must be able to QUIT (RFC 5321 3.1: after a 554 the server
        MUST wait for QUIT, answering any other command 503): a close
        unannounced would read as a 451 and be retried (RFC 5321 3.8). A 421
        announces the close (RFC 5321 4.2.3), a 521 may close (RFC 7504 3),
        and any other 4xx is retried anyway: those close at once.
        """
        if self._hungup:
            return  # an observer of the refusal closed the server (or the connection)
        if code < 500 or code == 521:
            self._close()
            return
        # Nothing waits now for the reverse lookup, the delay, on_connect or an
        # implicit-TLS on_secure. A cancelled question is never answered (its
        # token is gone): the holds of those that hold reading go with them,
        # else QUIT would never be read nor the client timed out.
        waiting = self._waiting
        held = sum(1 for _, hold in waiting.values() if hold) if waiting else 0
        self._cancel_all()
        if held:
            self._hook_waits -= held
            if not self._hook_waits:
                self.holds &= ~HOOK
        # Its turn starts now: a whole socket_timeout to QUIT, however long
        # on_connect took (the holds dropped above renew no deadline).
        self._deadline = self._clock() + self.options.socket_timeout
        self.phase = _REFUSED  # every rule but QUIT's answers 503 here (_phases)
        self._auth_needed = False  # 503, not 530: no AUTH can help
        self._delaying = self._greet_waiting = False
        self._greeted()  # QUIT is its turn now: not an early talker

    def _start_greeting_delay(self) -> None:
        """Hold the greeting C{greeting_delay} seconds, reading meanwhile to catch early talkers."""
        self._pregreet = self._delaying = self._screening = True
        self._ask(SLEEP, (self.options.greeting_delay,), self._delay_done, hold=False)

    def check_timeout(self) -> Optional[float]:
        """
        Before the greeting of a greeting delay the client is never timed
        out: the 220 waits on our own work (the delay, the reverse lookup,
        C{on_connect}), each bounded by its own limit, and reading goes on
        (early talkers are caught), so no C{HOOK} hold keeps the client safe.
        Only while that work is pending: a greeting that will never come (a
        bug of ours answered C{451} at once) leaves the usual timeout.
        """
        if self._pregreet and self._waiting and not self._hungup:
            again: float = self.options.socket_timeout  # (check again then)
            return again
        return super().check_timeout()

    def _delay_done(self, value: Any, error: Optional[BaseException], timed_out: bool) -> None:
        """The greeting delay passed: greet once the lookup and C{on_connect} allow."""
        self._delaying = False
        if self._greet_waiting:
            self._greet_waiting = False
            self._connect_hook()

    # -- commands -------------------------------------------------------------------------

    def _other_protocol(self, verb: bytes, line: bytes) -> bool:
        """An HTTP request line instead of a command: C{421} and close (return True)."""
        if verb not in HTTP_METHODS or not is_http_request_line(line):
            return False
        self._refusal("http_request", self.session)
        self._reply(421, "4.7.0", f"{self.options.name} Error: this is an SMTP server, not HTTP")
        self._close()
        return True

    def _junk(self, name: str) -> bool:
        """Count a junk command; past C{max_junk_commands}: C{421} and close (return True)."""
        junk = self._junk_counter
        if junk is None:
            junk = self._junk_counter = JunkCounter(self.options.max_junk_commands)
        if not junk.command(name):
            return False
        self._refusal("junk_commands", self.session)
        self._reply(421, "4.7.0", f"{self.options.name} Error: too many commands without mail, closing")
        self._close()
        return True

    # -- AUTH -----------------------------------------------------------------------------

    def _auth_client_key(self) -> Optional[str]:
        key = self._client_key
        if key is None:
            key = self._guard.connections.key(self.session.remote_address)
        return key

    def _auth_refused(self, username: Optional[str]) -> bool:
        """
        Whether AUTH (for C{username}, once known) is over a failure limit:
        then C{454 4.7.0} without the password being checked (return True).
        """
        tracker = self._guard.auth
        if not (tracker.max_per_address or tracker.max_per_user):
            return False
        key = self._auth_client_key()
        now = self._clock()
        if tracker.blocked(key, username, now) is None:
            return False
        # The operator's log shows the reply ("refused AUTH from ...: 454 ..."), per attempt.
        self._reply(454, "4.7.0", "Error: too many failed authentication attempts, try again later")
        return True  # the caller counts it toward max_auth_failures

    def _auth_failed(self, username: Optional[str]) -> float:
        """Count a failed AUTH; return the tarpit delay before its reply."""
        tracker = self._guard.auth
        if not tracker.enabled:
            return 0.0
        return tracker.failed(self._auth_client_key(), username, self._clock())

    def _greeted(self) -> None:
        """The greeting went out: talking is allowed now."""
        if self._pregreet:  # its turn starts now: a whole socket_timeout, however long the greeting waited
            self._deadline = self._clock() + self.options.socket_timeout
            self._pregreet = False
        self._screening = self._sniff is not None
