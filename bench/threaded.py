#!/usr/bin/env python3
"""
Start, one smtplib message, stop -- 100 times in one process: what a test
suite pays per test for a threaded mail server.

Compares txsmtpsrv's ``ThreadedServer`` (one shared reactor thread, run by
crochet) with aiosmtpd's ``Controller`` (a new thread and event loop per
server) in the same run. Each kind runs in its own fresh process
(``--worker KIND``), so neither inherits the other's threads; the kinds are
interleaved over ``--repeat`` rounds and the medians reported. Wall-clock
time per cycle is the figure here (it is what a test waits for), so run it on
a quiet machine; the report also shows threads and file descriptors before
and after the cycles. A benchmark, not a test: nothing is asserted (the
leak check that *is* a test lives in tests/user_project/leak_tests.py).

    python bench/threaded.py                 # 100 cycles, 3 rounds
    python bench/threaded.py --cycles 300 --repeat 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List

KINDS = ("txsmtpsrv", "aiosmtpd")
MESSAGE = b"From: a@example.test\r\nSubject: bench\r\n\r\nx\r\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _send(host: str, port: int) -> None:
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.sendmail("a@example.test", ["b@example.test"], MESSAGE)


def _txsmtpsrv_cycle() -> Callable[[], None]:
    from txsmtpsrv.testing import ThreadedServer

    def cycle() -> None:
        with ThreadedServer() as server:
            _send(server.host, server.port)
            assert len(server.messages) == 1

    return cycle


def _aiosmtpd_cycle() -> Callable[[], None]:
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self) -> None:
            self.messages: List[bytes] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append(envelope.content)
            return "250 OK"

    def free_port() -> int:
        # Controller cannot listen on port 0 (its readiness probe connects to the port it was given).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def cycle() -> None:
        handler = Handler()
        controller = Controller(handler, hostname="127.0.0.1", port=free_port())
        controller.start()
        try:
            _send("127.0.0.1", controller.port)
            assert len(handler.messages) == 1
        finally:
            controller.stop()

    return cycle


def worker(kind: str, cycles: int) -> Dict[str, Any]:
    """Run the cycles in this process; return times (ms) and resource counts."""
    start = time.perf_counter()
    cycle = {"txsmtpsrv": _txsmtpsrv_cycle, "aiosmtpd": _aiosmtpd_cycle}[kind]()
    import_ms = (time.perf_counter() - start) * 1000
    times = []
    threads_after_first = fds_after_first = 0
    for i in range(cycles):
        t0 = time.perf_counter()
        cycle()
        times.append((time.perf_counter() - t0) * 1000)
        if i == 0:
            threads_after_first, fds_after_first = threading.active_count(), _fds()
    return {"kind": kind, "import_ms": import_ms, "times_ms": times,
            "threads_after_first": threads_after_first, "threads_after_last": threading.active_count(),
            "fds_after_first": fds_after_first, "fds_after_last": _fds()}


def _run_worker(kind: str, cycles: int) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--cycles", str(cycles)],
                          capture_output=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr.decode(errors='replace')}")
    result: Dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


def _summary(runs: List[Dict[str, Any]]) -> Dict[str, float]:
    """Median over runs of each run's statistics (the first cycle kept apart)."""
    def med(values: List[float]) -> float:
        return statistics.median(values)

    rest = [r["times_ms"][1:] for r in runs]
    return {
        "import_ms": med([r["import_ms"] for r in runs]),
        "first_ms": med([r["times_ms"][0] for r in runs]),
        "median_ms": med([statistics.median(t) for t in rest]),
        "mean_ms": med([statistics.fmean(t) for t in rest]),
        "p95_ms": med([sorted(t)[int(len(t) * 0.95) - 1] for t in rest]),
        "max_ms": med([max(t) for t in rest]),
        "total_s": med([sum(r["times_ms"]) / 1000 for r in runs]),
        "thread_growth": max(r["threads_after_last"] - r["threads_after_first"] for r in runs),
        "fd_growth": max(r["fds_after_last"] - r["fds_after_first"] for r in runs),
        "threads": runs[0]["threads_after_last"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.cycles)))
        return
    kinds = args.kinds.split(",")
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in kinds}
    for round_ in range(args.repeat):
        for kind in kinds if round_ % 2 == 0 else reversed(kinds):
            print(f"round {round_ + 1}/{args.repeat}: {kind} x {args.cycles}", file=sys.stderr)
            runs[kind].append(_run_worker(kind, args.cycles))
    print(f"start + one smtplib message + stop, {args.cycles} cycles per process, median of {args.repeat} "
          f"processes ({sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    print("| server | import | first cycle | median after the first | mean | p95 | max | whole run | "
          "threads at the end | threads/fds grown after cycle 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summaries = {}
    for kind in kinds:
        s = summaries[kind] = _summary(runs[kind])
        label = "txsmtpsrv ThreadedServer" if kind == "txsmtpsrv" else "aiosmtpd Controller"
        print(f"| {label} | {s['import_ms']:.0f} ms | {s['first_ms']:.1f} ms | {s['median_ms']:.1f} ms | {s['mean_ms']:.1f} ms | "
              f"{s['p95_ms']:.1f} ms | {s['max_ms']:.1f} ms | {s['total_s']:.2f} s | {s['threads']} | "
              f"{s['thread_growth']:+d} / {s['fd_growth']:+d} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "summary": summaries}, f, indent=1)


if __name__ == "__main__":
    main()
