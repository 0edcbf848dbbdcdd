"""The shared Deferred idioms: hook results of every kind, and a waiter that leaves the result alone."""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from txsmtpsrv._deferreds import as_deferred, call_hook, when_fired


def _result(d: "Deferred[Any]") -> List[Any]:
    seen: List[Any] = []
    d.addBoth(seen.append)
    return seen


def test_as_deferred_turns_only_coroutines_into_deferreds() -> None:
    async def coro() -> int:
        return 7

    assert _result(as_deferred(coro())) == [7]
    plain = succeed(3)
    assert as_deferred(plain) is plain
    assert as_deferred(None) is None and as_deferred("x") == "x"


def test_call_hook_gives_a_deferred_for_values_coroutines_and_raises() -> None:
    async def coro(x: int) -> int:
        return x * 2

    def boom() -> None:
        raise ValueError("no")

    assert _result(call_hook(lambda x: x + 1, 1)) == [2]
    assert _result(call_hook(coro, 4)) == [8]
    (failure,) = _result(call_hook(boom))
    assert isinstance(failure, Failure) and failure.check(ValueError)


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
