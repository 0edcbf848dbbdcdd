# -*- test-case-name: tests.test_dialogue -*-
"""
The SMTP/LMTP dialogue as a sans-IO state machine.

L{Dialogue} = the machinery of L{_core} + the reading loop of
L{_dispatch} + the session commands of L{_cmd_session} + the mail
transaction of L{_cmd_mail}: one chain of single inheritance (CoreBase <-
GuardCommands <- SessionCommands <- MailCommands <- CommandDispatch), the
same method order as mixins, and what mypyc can compile (see setup.py). Feed it bytes, hook
answers, TLS-up, timer ticks and shutdown; perform its C{actions} and write
its C{out}. It never does I/O and imports nothing from Twisted, so it can be
tested (and fuzzed) with plain bytes: see C{tests/test_dialogue.py}.

Its phases and which command runs in which phase: L{_phases}.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, Tuple

from ._cmd_guard import SLEEP
from ._core import ABORT, ASK, BODY, BODY_ABORT, BODY_END, BODY_START, CANCEL, CLOSE, LOG, NOTIFY, START_TLS
from ._dispatch import CommandDispatch
from ._phases import COMMAND_PHASES, COMMANDS, Phase

__all__ = ["Dialogue", "Phase", "ASK", "CANCEL", "BODY_START", "BODY", "BODY_END", "BODY_ABORT", "START_TLS",
           "CLOSE", "ABORT", "NOTIFY", "LOG", "SLEEP"]


class Dialogue(CommandDispatch):
    """One connection's dialogue; see the module docstring of L{_core} for its inputs and actions."""

    __slots__ = ()


def _build_handlers() -> Dict[bytes, Tuple[str, Callable[..., None], FrozenSet[Phase]]]:
    table: Dict[bytes, Tuple[str, Callable[..., None], FrozenSet[Phase]]] = {}
    for name in dir(Dialogue):
        if name.startswith("_cmd_"):
            verb = name[5:]
            rule = COMMANDS.get(verb)
            if rule is None:
                raise AssertionError(f"command {verb} has a handler but no rule in _phases.COMMANDS")
            # A deferred rule is applied by the handler itself (see _phases.Rule).
            phases = COMMAND_PHASES if rule.deferred else rule.phases
            table[verb.encode("ascii")] = (verb, getattr(Dialogue, name), phases)
    if set(v.decode("ascii") for v in table) != set(COMMANDS):
        raise AssertionError("every command needs a handler and a rule in _phases.COMMANDS")
    return table


CommandDispatch._handlers = _build_handlers()
