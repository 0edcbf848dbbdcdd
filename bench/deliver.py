#!/usr/bin/env python3
"""
The ``deliver`` scenario: ``twistd -n smtpsrv`` storing into its Maildir
under 20 concurrent sessions, while one more client sends NOOPs and times the
replies -- before and after, in the same run.

"Before" is another tree (by default ``git archive main`` of this checkout,
unpacked into a temporary directory), "after" is the working tree. Each run
starts a fresh daemon with ``--maildir`` in a fresh temporary directory on
the same file system as ``--dir`` (default: the system temp directory),
pinned to one CPU (the load generator on the other), and reports:

- messages per second (wall clock, accepted messages / load duration) -- the
  figure issue 13 sets a target on, so it is the headline here, with the
  usual caveat that wall-clock rates swing on shared machines; compare the
  two trees within one run;
- server CPU per message (``/proc/PID/stat``, all threads);
- the NOOP client's reply latency during the load: p50, p99, max (one NOOP
  every 5 ms, on its own connection, past EHLO).

Messages are 1 KiB, 100 per connection (the persist pattern), checked reply
by reply by ``_load.py``; failures are counted and reported. A benchmark,
not a test: nothing is asserted.

    python bench/deliver.py                       # main vs working tree, 3 repeats
    python bench/deliver.py --baseline HEAD~3 --messages 2000 --repeat 1
    python bench/deliver.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _load  # noqa: E402
from _common import export_tree, pin_cpus, proc_cpu_seconds  # noqa: E402

SESSIONS = 20
PER_CONNECTION = 100
NOOP_INTERVAL = 0.005


class Daemon:
    """``twistd -n smtpsrv --maildir`` from a given tree."""

    def __init__(self, tree: str, workdir: str, cpu: Optional[int]) -> None:
        env = dict(os.environ, PYTHONPATH=tree)
        self.maildir = os.path.join(workdir, "Maildir")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "smtpsrv", "-l", "tcp:0:interface=127.0.0.1", "--maildir", self.maildir,
             # The daemon's anti-abuse defaults would refuse the load itself: 21 connections from
             # one address (limit 20), 120 connections a minute, and the NOOP client's NOOPs
             # (cut off with 421 after 100, i.e. after half a second).
             "--max-clients-per-ip", "0", "--max-connect-rate", "0", "--max-junk-commands", "0"],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        self.port = 0
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode("utf-8", "replace")
            seen.append(line)
            if not line:
                break
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError("twistd did not start:\n" + "".join(seen))
        # Drain its log so the pipe never fills (one info line per message).
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_drain", None) is not None:
            self._drain.wait(timeout=10)


async def noop_prober(port: int, stop: asyncio.Event, latencies: List[float], tally: _load.Tally) -> None:
    try:
        proto = await _load.connect(port)
        await _load.ehlo(proto)
        while not stop.is_set():
            t0 = time.perf_counter()
            proto.write(b"NOOP\r\n")
            await proto.expect(250, "NOOP")
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(NOOP_INTERVAL)
        await _load.quit(proto)
    except (_load.SMTPFailure, OSError) as exc:
        tally.fail(f"NOOP client: {exc}")


async def load(port: int, messages: int, pid: int) -> Dict[str, Any]:
    payload = _load.make_message(1024)
    warm = _load.Tally()
    await _load.message_load(port, sessions=4, total=40, per_connection=10, payload=payload,
                             pipelining=False, tally=warm, deadline=60)
    tally = _load.Tally()
    latencies: List[float] = []
    stop = asyncio.Event()
    prober = asyncio.ensure_future(noop_prober(port, stop, latencies, tally))
    await asyncio.sleep(0.1)
    cpu0, t0 = proc_cpu_seconds(pid), time.perf_counter()
    await _load.message_load(port, sessions=SESSIONS, total=messages, per_connection=PER_CONNECTION,
                             payload=payload, pipelining=False, tally=tally, deadline=300)
    wall, cpu = time.perf_counter() - t0, proc_cpu_seconds(pid) - cpu0
    stop.set()
    await prober
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "delivered": tally.delivered, "failures": tally.failures + warm.failures,
        "errors": tally.errors[:3] + warm.errors[:3],
        "msgs_per_s": tally.delivered / wall, "cpu_us_per_msg": cpu / max(tally.delivered, 1) * 1e6,
        "noop_count": len(latencies), "noop_p50_ms": pct(0.50), "noop_p99_ms": pct(0.99),
        "noop_max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }


def run_once(tree: str, base_dir: str, messages: int, cpus: tuple) -> Dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="deliver-", dir=base_dir)
    try:
        daemon = Daemon(tree, workdir, cpus[0])
        try:
            res = asyncio.run(load(daemon.port, messages, daemon.proc.pid))
        finally:
            daemon.stop()
        res["stored"] = len(os.listdir(os.path.join(daemon.maildir, "new")))
        return res
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="main", help="git ref for the 'before' tree (default main)")
    p.add_argument("--baseline-tree", help="use this directory as the 'before' tree instead")
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the Maildirs go (default: system temp dir)")
    p.add_argument("--json", help="write all runs here")
    args = p.parse_args(argv)
    pinned = pin_cpus()
    tmp = tempfile.mkdtemp(prefix="deliver-trees-")
    try:
        before = args.baseline_tree or export_tree(args.baseline, tmp)
        trees = {"before": before, "after": ROOT}
        runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in trees}
        for rep in range(args.repeat):
            order = list(trees) if rep % 2 == 0 else list(reversed(trees))
            for name in order:
                res = run_once(trees[name], args.dir or tempfile.gettempdir(), args.messages, pinned)
                runs[name].append(res)
                print(f"{name:6} run {rep + 1}: {res['msgs_per_s']:7.0f} msg/s  {res['cpu_us_per_msg']:6.0f} µs CPU/msg"
                      f"  NOOP p50 {res['noop_p50_ms']:.2f} p99 {res['noop_p99_ms']:.2f} max {res['noop_max_ms']:.1f} ms"
                      f"  ({res['delivered']} ok, {res['failures']} failed, {res['stored']} stored)", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ("msgs_per_s", "cpu_us_per_msg", "noop_p50_ms", "noop_p99_ms", "noop_max_ms")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    print(f"deliver: twistd smtpsrv -> Maildir, {SESSIONS} sessions, 1 KiB, {args.messages} messages, "
          f"median of {args.repeat}; before = {args.baseline_tree or args.baseline}, after = working tree")
    print(f"| figure | before | after | after/before |\n|---|---|---|---|")
    for k, label in zip(keys, ("messages/s", "server CPU µs/msg", "NOOP p50 ms", "NOOP p99 ms", "NOOP max ms")):
        b, a = med["before"][k], med["after"][k]
        print(f"| {label} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
    failures = sum(r["failures"] for rs in runs.values() for r in rs)
    if failures:
        print(f"FAILURES: {failures}; first errors: {[r['errors'] for rs in runs.values() for r in rs][:3]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "median": med}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
