# -*- test-case-name: tests.test_outcome -*-
"""
What a hook's answer means: the one place that turns a hook result into the
reply the client gets.

A hook answers with a value (C{None}, a L{Reply}, for C{on_auth} a user, for
an LMTP C{on_data} a list with one answer per recipient), or fails with an
L{SMTPError}, another exception, or by running past C{hook_timeout}. The
connection layer reduces Deferreds and coroutines to C{(value, error,
timed_out)}; this module maps that to an L{Outcome}: success or not, the
reply to send, and what (if anything) deserves a log line.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from ._errors import Reply, SMTPError

__all__ = ["LOCAL_ERROR", "Outcome", "auth_outcome", "hook_outcome", "lmtp_outcomes"]

LOCAL_ERROR = "Requested action aborted: local error in processing"


class Outcome:
    """
    A hook's answer, interpreted.

    @ivar ok: whether the hook accepted.
    @ivar code: the reply code to send.
    @ivar enhanced: the enhanced status code given or derived (or C{None}).
    @ivar lines: the reply's text lines.
    @ivar fixed: whether the reply is the server's own fixed text (then it
        may come from the reply cache) rather than the hook's.
    @ivar problem: C{None}; C{"timeout"} for a hook that ran out of time;
        C{"failure"} for an unexpected exception (a bug to log with its
        traceback: C{error}).
    """

    __slots__ = ("ok", "code", "enhanced", "lines", "fixed", "greeting", "problem", "error")

    def __init__(self, ok: bool, code: int, enhanced: Optional[str], lines: Sequence[str], fixed: bool,
                 greeting: bool = False, problem: Optional[str] = None, error: Optional[BaseException] = None
                 ) -> None:
        self.ok = ok
        self.code = code
        self.enhanced = enhanced
        self.lines = tuple(lines)
        self.fixed = fixed
        self.greeting = greeting
        self.problem = problem
        self.error = error

    def __repr__(self) -> str:
        return f"Outcome(ok={self.ok}, {self.code} {self.enhanced} {self.lines!r}, problem={self.problem})"


def _failed(error: BaseException, timed_out: bool, greeting: bool, name: str) -> Outcome:
    """An exception: the hook's own SMTP error, or a 4xx for our failure."""
    if isinstance(error, SMTPError):
        return Outcome(False, error.code, error.enhanced, error.lines, False, greeting)
    problem = "timeout" if timed_out else "failure"
    if greeting:  # RFC 5321 4.3.2: only 220, 421 or 554 may greet
        return Outcome(False, 421, "4.3.0", (f"{name} Service not available, try again later",), True, greeting,
                       problem, error)
    return Outcome(False, 451, "4.3.0", (LOCAL_ERROR,), True, greeting, problem, error)


def hook_outcome(value: Any, error: Optional[BaseException], timed_out: bool, code: int, enhanced: str,
                 text: str, *, name: str = "", greeting: bool = False, cache: bool = True) -> Outcome:
    """
    A hook answered C{value} or failed with C{error}: C{None} accepts with
    the default reply C{code enhanced text}, a L{Reply} gives its own
    (accepting below 400; without an enhanced code it borrows the command's
    when the classes match), an L{SMTPError} refuses with its reply, any
    other exception or value is our failure (451, or 421 as a greeting).

    @param name: the server name, for a greeting's 421.
    @param cache: whether the default reply may come from the reply cache.
    """
    if error is None:
        if value is None:
            return Outcome(True, code, enhanced or None, (text,), cache, greeting)
        if isinstance(value, Reply):
            enh = value.enhanced
            if enh is None and enhanced and enhanced[0] == str(value.code)[0]:
                enh = enhanced  # the command's own code, e.g. 2.1.5 for RCPT
            return Outcome(value.code < 400, value.code, enh, value.lines, False, greeting)
        error = TypeError(f"hook returned {value!r}; expected None or a Reply")
        timed_out = False
    return _failed(error, timed_out, greeting, name)


def lmtp_outcomes(value: Any, error: Optional[BaseException], timed_out: bool,
                  recipients: Sequence[Any]) -> Tuple[List[Outcome], Optional[Tuple[int, int]]]:
    """
    An LMTP data hook's answer as one outcome per accepted recipient (RFC
    2033 4.2), in order: a list or tuple gives one answer each (a value or
    an exception); anything else applies to all.

    @return: the outcomes, and C{(answers, recipients)} when the list had the wrong length.
    """
    problem = None
    if error is None and isinstance(value, (list, tuple)):
        if len(value) != len(recipients):
            problem = (len(value), len(recipients))
            value = [SMTPError(451, LOCAL_ERROR, "4.3.0")] * len(recipients)
        out = []
        for rcpt, item in zip(recipients, value):
            if isinstance(item, BaseException):
                out.append(hook_outcome(None, item, False, 250, "", ""))
            else:
                out.append(hook_outcome(item, None, False, 250, "2.0.0", f"OK: message accepted for <{rcpt}>",
                                        cache=False))
        return out, problem
    return [hook_outcome(value, error, timed_out, 250, "2.0.0", f"OK: message accepted for <{rcpt}>",
                         cache=False) for rcpt in recipients], None


def auth_outcome(value: Any, error: Optional[BaseException], timed_out: bool,
                 username: Any) -> Tuple[Any, Outcome]:
    """
    C{on_auth}'s answer: the user to keep (C{None} on failure) and the reply.

    C{True} keeps the user name, any other value is the user object; a
    Reply below 300 chooses the success text; C{None}, C{False}, a Reply of
    300 or more and an L{SMTPError} fail (535 unless they say otherwise);
    our own failure is temporary (RFC 4954 6: 454).
    """
    if value is True:
        value = username
    elif value is False:
        value = None
    if error is None and value is not None and not (isinstance(value, Reply) and value.code >= 300):
        if isinstance(value, Reply):  # a custom success message
            return username, Outcome(True, 235, value.enhanced or "2.7.0", value.lines, False)
        return value, Outcome(True, 235, "2.7.0", ("Authentication successful",), True)
    if error is None and isinstance(value, Reply):  # a refusal given as a Reply
        if value.code >= 400:
            return None, Outcome(False, value.code, value.enhanced, value.lines, False)
        return None, Outcome(False, 535, "5.7.8", value.lines, False)
    if error is None:  # None: fail closed
        return None, Outcome(False, 535, "5.7.8", ("Authentication credentials invalid",), False)
    if isinstance(error, SMTPError):  # kept: it may carry an XOAUTH2 error challenge
        return None, Outcome(False, error.code, error.enhanced, error.lines, False, error=error)
    return None, Outcome(False, 454, "4.7.0", ("Temporary authentication failure",), False,
                         problem="timeout" if timed_out else "failure", error=error)
