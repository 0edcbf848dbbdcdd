"""
Waiting for a server's CPU time to stop moving before a count starts or ends:
after the last reply a server may still be closing connections, and that work
belongs to the load. One loop for every script, driven with C{time.sleep}
(threaded clients, L{settle}) or C{asyncio.sleep} (asyncio clients,
L{settle_async}), so the two cannot drift apart.

Two paces, by what the figure can afford: L{PROMPT} returns at the first poll
that saw no movement (bench.py and tls.py: /proc figures, a few ms of
settling per run); L{QUIET} waits for 0.4 s without movement
(instructions.py, ``tls.py --instructions``: one late timer inside a callgrind
count is a visible error, and a run is minutes anyway).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from _common import CLK_TCK, proc_cpu_seconds

#: Half a clock tick: L{proc_cpu_seconds} moves in whole ticks, so any smaller
#: difference between two reads is no movement at all.
HALF_TICK = 0.5 / CLK_TCK


@dataclass(frozen=True)
class Pace:
    """Poll every C{interval} s; done after C{quiet} s without movement, or after C{limit} s whatever happens."""

    interval: float
    limit: float
    quiet: float


PROMPT = Pace(interval=0.03, limit=1.5, quiet=0.0)
QUIET = Pace(interval=0.05, limit=60.0, quiet=0.4)


class _Settling:
    """
    The pauses to sleep between reads of C{read(pid)}, as an iterator, so that one
    loop serves both kinds of sleep; C{value} is the last read: the CPU time once it
    has moved less than C{resolution} for C{pace.quiet} seconds (or at C{pace.limit}).
    """

    def __init__(self, pid: int, pace: Pace, read: Callable[[int], float], resolution: float) -> None:
        self.pid, self.pace, self.read, self.resolution = pid, pace, read, resolution
        self.value = 0.0

    def __iter__(self) -> Iterator[float]:
        end = time.monotonic() + self.pace.limit
        last, since = self.read(self.pid), time.monotonic()
        self.value = last
        while time.monotonic() < end:
            yield self.pace.interval
            now = self.value = self.read(self.pid)
            if now - last >= self.resolution:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= self.pace.quiet:
                return


def settle(pid: int, pace: Pace = PROMPT, *, read: Callable[[int], float] = proc_cpu_seconds,
           resolution: float = HALF_TICK) -> float:
    """The server's CPU time by C{read} once it stops moving, waiting with C{time.sleep}."""
    settling = _Settling(pid, pace, read, resolution)
    for pause in settling:
        time.sleep(pause)
    return settling.value


async def settle_async(pid: int, pace: Pace = PROMPT, *, read: Callable[[int], float] = proc_cpu_seconds,
                       resolution: float = HALF_TICK) -> float:
    """L{settle} for a caller on an asyncio loop (its client keeps running while this waits)."""
    settling = _Settling(pid, pace, read, resolution)
    for pause in settling:
        await asyncio.sleep(pause)
    return settling.value
