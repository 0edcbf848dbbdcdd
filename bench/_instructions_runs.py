"""
instructions.py's measurement: the fixed load of each scenario (L{Loads}), one
server (a L{Target}) started under callgrind -- or natively under strace --
and every scenario run on it in turn, each after a warm-up and a full
``gc.collect()``, counted from zero to the end of the load (L{run_server}).
What a count records is a L{Result}; the tables are ``_instructions_report.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import _load
from _callgrind import START_TIMEOUT, Callgrind, Strace, collect_garbage, gc_instructions, peer_argv, peer_env
from _server import ServerProcess
from _settle import QUIET, settle_async

MIB = 1024 * 1024


@dataclass
class Loads:
    """The fixed load of every scenario (small: callgrind is ~50-100x slower than native)."""

    message_size: int = 1024
    persist_total: int = 400
    persist_sessions: int = 4
    persist_per_connection: int = 100
    churn_total: int = 150
    churn_sessions: int = 10
    large_size: int = 10 * MIB
    large_total: int = 3
    large_sessions: int = 3

    def describe(self) -> dict[str, str]:
        size = f"{self.message_size} B"
        return {
            "persist": f"{self.persist_total} x {size}, {self.persist_sessions} sessions, "
            f"{self.persist_per_connection}/connection, lock-step",
            "pipelined": f"as persist, MAIL/RCPT/DATA pipelined where advertised",
            "churn": f"{self.churn_total} connections x 1 message of {size}, "
            f"{self.churn_sessions} sessions",
            "large": f"{self.large_total} x {self.large_size // MIB} MiB, "
            f"{self.large_sessions} sessions",
        }


@dataclass
class Target:
    """One server to measure: a label, a _peers.py kind and the tree on PYTHONPATH."""

    label: str
    kind: str
    tree: str
    reactor: str = ""  # a twistd --reactor name for the txsmtpsrv sink ("new@smtpsrv-epoll")


@dataclass
class Result:
    """One scenario on one target in one repeat."""

    label: str
    scenario: str
    repeat: int
    units: float = 0.0  # messages, connections or MiB delivered
    instructions: int = 0
    gc_instructions: int = 0  # part of ``instructions`` spent in the cyclic GC (gc_collect_main)
    syscalls: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def per_unit(self) -> Optional[float]:
        return self.instructions / self.units if self.units and not self.failures else None

    @property
    def per_unit_no_gc(self) -> Optional[float]:
        if not self.units or self.failures:
            return None
        return (self.instructions - self.gc_instructions) / self.units

    @property
    def gc_per_unit(self) -> Optional[float]:
        return self.gc_instructions / self.units if self.units and not self.failures else None


async def deliver(port: int, client: str, *, total: int, sessions: int, per_connection: int,
                  payload: bytes, pipelining: bool) -> _load.Tally:
    """
    One load through C{client}: "asyncio" (bench/_load.py, EHLO) or "smtp-source"
    (Postfix's, HELO; it cannot pipeline, so pipelined loads stay with asyncio).
    """
    tally = _load.Tally()
    if client == "smtp-source" and not pipelining:
        import _smtp_source

        await _smtp_source.message_load(port, sessions=sessions, total=total, per_connection=per_connection,
                                        size=len(payload), tally=tally, deadline=1800)
        return tally
    await _load.message_load(
        port, sessions=sessions, total=total, per_connection=per_connection,
        payload=payload, pipelining=pipelining, tally=tally, deadline=1800,
    )
    return tally


def scenario_plan(name: str, loads: Loads) -> tuple[dict[str, Any], dict[str, Any], float]:
    """(warm-up arguments, load arguments, units per delivered message)."""
    small = _load.make_message(loads.message_size)
    if name in ("persist", "pipelined"):
        pipe = name == "pipelined"
        warm = dict(total=40, sessions=2, per_connection=10, payload=small, pipelining=pipe)
        load = dict(total=loads.persist_total, sessions=loads.persist_sessions,
                    per_connection=loads.persist_per_connection, payload=small, pipelining=pipe)
        return warm, load, 1.0
    if name == "churn":
        warm = dict(total=20, sessions=2, per_connection=1, payload=small, pipelining=False)
        load = dict(total=loads.churn_total, sessions=loads.churn_sessions, per_connection=1,
                    payload=small, pipelining=False)
        return warm, load, 1.0
    if name == "large":
        big = _load.make_message(loads.large_size)
        warm = dict(total=1, sessions=1, per_connection=1, payload=big, pipelining=False)
        load = dict(total=loads.large_total, sessions=loads.large_sessions, per_connection=1,
                    payload=big, pipelining=False)
        return warm, load, loads.large_size / MIB
    raise ValueError(name)


async def measure(server: ServerProcess, count: Optional[Callgrind], scenario: str, loads: Loads,
                  repeat: int, strace_dir: Optional[str], client: str) -> Result:
    """
    One scenario on a running server: warm-up, full gc.collect(), then the load
    counted by C{count} (callgrind) or, natively, by strace into C{strace_dir}.
    """
    res = Result(server.label, scenario, repeat)
    warm, load, unit = scenario_plan(scenario, loads)
    tally = await deliver(server.port, client, **warm)
    if tally.failures:
        res.failures, res.errors = tally.failures, [f"warm-up: {e}" for e in tally.errors]
        return res
    collect_garbage(server.pid)
    await settle_async(server.pid, QUIET)
    tracer = None
    if strace_dir is not None:
        tracer = Strace(server.pid, os.path.join(strace_dir, f"{server.pid}.{scenario}"))
    else:
        assert count is not None
        count.start_count()
    t0 = time.monotonic()
    tally = await deliver(server.port, client, **load)
    await settle_async(server.pid, QUIET)
    res.seconds = time.monotonic() - t0
    if tracer is not None:
        res.syscalls = tracer.finish()
    else:
        assert count is not None
        res.instructions, dump = count.dump_count()
        res.gc_instructions = gc_instructions(dump)
    res.units = tally.delivered * unit
    res.failures, res.errors = tally.failures, tally.errors
    return res


def run_server(target: Target, scenarios: list[str], loads: Loads, repeat: int,
               outdir: Optional[str], strace_dir: Optional[str],
               progress: Callable[[str], None], client: str) -> list[Result]:
    """Start one server (under callgrind into ``outdir`` unless ``strace_dir``), run every scenario in order, stop it."""
    env = peer_env(target.tree)
    if target.reactor:
        env["TXSMTPSRV_BENCH_REACTOR"] = target.reactor
    server = ServerProcess(target.label, peer_argv(target.kind, outdir=outdir), env=env, cwd=target.tree)
    results: list[Result] = []
    try:
        server.wait_ready(START_TIMEOUT, mypyc="+mypyc" in target.label)
        count = Callgrind(server.pid, outdir) if outdir is not None else None
        for scenario in scenarios:
            res = asyncio.run(measure(server, count, scenario, loads, repeat, strace_dir, client))
            server.check_alive()
            results.append(res)
            what = (f"{sum(res.syscalls.values())} syscalls" if strace_dir
                    else f"{res.instructions:,} Ir")
            progress(f"  {target.label:>13} {scenario:<9} #{repeat}: {what} for {res.units:g} "
                     f"units, {res.seconds:.1f} s" + (f", FAILURES {res.errors}" if res.failures else ""))
    finally:
        server.stop(grace=60)
    return results
