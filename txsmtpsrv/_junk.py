# -*- test-case-name: tests.test_junk -*-
"""
Count commands that move no mail, so a client cannot hold a connection
slot forever with a C{NOOP} every 59 seconds (Postfix's
C{smtpd_junk_command_limit}, 100 by default).

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

__all__ = ["JUNK_COMMANDS", "JunkCounter"]

#: Commands that count. HELO/EHLO do not: a client may say them after each STARTTLS.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})


class JunkCounter:
    """
    The junk commands of one connection since it last delivered a message.

    @param limit: the number of junk commands allowed; the next one is
        over the limit (0: no limit).
    """

    __slots__ = ("limit", "count")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def command(self, name: str) -> bool:
        """C{name} was received; return whether that takes the client past the limit."""
        if name not in JUNK_COMMANDS:
            return False
        self.count += 1
        return bool(self.limit) and self.count > self.limit

    def delivered(self) -> None:
        """A message was accepted: the client does real work, count afresh."""
        self.count = 0
