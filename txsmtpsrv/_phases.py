# -*- test-case-name: tests.test_phases -*-
"""
The phases of an SMTP/LMTP dialogue, and from which phases each command may
be given.

Every connection is in exactly one L{Phase}. Commands are read only in the
three command phases (L{Phase.COMMAND}, L{Phase.TRANSACTION},
L{Phase.BETWEEN_CHUNKS}); in the others the bytes are a SASL response, a
body, a chunk, or wait. L{COMMANDS} says, for every command, in which of
the command phases it runs and what the client gets in the others; the
dialogue consults it before it calls a handler::

    GREETING --greeted--> COMMAND --MAIL ok--> TRANSACTION --DATA ok--> DATA
    COMMAND <--RSET/EHLO/verdict-- TRANSACTION
    COMMAND --AUTH challenge--> AUTH --response--> COMMAND
    TRANSACTION --BDAT n--> BDAT_CHUNK --chunk read--> BETWEEN_CHUNKS --BDAT n--> BDAT_CHUNK
    DATA --dot--> VERDICT;  BDAT_CHUNK --LAST read--> VERDICT
    VERDICT --data hook answered--> COMMAND
    GREETING --5xx (but 521) instead of 220--> REFUSED --QUIT/421--> CLOSING
    any --QUIT/421/refusal--> CLOSING --connection lost--> CLOSED

In L{Phase.REFUSED} lines are read as commands too, but only QUIT runs: every
rule answers the others C{503} there (RFC 5321 3.1).

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

__all__ = ["Phase", "COMMAND_PHASES", "COMMANDS", "Rule", "WAIT_FOR_QUIT", "refusal"]


class Phase(enum.Enum):
    """Where a dialogue is; see the module docstring for the transitions."""

    #: Connected; the reverse lookup, C{on_connect} or the greeting is pending.
    GREETING = "greeting"
    #: Greeted, no mail transaction open: a command line is expected.
    COMMAND = "command"
    #: MAIL was accepted: RCPT, DATA, BDAT, RSET, ... are expected.
    TRANSACTION = "transaction"
    #: An AUTH challenge was sent: the next line is the client's SASL response.
    AUTH = "auth exchange"
    #: After 354: body bytes up to the terminating dot.
    DATA = "data body"
    #: After BDAT: the chunk's bytes.
    BDAT_CHUNK = "bdat chunk"
    #: A BDAT transaction between two chunks: BDAT, RSET, ... are expected.
    BETWEEN_CHUNKS = "between chunks"
    #: The body ended; its reply waits for the data hook's verdict.
    VERDICT = "awaiting verdict"
    #: A 5xx (554) was said instead of the greeting: QUIT gets 221, any other command 503 (RFC 5321 3.1).
    REFUSED = "greeting refused"
    #: The last reply (221, 421, a refused greeting) is queued; nothing more is read.
    CLOSING = "closing"
    #: The connection is gone.
    CLOSED = "closed"

    # Members are singletons: hash by identity (C-fast; Enum's hashes the name in Python).
    __hash__ = object.__hash__


#: The phases in which a command may run (lines are read as commands in L{Phase.REFUSED} too, to refuse them).
COMMAND_PHASES: FrozenSet[Phase] = frozenset({Phase.COMMAND, Phase.TRANSACTION, Phase.BETWEEN_CHUNKS})

_ALL = COMMAND_PHASES
_NEED_MAIL = (503, "5.5.1", "Error: need MAIL command")
#: Every command but QUIT after a refused greeting (RFC 5321 3.1).
WAIT_FOR_QUIT = (503, "5.5.1", "Error: connection refused, send QUIT")
_IN_TRANSACTION = (503, "5.5.1", "Error: not allowed during a mail transaction")

Reply3 = Tuple[int, str, str]


class Rule:
    """
    Where one command runs.

    @ivar phases: the command phases in which it is allowed.
    @ivar refusals: the reply in each other command phase, and in
        L{Phase.REFUSED} (L{WAIT_FOR_QUIT}) unless it runs there.
    @ivar deferred: whether its handler applies the rule itself, after
        checks that come first (DATA's syntax, whether AUTH or XCLIENT is
        offered at all; BDAT, which must read its chunk even when refused).
    """

    __slots__ = ("phases", "refusals", "deferred")

    def __init__(self, phases: FrozenSet[Phase], refusals: Optional[Mapping[Phase, Reply3]] = None,
                 deferred: bool = False) -> None:
        self.phases = phases
        self.refusals: Dict[Phase, Reply3] = dict(refusals or {})
        self.deferred = deferred
        missing = COMMAND_PHASES - phases - set(self.refusals)
        if missing:
            raise ValueError(f"no reply for {sorted(p.name for p in missing)}")
        if Phase.REFUSED not in phases:
            self.refusals.setdefault(Phase.REFUSED, WAIT_FOR_QUIT)


_NESTED = (503, "5.5.1", "Error: nested MAIL command")
_ONLY_OUTSIDE = {Phase.TRANSACTION: _IN_TRANSACTION, Phase.BETWEEN_CHUNKS: _IN_TRANSACTION}

#: Every command the dialogue knows, with its rule.
COMMANDS: Dict[str, Rule] = {
    "HELO": Rule(_ALL),
    "EHLO": Rule(_ALL),
    "LHLO": Rule(_ALL),
    "MAIL": Rule(frozenset({Phase.COMMAND}), {Phase.TRANSACTION: _NESTED, Phase.BETWEEN_CHUNKS: _NESTED}),
    "RCPT": Rule(frozenset({Phase.TRANSACTION}), {
        Phase.COMMAND: _NEED_MAIL,
        Phase.BETWEEN_CHUNKS: (503, "5.5.1", "Error: RCPT not allowed once BDAT has begun"),
    }),
    "DATA": Rule(frozenset({Phase.TRANSACTION}), {
        Phase.COMMAND: _NEED_MAIL,
        Phase.BETWEEN_CHUNKS: (503, "5.5.1", "Error: DATA not allowed after BDAT in one transaction"),
    }, deferred=True),
    "BDAT": Rule(frozenset({Phase.TRANSACTION, Phase.BETWEEN_CHUNKS}), {Phase.COMMAND: _NEED_MAIL}, deferred=True),
    "RSET": Rule(_ALL),
    "NOOP": Rule(_ALL),
    "QUIT": Rule(_ALL | {Phase.REFUSED}),
    "VRFY": Rule(_ALL),
    "EXPN": Rule(_ALL),
    "HELP": Rule(_ALL),
    "AUTH": Rule(frozenset({Phase.COMMAND}), {
        Phase.TRANSACTION: (503, "5.5.1", "Error: AUTH not permitted during a mail transaction"),
        Phase.BETWEEN_CHUNKS: (503, "5.5.1", "Error: AUTH not permitted during a mail transaction"),
    }, deferred=True),
    "STARTTLS": Rule(_ALL),
    "XCLIENT": Rule(frozenset({Phase.COMMAND}), _ONLY_OUTSIDE, deferred=True),
    "XFORWARD": Rule(frozenset({Phase.COMMAND}), _ONLY_OUTSIDE, deferred=True),
}


def refusal(verb: str, phase: Phase) -> Optional[Reply3]:
    """The reply refusing C{verb} in C{phase}, or C{None} if it is allowed there."""
    rule = COMMANDS[verb]
    return None if phase in rule.phases else rule.refusals[phase]
