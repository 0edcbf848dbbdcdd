"""when_fired: a waiter on shared work that leaves the work's result alone."""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txsmtpsrv._deferreds import when_fired


def _result(d: "Deferred[Any]") -> List[Any]:
    seen: List[Any] = []
    d.addBoth(seen.append)
    return seen


def test_when_fired_leaves_the_result_alone() -> None:
    work: Deferred[str] = Deferred()
    waiter = when_fired(work)
    later = _result(waiter)
    assert later == []
    work.callback("done")
    assert later == [None]
    assert _result(work) == ["done"]  # the original's result is untouched


def test_when_fired_fires_on_failure_without_swallowing_it() -> None:
    work: Deferred[None] = Deferred()
    waiter = when_fired(work)
    work.errback(Failure(RuntimeError("bad")))
    assert _result(waiter) == [None]
    (failure,) = _result(work)
    assert isinstance(failure, Failure) and failure.check(RuntimeError)
