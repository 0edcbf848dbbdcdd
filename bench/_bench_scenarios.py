"""
bench.py's scenarios, each measured on a server that is already running:
persist and churn (CPU per message), large (CPU per MiB, peak RSS), idle (RSS
per connection) and latency (wall time per transaction), each after its
warm-up and between two settled CPU readings, so only the load is counted.
What a run records is a L{RunResult}; starting and stopping servers is
``_bench_runs.py``'s.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import _load
import _smtp_source
from _bench_config import KIB, MIB, SMTP_SOURCE_SCENARIOS, Config
from _common import CPUClock, proc_status_kib
from _server import ServerError, ServerProcess
from _settle import settle_async


@dataclass
class RunResult:
    """One scenario run on one server."""

    server: str
    scenario: str
    repeat: int
    values: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    delivered: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.failures == 0


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def send_load(
    srv: ServerProcess, cfg: Config, *, scenario: str, sessions: int, total: int,
    per_connection: int, size: int, tally: _load.Tally, deadline: float,
) -> None:
    """Messages of ``size`` bytes through the client ``--client`` chose for this scenario."""
    if cfg.client == "smtp-source" and scenario in SMTP_SOURCE_SCENARIOS:
        await _smtp_source.message_load(
            srv.port, sessions=sessions, total=total, per_connection=per_connection,
            size=size, tally=tally, deadline=deadline,
        )
        return
    await _load.message_load(
        srv.port,
        sessions=sessions,
        total=total,
        per_connection=per_connection,
        payload=_load.make_message(size),
        pipelining=cfg.pipelining,
        tally=tally,
        deadline=deadline,
    )


async def warm_up(srv: ServerProcess, cfg: Config, scenario: str) -> None:
    """
    Messages first, so first-use costs (imports, caches, a JIT's compilation) are not
    measured: C{cfg.warmup_messages} like the scenario's own before persist and churn, 40
    before the others (which warm up on their own traffic too).
    """
    tally = _load.Tally()
    if scenario == "persist":
        total, sessions, per_conn = cfg.warmup_messages, cfg.persist_sessions, cfg.persist_per_connection
    elif scenario == "churn":
        total, sessions, per_conn = cfg.warmup_messages // 2, cfg.churn_sessions, 1
    else:
        total, sessions, per_conn = 40, 2, 10
    await send_load(srv, cfg, scenario=scenario, sessions=sessions, total=total,
                    per_connection=per_conn, size=cfg.message_size, tally=tally,
                    deadline=60 + total * 0.01)
    if tally.failures:
        raise ServerError(f"{srv.label}: warm-up failed: {tally.errors}")


async def scenario_messages(
    srv: ServerProcess, cfg: Config, res: RunResult, *, churn: bool
) -> None:
    """persist / churn: CPU per message for 1 KiB messages."""
    scenario = "churn" if churn else "persist"
    await warm_up(srv, cfg, scenario)
    if churn:
        sessions, total, per_conn = cfg.churn_sessions, cfg.churn_total, 1
    else:
        sessions, total = cfg.persist_sessions, cfg.persist_total
        per_conn = cfg.persist_per_connection
    await measure_messages(srv, cfg, res, churn=churn, sessions=sessions, total=total, per_conn=per_conn)


async def measure_messages(srv: ServerProcess, cfg: Config, res: RunResult, *, churn: bool, sessions: int,
                           total: int, per_conn: int) -> None:
    """One measured load of small messages on a warmed-up server: CPU per message into C{res}."""
    scenario = "churn" if churn else "persist"
    tally = _load.Tally()
    await settle_async(srv.pid)
    clock = CPUClock(srv.pid)
    t0 = time.perf_counter()
    await send_load(srv, cfg, scenario=scenario, sessions=sessions, total=total,
                    per_connection=per_conn, size=cfg.message_size, tally=tally,
                    deadline=60 + total * 0.005)
    wall = time.perf_counter() - t0
    await settle_async(srv.pid)
    used = clock.read()
    cpu = float(used["seconds"])
    res.delivered, res.failures, res.errors = tally.delivered, tally.failures, tally.errors
    res.extra["pipelining_advertised"] = tally.pipelining_advertised
    key = "churn_cpu_us_per_msg" if churn else "persist_cpu_us_per_msg"
    if tally.delivered:
        res.values[key] = cpu / tally.delivered * 1e6
    res.extra.update(cpu_seconds=cpu, cpu_source=used["source"], tick_cpu_seconds=used["tick_seconds"],
                     user_seconds=used["user"], system_seconds=used["system"],
                     load_wall_seconds=wall, msgs_per_wall_second=tally.delivered / wall)


async def scenario_large(srv: ServerProcess, cfg: Config, res: RunResult) -> None:
    """large: CPU per MiB and peak RSS while 10 MiB messages stream through."""
    await warm_up(srv, cfg, "large")
    await settle_async(srv.pid)
    rss_before = proc_status_kib(srv.pid, "VmRSS")  # before any large message
    # One large message first, so first-use costs are not in the CPU figure.
    tally = _load.Tally()
    await send_load(srv, cfg, scenario="large", sessions=1, total=1, per_connection=1,
                    size=cfg.large_size, tally=tally, deadline=60)
    if tally.failures:
        raise ServerError(f"{srv.label}: large warm-up failed: {tally.errors}")
    await settle_async(srv.pid)
    clock = CPUClock(srv.pid)
    hwm_reset = reset_peak_rss(srv.pid)
    sampled_peak = proc_status_kib(srv.pid, "VmRSS")
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal sampled_peak
        while not stop.is_set():
            try:
                sampled_peak = max(sampled_peak, proc_status_kib(srv.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            try:
                await asyncio.wait_for(stop.wait(), 0.02)
            except asyncio.TimeoutError:
                pass

    sampler = asyncio.ensure_future(sample())
    tally = _load.Tally()
    t0 = time.perf_counter()
    try:
        await send_load(srv, cfg, scenario="large", sessions=cfg.large_sessions,
                        total=cfg.large_messages, per_connection=cfg.large_messages,
                        size=cfg.large_size, tally=tally, deadline=60 + cfg.large_messages * 10)
    finally:
        stop.set()
        await sampler
    wall = time.perf_counter() - t0
    await settle_async(srv.pid)
    used = clock.read()
    cpu = float(used["seconds"])
    peak = sampled_peak
    if hwm_reset:
        peak = max(peak, proc_status_kib(srv.pid, "VmHWM"))
    res.delivered, res.failures, res.errors = tally.delivered, tally.failures, tally.errors
    mib = tally.delivered * cfg.large_size / MIB
    if tally.delivered:
        res.values["large_cpu_ms_per_mib"] = cpu / mib * 1e3
    res.values["large_peak_rss_mib"] = peak / KIB
    res.values["large_rss_growth_mib"] = (peak - rss_before) / KIB
    res.extra.update(
        cpu_seconds=cpu,
        cpu_source=used["source"],
        load_wall_seconds=wall,
        mib_per_wall_second=mib / wall,
        rss_before_mib=rss_before / KIB,
        peak_from="VmHWM+sampling" if hwm_reset else "sampling every 20 ms",
    )


async def scenario_idle(srv: ServerProcess, cfg: Config, res: RunResult) -> None:
    """idle: resident memory per connection that has done EHLO and sits idle."""
    await warm_up(srv, cfg, "idle")
    tally = _load.Tally()
    # Warm the connection path itself (first-connection allocations are not per-connection).
    await _load.idle_connections(
        srv.port, count=50, concurrency=cfg.idle_concurrency, tally=tally,
        deadline=30, while_open=lambda: asyncio.sleep(0),
    )
    if tally.failures:
        raise ServerError(f"{srv.label}: idle warm-up failed: {tally.errors}")
    await asyncio.sleep(0.2)
    await settle_async(srv.pid)
    rss_before = proc_status_kib(srv.pid, "VmRSS")
    measured: dict[str, int] = {}

    async def measure() -> None:
        await settle_async(srv.pid)
        await asyncio.sleep(0.2)
        measured["rss_after"] = proc_status_kib(srv.pid, "VmRSS")

    tally = _load.Tally(max_failures=max(20, cfg.idle_connections // 20))
    t0 = time.perf_counter()
    opened = await _load.idle_connections(
        srv.port,
        count=cfg.idle_connections,
        concurrency=cfg.idle_concurrency,
        tally=tally,
        deadline=120,
        while_open=measure,
    )
    res.failures, res.errors = tally.failures, tally.errors
    res.delivered = opened
    if opened and "rss_after" in measured:
        res.values["idle_kib_per_conn"] = (measured["rss_after"] - rss_before) / opened
        res.extra.update(
            rss_before_mib=rss_before / KIB,
            rss_after_mib=measured["rss_after"] / KIB,
            connections=opened,
            open_wall_seconds=time.perf_counter() - t0,
        )


async def scenario_latency(srv: ServerProcess, cfg: Config, res: RunResult) -> None:
    """latency: one lock-step client; wall-clock time per transaction (noisy; for context)."""
    payload = _load.make_message(cfg.message_size)
    await warm_up(srv, cfg, "latency")
    tally = _load.Tally()
    samples = await _load.latency(
        srv.port, count=cfg.latency_transactions, payload=payload, tally=tally, deadline=60
    )
    res.delivered, res.failures, res.errors = tally.delivered, tally.failures, tally.errors
    if samples:
        samples.sort()
        res.values["latency_p50_us"] = statistics.median(samples) / 1e3
        res.extra["p90_us"] = samples[int(len(samples) * 0.9)] / 1e3


async def run_scenario(srv: ServerProcess, cfg: Config, res: RunResult) -> None:
    """The scenario C{res.scenario} on C{srv}, its figures into C{res}."""
    if res.scenario == "persist":
        await scenario_messages(srv, cfg, res, churn=False)
    elif res.scenario == "churn":
        await scenario_messages(srv, cfg, res, churn=True)
    elif res.scenario == "large":
        await scenario_large(srv, cfg, res)
    elif res.scenario == "idle":
        await scenario_idle(srv, cfg, res)
    elif res.scenario == "latency":
        await scenario_latency(srv, cfg, res)
    else:
        raise ValueError(res.scenario)
