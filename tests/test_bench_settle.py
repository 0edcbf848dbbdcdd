# -*- test-case-name: tests.test_bench_settle -*-
"""
The pieces every bench script shares since the split: waiting for a server's
CPU time to stop moving (bench/_settle.py, one loop for the threaded and the
asyncio scripts) and the plain-text table (bench/_table.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from typing import Callable, Iterable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import _settle  # noqa: E402
import _table  # noqa: E402

FAST = _settle.Pace(interval=0.001, limit=5.0, quiet=0.0)


def reads(values: Iterable[float]) -> tuple[Callable[[int], float], list[float]]:
    """A C{read} giving C{values} in turn (then the last one for ever), and the list of what it gave."""
    given: list[float] = []
    source = iter(values)
    last = 0.0

    def read(pid: int) -> float:
        nonlocal last
        last = next(source, last)
        given.append(last)
        return last

    return read, given


def test_prompt_returns_at_the_first_still_poll() -> None:
    """With no quiet time it returns the CPU time at the first read that did not move."""
    read, given = reads([0.0, 1.0, 2.0, 2.0, 9.0])
    assert _settle.settle(1, FAST, read=read, resolution=0.5) == 2.0
    assert given == [0.0, 1.0, 2.0, 2.0]


def test_movement_below_the_resolution_is_none() -> None:
    read, given = reads([0.0, 0.1])
    assert _settle.settle(1, FAST, read=read, resolution=0.5) == 0.1
    assert given == [0.0, 0.1]


def test_quiet_waits_that_long_without_movement() -> None:
    """A quiet time counts from the last movement: a later one starts it again."""
    read, given = reads([0.0, 0.0, 1.0])
    pace = _settle.Pace(interval=0.001, limit=5.0, quiet=0.05)
    start = time.monotonic()
    assert _settle.settle(1, pace, read=read, resolution=0.5) == 1.0
    assert time.monotonic() - start >= 0.05
    assert len(given) > 3


def test_limit_ends_a_wait_that_never_settles() -> None:
    read, given = reads(itertools.count())
    pace = _settle.Pace(interval=0.001, limit=0.05, quiet=0.0)
    value = _settle.settle(1, pace, read=read, resolution=0.5)
    assert value == given[-1] and len(given) > 2


def test_async_settles_alike() -> None:
    read, given = reads([0.0, 1.0, 2.0, 2.0, 9.0])
    assert asyncio.run(_settle.settle_async(1, FAST, read=read, resolution=0.5)) == 2.0
    assert given == [0.0, 1.0, 2.0, 2.0]


def test_aligned_table() -> None:
    """Columns as wide as their widest cell: the first ones flush left, the figures flush right."""
    lines = _table.aligned(["scenario", "new", "old"], [["persist", "1,234", "5"], ["large", "7", "10,000"]])
    assert lines == [
        "scenario    new     old",
        "--------  -----  ------",
        "persist   1,234       5",
        "large         7  10,000",
    ]
    assert _table.aligned(["a", "b"], [["x", "y"]], left=2) == ["a  b", "-  -", "x  y"]
