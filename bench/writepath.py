"""
The reply write path (issue 13 part 2): instructions, system calls and CPU
per message of the txsmtpsrv sink, by source tree and by reactor.

Usage::

    python bench/writepath.py --trees main,. --reactors epoll,poll,select,asyncio \\
        --measure instructions,syscalls,cpu

``--trees`` takes git refs (exported with ``git archive``) or ``.`` for this
working tree. For each tree and reactor the sink of ``bench/_peers.py``
(``txsmtpsrv``) runs in its own process with that reactor installed:

- ``instructions``: under ``valgrind --tool=callgrind``; one connection sends
  lock-step 1 KiB messages (``--sessions`` for more); the process runs twice (``--short`` and
  ``--long`` messages) and the difference of the two totals divided by the
  difference of the message counts is the cost of one message (start-up and
  warm-up cancel out). Repeatable to a fraction of a percent.
- ``syscalls``: the same two runs under ``strace -f -c``: system calls per
  message by name (``epoll_ctl``, ``sendto``, ...).
- ``calls``: the same two runs under ``cProfile``: Python function calls
  per message (all, and a few of the reactor's and transport's by name).
- ``cpu``: no tool; 20 sessions (``--cpu-sessions``), 100 messages each, server CPU from /proc
  per message (noisy on a shared machine: wrap the run in
  ``flock /work/team/bench.lock``).

Nothing is asserted; the numbers go to stdout (and ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _load  # noqa: E402
from _common import NotReady, export_tree, proc_cpu_times, wait_ready  # noqa: E402

REACTORS = ("epoll", "poll", "select", "asyncio")
CPUS = sorted(os.sched_getaffinity(0))
START_TIMEOUT = 600.0  # a server's READY line; interpreter start under valgrind takes 10-60 s
#: Functions whose calls per message ``--measure calls`` shows (cProfile; all functions are summed).
WATCHED = {"log.py:callWithLogger", "abstract.py:doWrite", "abstract.py:write", "abstract.py:startWriting",
           "abstract.py:stopWriting", "tcp.py:doRead", "tcp.py:writeSomeData", "_sendnow.py:write",
           "epollreactor.py:doPoll", "pollreactor.py:doPoll", "selectreactor.py:doSelect", "base.py:runUntilCurrent"}


def serve(reactor_name: str) -> None:
    """Server process: install the reactor, then run the benchmark's txsmtpsrv sink."""
    import _peers

    if reactor_name == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    else:
        module = __import__(f"twisted.internet.{reactor_name}reactor", fromlist=["install"])
        module.install()
    _peers._die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import txsmtpsrv

    txsmtpsrv.__version__ = os.path.dirname(os.path.dirname(txsmtpsrv.__file__))  # shown in READY
    _peers.serve_txsmtpsrv()


def tree_of(ref: str, into: str) -> str:
    """``ref`` exported into a fresh directory under ``into``; ``.`` is this tree."""
    if ref == ".":
        return ROOT
    path = os.path.join(into, re.sub(r"[^A-Za-z0-9_.-]", "_", ref))
    os.makedirs(path)
    return export_tree(ref, path)


class Server:
    """One sink process, optionally under a tool (valgrind, strace)."""

    def __init__(self, tree: str, reactor: str, prefix: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
        self.stderr = tempfile.TemporaryFile()
        python = [sys.executable] + (prefix[1:] if prefix[:1] == ["python"] else [])
        prefix = [] if prefix[:1] == ["python"] else prefix
        self.proc = subprocess.Popen(
            prefix + python + [os.path.abspath(__file__), "--serve", reactor],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr, env=env, cwd=tree,
        )
        try:
            self.port, self.pid, self.detail = wait_ready(self.proc, START_TIMEOUT)
        except NotReady as e:
            self.stderr.seek(0)
            raise RuntimeError(f"server did not start: {e} {self.stderr.read()[-2000:]!r}") from None
        sys.stderr.write(f"  server: {' '.join(prefix[:1])} {self.detail}\n")

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far."""
        return proc_cpu_times(self.pid)


def load(port: int, sessions: int, total: int, per_connection: int, pipelining: bool = False) -> int:
    """Send ``total`` 1 KiB messages; return how many were accepted (raise on failures)."""
    tally = _load.Tally()
    payload = _load.make_message(1024)
    asyncio.run(_load.message_load(port, sessions=sessions, total=total, per_connection=per_connection,
                                   payload=payload, pipelining=pipelining, tally=tally, deadline=600))
    if tally.failures:
        raise RuntimeError(f"load failed: {tally.errors}")
    return tally.delivered


def tool_run(tree: str, reactor: str, tool: str, messages: int, workdir: str, pipelining: bool,
             sessions: int = 1) -> Any:
    """One server run under ``tool``: a warm-up, then ``messages`` messages over ``sessions`` connections."""
    out = os.path.join(workdir, f"{tool}.{reactor}.{messages}.{time.monotonic_ns()}")
    if tool == "instructions":
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    elif tool == "calls":
        prefix = ["python", "-m", "cProfile", "-o", out]
    else:
        prefix = ["strace", "-f", "-c", "-o", out]
    srv = Server(tree, reactor, prefix)
    try:
        load(srv.port, 1, 20, 20, pipelining)  # warm-up: first-use costs
        load(srv.port, sessions, messages, -(-messages // sessions), pipelining)
    finally:
        srv.stop()
    if tool == "calls":
        import pstats

        stats = pstats.Stats(out).stats  # type: ignore[attr-defined]
        return {f"{os.path.basename(file)}:{name}": data[1] for (file, _, name), data in stats.items()}
    with open(out) as f:
        text = f.read()
    if tool == "instructions":
        m = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
        assert m, "no callgrind summary"
        return int(m.group(1))
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) in (5, 6) and parts[3].isdigit():  # % seconds usecs/call calls [errors] name
            calls[parts[-1]] = int(parts[3])
    return calls


def per_message(tree: str, reactor: str, tool: str, short: int, long: int, workdir: str, pipelining: bool,
                sessions: int = 1) -> Any:
    a = tool_run(tree, reactor, tool, short, workdir, pipelining, sessions)
    b = tool_run(tree, reactor, tool, long, workdir, pipelining, sessions)
    n = long - short
    if tool == "instructions":
        return (b - a) / n
    return {k: round((b.get(k, 0) - a.get(k, 0)) / n, 2) for k in sorted(set(a) | set(b))
            if abs(b.get(k, 0) - a.get(k, 0)) / n >= 0.05}


def cpu_run(tree: str, reactor: str, sessions: int, total: int, pipelining: bool) -> tuple[float, float]:
    """Server (user, system) CPU µs per message: ``sessions`` connections, 100 messages each."""
    srv = Server(tree, reactor, [])
    if len(CPUS) >= 2:  # the server on one CPU, this client on the others
        os.sched_setaffinity(srv.pid, {CPUS[-1]})
        os.sched_setaffinity(0, set(CPUS[:-1]))
    try:
        load(srv.port, 2, 40, 10, pipelining)
        time.sleep(0.2)
        c0 = srv.cpu()
        done = load(srv.port, sessions, total, min(100, total // sessions), pipelining)
        time.sleep(0.2)
        c1 = srv.cpu()
        return (c1[0] - c0[0]) / done * 1e6, (c1[1] - c0[1]) / done * 1e6
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", metavar="REACTOR", help=argparse.SUPPRESS)
    p.add_argument("--trees", default="main,.", help="git refs or '.' (default main,.)")
    p.add_argument("--reactors", default="epoll", help=f"subset of {','.join(REACTORS)} (default epoll)")
    p.add_argument("--measure", default="instructions,syscalls", help="instructions,syscalls,calls,cpu")
    p.add_argument("--short", type=int, default=100, help="messages in the short tool run")
    p.add_argument("--long", type=int, default=500, help="messages in the long tool run")
    p.add_argument("--sessions", type=int, default=1, help="connections in the tool runs (default 1)")
    p.add_argument("--cpu-messages", type=int, default=10000)
    p.add_argument("--cpu-sessions", type=int, default=20)
    p.add_argument("--cpu-repeat", type=int, default=3)
    p.add_argument("--pipelining", action="store_true", help="pipeline MAIL/RCPT/DATA")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    results: list[dict[str, Any]] = []
    measures = args.measure.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {ref: tree_of(ref, tmp) for ref in args.trees.split(",")}
        for reactor in args.reactors.split(","):
            for ref, tree in trees.items():
                row: dict[str, Any] = {"tree": ref, "reactor": reactor}
                if "instructions" in measures:
                    row["instructions_per_msg"] = round(per_message(tree, reactor, "instructions", args.short,
                                                                    args.long, tmp, args.pipelining, args.sessions))
                if "calls" in measures:
                    calls = per_message(tree, reactor, "calls", args.short, args.long, tmp, args.pipelining,
                                        args.sessions)
                    row["python_calls_per_msg"] = {k: v for k, v in calls.items() if k in WATCHED}
                    row["python_calls_per_msg"]["all"] = round(sum(calls.values()), 1)
                if "syscalls" in measures:
                    row["syscalls_per_msg"] = per_message(tree, reactor, "syscalls", args.short, args.long,
                                                          tmp, args.pipelining, args.sessions)
                results.append(row)
            if "cpu" in measures:  # trees alternate, so that a busier minute hits both
                rows = results[-len(trees):]
                for _ in range(args.cpu_repeat):
                    for row, tree in zip(rows, trees.values()):
                        user, system = cpu_run(tree, reactor, args.cpu_sessions, args.cpu_messages, args.pipelining)
                        row.setdefault("cpu_us_per_msg", []).append(round(user + system))
                        row.setdefault("user_system", []).append((round(user), round(system)))
                for row in rows:
                    row["cpu_us_per_msg_median"] = sorted(row["cpu_us_per_msg"])[len(row["cpu_us_per_msg"]) // 2]
            for row in results[-len(trees):]:
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
