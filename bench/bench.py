#!/usr/bin/env python3
"""
Benchmark txsmtpsrv against its peers in one run: aiosmtpd, twisted.mail.smtp, and
(where their toolchains are installed) Node's smtp-server, go-smtp and Postfix's smtp-sink.

Each server runs as its own process on 127.0.0.1 (see ``_peers.py``), pinned
to one core; this process is the load generator (see ``_load.py``), pinned to
the other core when there are two.  Every figure is a *server-side* cost read
from ``/proc/PID`` around the load phase only -- CPU time (each thread's exact
run time from ``/proc/PID/task/TID/schedstat``, or utime + stime in 10 ms ticks
where that is missing or a thread ended) per message or per MiB, resident memory per idle connection, peak resident memory
while large messages stream through -- because on a shared, noisy machine the
CPU time a server spends per message is far steadier than any wall-clock rate.
Each scenario runs ``--repeat`` times (a fresh server process each time,
servers interleaved) and the median is reported, with txsmtpsrv/peer ratios and,
over several rounds, the lowest and highest ratio within one round.
``txsmtpsrv@NAME`` is the txsmtpsrv sink on twistd's reactor ``NAME``
(``smtpsrv-epoll``), measured beside the default one in the same run.
``txsmtpsrv+mypyc`` (also ``+mypyc@NAME``) is the mypyc-compiled build
(``bench/_mypyc.py``: a wheel built with ``TXSMTPSRV_MYPYC=1``, or ``--mypyc-tree``).

This is a benchmark, not a test: it never asserts timings.  It does check
every SMTP reply and reports runs that had failures.

    python bench/bench.py            # full run (~6-8 minutes on 2 cores with all six servers)
    python bench/bench.py --quick    # smoke run (~30 seconds)
    python bench/bench.py --json results.json
    python bench/bench.py --client smtp-source --servers txsmtpsrv,node,go-smtp
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _load  # noqa: E402
from _common import CPUClock, NotReady, median_interval, pin_cpus, proc_cpu_seconds, proc_status_kib, wait_ready  # noqa: E402
import _peers  # noqa: E402
import _smtp_source  # noqa: E402
import _mypyc  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
SUBJECT = "txsmtpsrv"
PEERS = tuple(k for k in _peers.KINDS if k != SUBJECT)


def base_kind(server: str) -> str:
    """C{txsmtpsrv+mypyc@smtpsrv-epoll} -> C{txsmtpsrv}: the _peers.py kind of a server name."""
    return _mypyc.split(server.partition("@")[0])[0]


def is_mypyc(server: str) -> bool:
    """C{txsmtpsrv+mypyc} (or C{txsmtpsrv+mypyc@NAME}): the mypyc-compiled build (bench/_mypyc.py)."""
    return _mypyc.split(server.partition("@")[0])[1]


#: The unpacked mypyc build for C{txsmtpsrv+mypyc} servers (set by main()).
MYPYC_TREE = ""


def is_subject(server: str) -> bool:
    """txsmtpsrv itself or txsmtpsrv on a named reactor (C{txsmtpsrv@NAME})."""
    return base_kind(server) == SUBJECT
CLIENTS = ("asyncio", "smtp-source")
#: Scenarios that smtp-source drives; the others keep the asyncio client (no idle/latency mode).
SMTP_SOURCE_SCENARIOS = ("persist", "churn", "large")
START_TIMEOUT = 30.0
STDERR_LINES = 25


# ---------------------------------------------------------------- configuration


@dataclass
class Config:
    """Workload sizes; ``quick()`` shrinks them for a smoke run."""

    repeat: int = 3
    pipelining: bool = False
    client: str = "asyncio"
    message_size: int = 1 * KIB
    persist_sessions: int = 20
    persist_per_connection: int = 100
    persist_total: int = 4000
    churn_sessions: int = 20
    churn_total: int = 2000
    large_size: int = 10 * MIB
    large_sessions: int = 4
    large_messages: int = 12
    idle_connections: int = 2000
    idle_concurrency: int = 32
    latency_transactions: int = 500
    #: Messages sent before persist/churn is measured (churn: half, one per connection).
    #: JIT runtimes need it: Node's persist messages cost ~360 µs in the first thousand,
    #: ~210 in the second, ~150 in the third and ~90-150 from then on.
    warmup_messages: int = 4000

    @classmethod
    def quick(cls) -> Config:
        """A run that exercises every scenario once, in well under a minute."""
        return cls(
            repeat=1,
            persist_total=2000,
            churn_total=400,
            large_messages=4,
            idle_connections=500,
            latency_transactions=100,
            warmup_messages=200,
        )


@dataclass(frozen=True)
class Figure:
    """One reported number: which scenario produces it and how to print it."""

    key: str
    scenario: str
    label: str
    unit: str
    digits: int
    ratio: bool = True  # False where the values are near zero and a ratio means nothing


def figures(cfg: Config) -> list[Figure]:
    """The table rows, in order (all are lower-is-better)."""
    size = f"{cfg.message_size // KIB} KiB"
    large = f"{cfg.large_size // MIB} MiB"
    return [
        Figure(
            "persist_cpu_us_per_msg",
            "persist",
            f"persist: {size}, {cfg.persist_per_connection} msg/conn, "
            f"{cfg.persist_sessions} sessions - server CPU per message",
            "µs",
            0,
        ),
        Figure(
            "churn_cpu_us_per_msg",
            "churn",
            f"churn: {size}, 1 msg/conn, {cfg.churn_sessions} sessions - server CPU per message",
            "µs",
            0,
        ),
        Figure(
            "large_cpu_ms_per_mib",
            "large",
            f"large: {large} messages, {cfg.large_sessions} sessions - server CPU per MiB",
            "ms",
            1,
        ),
        Figure(
            "large_peak_rss_mib",
            "large",
            f"large: peak server RSS while {large} messages stream",
            "MiB",
            1,
        ),
        Figure(
            "large_rss_growth_mib",
            "large",
            "large: peak RSS minus RSS before any large message",
            "MiB",
            1,
            ratio=False,
        ),
        Figure(
            "idle_kib_per_conn",
            "idle",
            f"idle: {cfg.idle_connections} connections after EHLO - server RSS per connection",
            "KiB",
            1,
        ),
        Figure(
            "latency_p50_us",
            "latency",
            f"latency: 1 client, lock-step, {size} - wall p50 per transaction",
            "µs",
            0,
        ),
    ]


SCENARIOS = ("persist", "churn", "large", "idle", "latency")


# ---------------------------------------------------------------- /proc readers


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def settle_cpu(pid: int, limit: float = 1.5) -> float:
    """
    Wait until the server's CPU time stops moving (it may still be closing
    connections after the last reply) and return it; bounded by ``limit`` s.
    """
    end = time.monotonic() + limit
    last = proc_cpu_seconds(pid)
    while time.monotonic() < end:
        await asyncio.sleep(0.03)
        now = proc_cpu_seconds(pid)
        if now == last:
            return now
        last = now
    return last


# ---------------------------------------------------------------- server processes


class ServerError(Exception):
    """A server process did not start or died."""


class ServerProcess:
    """One server subprocess: start, pin, read its READY line, stop (always)."""

    live: set[ServerProcess] = set()

    def __init__(self, kind: str, cpu: int | None) -> None:
        self.kind = kind
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.server_pid = 0  # from the READY line: the process that serves (may be a child)
        self.detail = ""
        self.stderr_file = tempfile.TemporaryFile()
        self.stderr_text = ""

    @property
    def pid(self) -> int:
        """The serving process, whose /proc figures are read (smtp-sink runs as a child)."""
        assert self.proc is not None
        return self.server_pid or self.proc.pid

    def command(self) -> list[str]:
        """The server's command line (a separate method so it can be swapped when debugging)."""
        return _peers.command(base_kind(self.kind))

    def start(self) -> None:
        env = _peers.server_env()
        reactor = self.kind.partition("@")[2]
        if reactor:  # txsmtpsrv@NAME: the txsmtpsrv sink on twistd's reactor NAME
            env["TXSMTPSRV_BENCH_REACTOR"] = reactor
        if is_mypyc(self.kind):  # the compiled build first on the path
            env["PYTHONPATH"] = os.pathsep.join((MYPYC_TREE, env["PYTHONPATH"]))
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=env,
            cwd=ROOT,
        )
        ServerProcess.live.add(self)
        if self.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        try:
            self.port, self.server_pid, self.detail = wait_ready(self.proc, START_TIMEOUT)
        except NotReady as e:
            exited = self.proc.returncode is not None
            raise ServerError(f"{self.kind}: {e}" + (f"\n{self.read_stderr()}" if exited else "")) from None
        if self.server_pid != self.proc.pid and not os.path.exists(f"/proc/{self.server_pid}/stat"):
            raise ServerError(f"{self.kind}: READY names pid {self.server_pid}, which is not running")
        if is_mypyc(self.kind) and "build=mypyc" not in self.detail:
            raise ServerError(f"{self.kind}: the server does not run the mypyc build ({self.detail})")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ServerError(
                f"{self.kind}: died with {self.proc.returncode}\n{self.read_stderr()}"
            )

    def read_stderr(self, head: int = 8000, tail: int = 2000) -> str:
        """What the server wrote to stderr: the start (first error) and the end."""
        self.stderr_file.flush()
        self.stderr_file.seek(0)
        text = self.stderr_file.read().decode(errors="replace")
        if len(text) <= head + tail:
            return text
        return f"{text[:head]}\n... ({len(text) - head - tail} characters left out) ...\n{text[-tail:]}"

    def stop(self) -> None:
        """Terminate, then kill; keep what it wrote to stderr."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr_text = self.read_stderr()
        self.stderr_file.close()
        ServerProcess.live.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        for srv in list(cls.live):
            try:
                srv.stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                if srv.proc is not None:
                    srv.proc.kill()


atexit.register(ServerProcess.stop_all)


# ---------------------------------------------------------------- scenarios


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
        raise ServerError(f"{srv.kind}: warm-up failed: {tally.errors}")


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
    await settle_cpu(srv.pid)
    clock = CPUClock(srv.pid)
    t0 = time.perf_counter()
    await send_load(srv, cfg, scenario=scenario, sessions=sessions, total=total,
                    per_connection=per_conn, size=cfg.message_size, tally=tally,
                    deadline=60 + total * 0.005)
    wall = time.perf_counter() - t0
    await settle_cpu(srv.pid)
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
    await settle_cpu(srv.pid)
    rss_before = proc_status_kib(srv.pid, "VmRSS")  # before any large message
    # One large message first, so first-use costs are not in the CPU figure.
    tally = _load.Tally()
    await send_load(srv, cfg, scenario="large", sessions=1, total=1, per_connection=1,
                    size=cfg.large_size, tally=tally, deadline=60)
    if tally.failures:
        raise ServerError(f"{srv.kind}: large warm-up failed: {tally.errors}")
    await settle_cpu(srv.pid)
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
    await settle_cpu(srv.pid)
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
        raise ServerError(f"{srv.kind}: idle warm-up failed: {tally.errors}")
    await asyncio.sleep(0.2)
    await settle_cpu(srv.pid)
    rss_before = proc_status_kib(srv.pid, "VmRSS")
    measured: dict[str, int] = {}

    async def measure() -> None:
        await settle_cpu(srv.pid)
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


def run_one(kind: str, scenario: str, repeat: int, cfg: Config, server_cpu: int | None) -> RunResult:
    """Start a fresh server, run one scenario against it, stop it (always)."""
    res = RunResult(kind, scenario, repeat)
    srv = ServerProcess(kind, server_cpu)
    t0 = time.perf_counter()
    try:
        srv.start()
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
                    server_cpu: int | None, log: Any) -> list[RunResult]:
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
    procs = {kind: ServerProcess(kind, server_cpu) for kind in servers}
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
        for srv in procs.values():
            srv.start()
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


# ---------------------------------------------------------------- reporting


def summarise(results: list[RunResult], cfg: Config, servers: list[str]) -> dict[str, Any]:
    """Medians over the runs without failures, and txsmtpsrv/peer ratios."""
    out: dict[str, Any] = {}
    for fig in figures(cfg):
        per_server: dict[str, Any] = {}
        for kind in servers:
            runs = [r for r in results if r.server == kind and r.scenario == fig.scenario]
            if not runs:
                continue
            clean = [r.values[fig.key] for r in runs if r.ok and fig.key in r.values]
            per_server[kind] = {
                "median": statistics.median(clean) if clean else None,
                "runs": [r.values.get(fig.key) if r.ok else None for r in runs],
                "failed_runs": sum(1 for r in runs if not r.ok),
                "spread_pct": (
                    (max(clean) - min(clean)) / statistics.median(clean) * 100
                    if len(clean) > 1 and statistics.median(clean) else None
                ),
            }
        ratios: dict[str, float | None] = {}
        rounds: dict[str, list[float]] = {}
        for sub in (k for k in servers if is_subject(k) and k in per_server):
            subject = per_server[sub]["median"]
            for peer in PEERS:
                peer_median = per_server.get(peer, {}).get("median")
                if fig.ratio and peer in per_server:
                    col = f"{sub}/{peer}"
                    ratios[col] = subject / peer_median if subject is not None and peer_median else None
                    rounds[col] = round_ratios(results, fig, sub, peer)
        if per_server:
            out[fig.key] = {
                "label": fig.label,
                "unit": fig.unit,
                "servers": per_server,
                "ratios": ratios,
                "round_ratios": rounds,
                # median of the per-round ratios and its 95 % interval (None: too few rounds)
                "round_ratio_ci": {col: median_ci(r) for col, r in rounds.items()},
            }
    return out


def median_ci(values: list[float]) -> list[float] | None:
    """C{[median, low, high]}: the median of C{values} and its 95 % interval (L{median_interval})."""
    ci = median_interval(values)
    return None if ci is None else [statistics.median(values), ci[0], ci[1]]


def round_ratios(results: list[RunResult], fig: Figure, subject: str, peer: str) -> list[float]:
    """
    The ratio in each round (repeat) where both ran cleanly: how much the ratio
    itself moves on this machine, which the ratio of medians hides.
    """
    def value(server: str, rep: int) -> float | None:
        for r in results:
            if r.server == server and r.scenario == fig.scenario and r.repeat == rep and r.ok:
                return r.values.get(fig.key)
        return None

    out = []
    for rep in sorted({r.repeat for r in results}):
        a, b = value(subject, rep), value(peer, rep)
        if a is not None and b:
            out.append(a / b)
    return out


def fmt_value(entry: dict[str, Any] | None, digits: int) -> str:
    if entry is None:
        return "-"
    if entry["median"] is None:
        return "FAILED"
    text = f"{entry['median']:.{digits}f}"
    if entry["failed_runs"]:
        text += "*"
    return text


def render_table(summary: dict[str, Any], cfg: Config, servers: list[str], meta: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        f"SMTP server benchmark - {meta['date']} - {meta['machine']}",
        f"server pinned to CPU {meta['server_cpu']}, load generator to CPU {meta['client_cpu']}; "
        f"{'pipelining where advertised' if cfg.pipelining else 'lock-step client for every server'}; "
        + (f"median of {meta['interleave']} interleaved slice(s) per server, all servers up at once"
         if meta.get("interleave") else f"median of {cfg.repeat} run(s)") + "; lower is better everywhere",
        f"client: {meta['client']}",
    ]
    for kind in servers:
        piped = meta["pipelining_advertised"].get(kind)
        note = "" if piped is None else f" (PIPELINING {'advertised' if piped else 'not advertised'})"
        lines.append(f"  {kind:13} {meta['servers'][kind]}{note}")
    lines.append("")
    ratio_cols = [f"{sub}/{p}" for sub in servers if is_subject(sub) for p in PEERS if p in servers]
    headers = ["figure", "unit"] + servers + [c.replace(SUBJECT, "tx") for c in ratio_cols]
    rows = []
    by_key = {f.key: f for f in figures(cfg)}
    for key, entry in summary.items():
        fig = by_key[key]
        row = [fig.label, fig.unit]
        for kind in servers:
            row.append(fmt_value(entry["servers"].get(kind), fig.digits))
        for col in ratio_cols:
            ratio = entry["ratios"].get(col)
            cell = f"{ratio:.2f}" if ratio is not None else "-" if col not in entry["ratios"] else "n/a"
            per_round = entry.get("round_ratios", {}).get(col, [])
            if ratio is not None and len(per_round) > 1:
                cell += f" [{min(per_round):.2f}-{max(per_round):.2f}]"
            row.append(cell)
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [str(c).rjust(w) for c, w in zip(row[2:], widths[2:])]
        return "  ".join(cells)
    lines.append(line(headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(r) for r in rows)
    if any(len(v) > 1 for e in summary.values() for v in e.get("round_ratios", {}).values()):
        lines.append("ratios: of the medians; [low-high]: the ratio within each round (both servers' "
                     "runs of the same repeat)")
    lines.extend(render_intervals(summary, by_key))
    lines.append("CPU: run time from /proc/PID/task/*/schedstat (ns), else utime+stime (10 ms ticks)")
    return "\n".join(lines)


def render_intervals(summary: dict[str, Any], by_key: dict[str, Figure]) -> list[str]:
    """
    The median of the per-round ratios with its 95 % confidence interval, for
    each ratio with enough rounds: whether a target such as "<= 1.0x Node" is
    met or missed beyond this machine's noise, or not decided by the run.
    """
    out = []
    for key, entry in summary.items():
        for col, ci in entry.get("round_ratio_ci", {}).items():
            if ci is not None:
                rounds = len(entry["round_ratios"][col])
                out.append(f"  {by_key[key].scenario:8} {col.replace(SUBJECT, 'tx'):40} "
                           f"{ci[0]:.2f} [{ci[1]:.2f}-{ci[2]:.2f}] ({rounds} rounds)")
    if out:
        out.insert(0, "per-round ratios: median [95 % confidence interval of the median, order statistics]")
    return out


def render_problems(results: list[RunResult]) -> str:
    """Failed runs, then what servers wrote to stderr (each distinct text once)."""
    out = []
    for r in results:
        if not r.ok:
            out.append(
                f"FAILED: {r.server} {r.scenario} run {r.repeat + 1}: {r.failures} failure(s); "
                + "; ".join(e.splitlines()[0] if e else e for e in r.errors[:3])
            )
            for e in r.errors:
                rest = e.strip().splitlines()[1:]
                out.extend("    " + line for line in rest[:STDERR_LINES])
    seen: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        text = r.stderr.strip()
        if text:
            # Timestamps differ from run to run; compare without them.
            key = re.sub(r"^\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4} ", "", text, flags=re.M)
            seen.setdefault((r.server, key), []).append(r)
    for (server, _), runs in seen.items():
        lines = runs[0].stderr.strip().splitlines()
        where = ", ".join(f"{r.scenario} run {r.repeat + 1}" for r in runs)
        out.append(f"stderr of {server} ({len(runs)} run(s): {where}):")
        out.extend("    " + line for line in lines[:STDERR_LINES])
        if len(lines) > STDERR_LINES:
            out.append(f"    ... {len(lines) - STDERR_LINES} more line(s) (see --json)")
    return "\n".join(out)


# ---------------------------------------------------------------- main


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU(s) ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--quick", action="store_true", help="small smoke run (1 repeat, smaller loads)")
    p.add_argument("--repeat", type=int, help="runs per scenario and server (default 3; median reported)")
    p.add_argument("--json", metavar="PATH", help="also write machine-readable results ('-' = stdout only)")
    p.add_argument("--servers", default=",".join((SUBJECT,) + PEERS),
                   help="comma-separated subset of: " + ", ".join((SUBJECT,) + PEERS)
                   + " (default: all; a server whose toolchain is missing is skipped with a note); "
                   "txsmtpsrv@NAME runs the txsmtpsrv sink on twistd's reactor NAME "
                   "(e.g. txsmtpsrv,txsmtpsrv@smtpsrv-epoll,twisted.mail); txsmtpsrv+mypyc (also "
                   "with @NAME) runs the mypyc-compiled build (built from this checkout, or --mypyc-tree)")
    p.add_argument("--mypyc-tree", metavar="DIR",
                   help="an unpacked mypyc build for txsmtpsrv+mypyc (default: build one, ~1 minute)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated subset of: " + ", ".join(SCENARIOS))
    p.add_argument("--pipelining", action="store_true",
                   help="pipeline MAIL/RCPT/DATA when the server advertises PIPELINING "
                        "(default: lock-step for every server, for a like-for-like comparison)")
    p.add_argument("--client", choices=CLIENTS, default="asyncio",
                   help="load generator for persist/churn/large: the built-in asyncio client "
                        "(default) or Postfix's smtp-source (C, HELO, lock-step; idle and latency "
                        "keep the asyncio client)")
    p.add_argument("--interleave", type=int, metavar="ROUNDS",
                   help="persist/churn only: start every server at once and measure in ROUNDS rounds of "
                        "short slices that take turns (see run_interleaved); medians and per-round "
                        "ratios are then over slices")
    p.add_argument("--verbose", "-v", action="store_true", help="print every run")
    args = p.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.servers:
        if s not in (SUBJECT,) + PEERS and not (is_subject(s) and (s.partition("@")[2] or is_mypyc(s))):
            p.error(f"unknown server {s!r}")
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if args.repeat is not None and not 1 <= args.repeat <= 50:
        p.error("--repeat must be between 1 and 50")
    if args.interleave is not None:
        if not 2 <= args.interleave <= 100:
            p.error("--interleave must be between 2 and 100")
        if set(args.scenarios) - {"persist", "churn"}:
            p.error("--interleave measures persist and churn only")
    if args.client == "smtp-source" and args.pipelining:
        p.error("smtp-source does not pipeline; --pipelining needs the asyncio client")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    if args.repeat is not None:
        cfg.repeat = args.repeat
    cfg.pipelining = args.pipelining
    cfg.client = args.client
    if cfg.client == "smtp-source":
        missing = _smtp_source.available()
        if missing is not None:
            print(f"--client smtp-source: {missing}", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nofile = _peers.raise_nofile(cfg.idle_connections + 1000)
    if nofile < cfg.idle_connections + 200:
        print(f"warning: RLIMIT_NOFILE is {nofile}; the idle scenario may fail", file=sys.stderr)
    server_cpu, client_cpu = pin_cpus()
    log = sys.stderr

    servers: list[str] = []
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "interleave": args.interleave,
        "servers": {},
        "pipelining_advertised": {},
        "unavailable": {},
        "client": (
            "Postfix smtp-source (HELO, lock-step) for "
            + "/".join(s for s in args.scenarios if s in SMTP_SOURCE_SCENARIOS)
            + "; asyncio client for the rest"
            if cfg.client == "smtp-source" else "asyncio (bench/_load.py, EHLO)"
        ),
    }
    global MYPYC_TREE
    if any(is_mypyc(s) for s in args.servers):
        if args.mypyc_tree:
            _mypyc.check_tree(args.mypyc_tree)
            MYPYC_TREE = os.path.abspath(args.mypyc_tree)
        else:
            MYPYC_TREE = _mypyc.build_tree()
        meta["mypyc_tree"] = MYPYC_TREE
    for kind in args.servers:
        error = check_available(kind)
        if error is None:
            servers.append(kind)
        else:
            meta["unavailable"][kind] = error
            print(f"skipping {kind}: {error}", file=log)
    if not servers:
        print("no server available", file=log)
        return 2

    results: list[RunResult] = []
    interrupted = False
    started = time.perf_counter()
    try:
        if args.interleave:
            for scenario in args.scenarios:
                for res in run_interleaved(servers, scenario, args.interleave, cfg, server_cpu, log):
                    results.append(res)
                    if res.extra.get("server"):
                        meta["servers"][res.server] = res.extra["server"]
                    if res.extra.get("pipelining_advertised") is not None:
                        meta["pipelining_advertised"][res.server] = res.extra["pipelining_advertised"]
        for rep in range(0 if args.interleave else cfg.repeat):
            for scenario in args.scenarios:
                # Rotate the order each repeat so no server always runs first/last.
                order = servers[rep % len(servers):] + servers[: rep % len(servers)]
                for kind in order:
                    res = run_one(kind, scenario, rep, cfg, server_cpu)
                    results.append(res)
                    if res.extra.get("server"):
                        meta["servers"][kind] = res.extra["server"]
                    if res.extra.get("pipelining_advertised") is not None:
                        meta["pipelining_advertised"][kind] = res.extra["pipelining_advertised"]
                    shown = ", ".join(f"{k}={v:.1f}" for k, v in res.values.items())
                    status = "ok" if res.ok else f"{res.failures} FAILURE(S)"
                    print(
                        f"[{time.perf_counter() - started:6.1f}s] run {rep + 1}/{cfg.repeat} "
                        f"{scenario:8} {kind:13} {status:12} {shown}",
                        file=log,
                        flush=True,
                    )
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; reporting what was measured", file=log)
    finally:
        ServerProcess.stop_all()

    for kind in servers:
        meta["servers"].setdefault(kind, "did not start")
    summary = summarise(results, cfg, servers)
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    table = render_table(summary, cfg, servers, meta)
    problems = render_problems(results)
    failed = any(not r.ok for r in results)
    notes = []
    if failed:
        notes.append("* = some runs had failures and were left out of the median; FAILED = all runs failed")
    if meta["unavailable"]:
        notes.extend(f"{k} not measured: {v}" for k, v in meta["unavailable"].items())
    notes.append(f"total time {meta['total_seconds']} s")

    if args.json != "-":
        print(table)
        if notes:
            print("\n" + "\n".join(notes))
        if problems:
            print("\n" + problems)
        if args.verbose:
            print("\nruns:")
            for r in results:
                print(f"  {r.server:13} {r.scenario:8} run {r.repeat + 1}: "
                      f"{json.dumps(r.values)} {json.dumps(r.extra, default=str)}")
    if args.json:
        doc = {
            "meta": meta,
            "config": asdict(cfg),
            "figures": summary,
            "runs": [asdict(r) for r in results],
            "failed": failed,
        }
        text = json.dumps(doc, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
