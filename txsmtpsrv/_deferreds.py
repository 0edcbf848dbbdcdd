# -*- test-case-name: tests.test_deferreds -*-
"""
Two small Deferred idioms that several modules need.

The per-command and per-chunk paths (C{_protocol.SMTPServerProtocol._ask},
C{_data}'s chunk callback) test for a coroutine inline instead of calling
L{as_deferred}: a function call there costs every command or chunk.
"""

from __future__ import annotations

from types import CoroutineType
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred

__all__ = ["as_deferred", "call_hook", "when_fired"]


def as_deferred(result: Any) -> Any:
    """A hook's answer with an C{async def}'s coroutine turned into a Deferred; anything else unchanged."""
    return Deferred.fromCoroutine(result) if isinstance(result, CoroutineType) else result


def call_hook(method: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """Call a hook; whatever it returns (value, Deferred, coroutine) or raises, as a Deferred."""
    return maybeDeferred(lambda: as_deferred(method(*args)))


def when_fired(d: "Deferred[Any]") -> "Deferred[None]":
    """
    A new Deferred that fires (with C{None}) when C{d} fires, leaving C{d}'s
    own result alone: for several waiters on one piece of work.
    """
    after: Deferred[None] = Deferred()

    def fired(result: Any) -> Any:
        after.callback(None)
        return result

    d.addBoth(fired)
    return after
