# -*- test-case-name: tests.test_oplog -*-
"""
A C{Logger} that puts the session id into the text of every session's line.

The id is a structured field (C{session_id}) for JSON consumers, but text
logs only show C{log_format} and C{log_system}; an operator correlating
lines with C{grep} needs the id in the text. Twisted's convention for
per-connection context is the system (C{[SMTP,0,127.0.0.1]} in legacy
logging), so the id goes there: C{[txsmtpsrv#info 3f2a9c1e0b7d4c55]},
leaving C{log_format} (what tests and JSON readers match) unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["SessionLogger", "session_system"]


def session_system(session_id: str, level: LogLevel) -> str:
    """The C{log_system} of a session's event: C{txsmtpsrv#info <id>}."""
    return f"txsmtpsrv#{level.name} {session_id}"


class SessionLogger(Logger):
    """
    A C{Logger} whose events with a C{session_id} get a C{log_system} naming
    it; events without one are emitted unchanged.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        sid = kwargs.get("session_id")
        if sid and "log_system" not in kwargs:
            kwargs["log_system"] = session_system(str(sid), level)
        super().emit(level, format, **kwargs)
