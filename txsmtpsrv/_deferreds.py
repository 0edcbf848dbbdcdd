# -*- test-case-name: tests.test_deferreds -*-
"""
A Deferred idiom several modules need: wait for shared work without touching its result.

(Calling a hook that may return a value, a Deferred or a coroutine, or raise,
needs no helper: C{maybeDeferred} turns all of them into a Deferred.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["when_fired"]


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
