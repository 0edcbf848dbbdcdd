"""
How bench.py runs its scenarios against server processes: a fresh server per
scenario and repeat (L{run_one}), or every server up at once, measured in
slices that take turns (L{run_interleaved}, C{--interleave}); the server's
command line and environment for a bench.py server name (reactor, mypyc
build). The scenarios themselves are ``_bench_scenarios.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import _peers
from _bench_config import Config, base_kind, is_mypyc
from _bench_scenarios import RunResult, measure_messages, run_scenario, warm_up
from _common import ROOT
from _server import ServerError, ServerProcess

START_TIMEOUT = 30.0


def start_server(kind: str, cpu: int | None, mypyc_tree: str) -> ServerProcess:
    """
    Spawn the server named C{kind} (C{txsmtpsrv@NAME}: on twistd's reactor NAME;
    C{txsmtpsrv+mypyc}: with the build in C{mypyc_tree} first on the path), pinned to
    C{cpu}; the caller waits for its READY line, so a failed start keeps its stderr.
    """
    env = _peers.server_env()
    reactor = kind.partition("@")[2]
    if reactor:  # txsmtpsrv@NAME: the txsmtpsrv sink on twistd's reactor NAME
        env["TXSMTPSRV_BENCH_REACTOR"] = reactor
    if is_mypyc(kind):  # the compiled build first on the path
        env["PYTHONPATH"] = os.pathsep.join((mypyc_tree, env["PYTHONPATH"]))
    return ServerProcess(kind, _peers.command(base_kind(kind)), env=env, cwd=ROOT, cpu=cpu)


def run_one(kind: str, scenario: str, repeat: int, cfg: Config, server_cpu: int | None,
            mypyc_tree: str) -> RunResult:
    """Start a fresh server, run one scenario against it, stop it (always)."""
    res = RunResult(kind, scenario, repeat)
    t0 = time.perf_counter()
    srv = start_server(kind, server_cpu, mypyc_tree)
    try:
        srv.wait_ready(START_TIMEOUT, mypyc=is_mypyc(kind))
        res.extra["server"] = srv.detail
        asyncio.run(run_scenario(srv, cfg, res))
        srv.check_alive()
    except ServerError as exc:
        res.failures += 1
        res.errors.append(str(exc))
    finally:
        srv.stop()
        res.stderr = srv.stderr_text
        res.wall_seconds = time.perf_counter() - t0
    return res


def run_interleaved(servers: list[str], scenario: str, cycles: int, cfg: Config,
                    server_cpu: int | None, mypyc_tree: str, log: Any) -> list[RunResult]:
    """
    persist/churn with every server up at once, measured in short slices that take
    turns: C{cycles} rounds, each giving every server (in a rotated order) one slice
    -- C{persist_sessions * persist_per_connection} messages (persist) or
    C{churn_total / cycles} connections (churn). A change in the machine's load then
    falls on every server alike instead of on whichever ran during it. One
    L{RunResult} per server and slice (C{repeat} = the round), so the median and the
    per-round ratios are over slices.
    """
    churn = scenario == "churn"
    if churn:
        sessions, per_conn = cfg.churn_sessions, 1
        size = max(sessions, cfg.churn_total // cycles)
    else:
        sessions, per_conn = cfg.persist_sessions, cfg.persist_per_connection
        size = sessions * per_conn
    procs: dict[str, ServerProcess] = {}
    results: list[RunResult] = []

    async def run() -> None:
        for kind, srv in procs.items():
            await warm_up(srv, cfg, scenario)
        for cycle in range(cycles):
            order = servers[cycle % len(servers):] + servers[: cycle % len(servers)]
            for kind in order:
                res = RunResult(kind, scenario, cycle)
                res.extra["server"] = procs[kind].detail
                await measure_messages(procs[kind], cfg, res, churn=churn, sessions=sessions, total=size,
                                       per_conn=per_conn)
                procs[kind].check_alive()
                results.append(res)
                shown = ", ".join(f"{k}={v:.1f}" for k, v in res.values.items())
                print(f"slice {cycle + 1}/{cycles} {scenario:8} {kind:13} "
                      f"{'ok' if res.ok else 'FAILED':6} {shown}", file=log, flush=True)

    try:
        for kind in servers:
            procs[kind] = start_server(kind, server_cpu, mypyc_tree)
            procs[kind].wait_ready(START_TIMEOUT, mypyc=is_mypyc(kind))
        asyncio.run(run())
    except ServerError as exc:
        failed = RunResult(servers[0], scenario, len(results))
        failed.failures, failed.errors = 1, [str(exc)]
        results.append(failed)
    finally:
        for kind, srv in procs.items():
            srv.stop()
            for res in results:
                if res.server == kind:
                    res.stderr = srv.stderr_text
    return results


def check_available(kind: str) -> str | None:
    """None if the server can run here, else why not (so it is skipped, not failed N times)."""
    return _peers.unavailable(base_kind(kind))
