#!/usr/bin/env python3
"""
Instruction counts per message: txsmtpsrv (working tree and a baseline tree)
against twisted.mail (and aiosmtpd), each server run under
``valgrind --tool=callgrind``, in the same run.

Why: on a shared 2-core VM the CPU time a server spends per message swings
15-40 % between runs of the same build (see bench/README.md), so a budget of a
few per cent cannot be settled with ``/proc`` CPU figures. The number of
instructions the server process executes for a fixed load does not depend on
what else runs on the machine: two runs agree to well under 1 %.

How: each server (``bench/_peers.py KIND``, the same sinks as ``bench.py``)
starts under callgrind with instrumentation OFF (``--instr-atstart=no``), so
interpreter start-up and imports are neither slowed down nor counted. For each
scenario the load generator (``_load.py``, running natively in this process)
first sends a small warm-up load; then ``callgrind_control -i on`` and ``-z``
start the count from zero, the load runs, the harness waits until the server's
CPU time stops moving (it may still be closing connections) and
``callgrind_control -d`` dumps the count. Only those instructions -- the load --
are reported: per message (per connection for churn) and per MiB for large,
with each server's ratio to twisted.mail measured in the same run.
``PYTHONHASHSEED=0`` keeps hashing (and so dict/set layouts) the same from run
to run.

The cyclic garbage collector: a full collection walks every object in the heap
(Twisted and OpenSSL bindings included), a lump of ~20 M instructions that may
fall inside one server's window and not another's -- 50k per message over a
400-message load, more than the differences being looked for. So the server
runs a full ``gc.collect()`` (on SIGUSR1, installed by a small wrapper around
``_peers.py``) before each counted load, so that every load starts from the
same collector state, and the report shows the figures twice: all
instructions, and without ``gc_collect_main`` (inclusive, from
``callgrind_annotate``) -- the code's own path length, which is what a change
to the code changes directly.

Scenarios (loads are small because callgrind slows Python down ~50-100x;
1 KiB messages as in bench.py unless said otherwise):

- ``persist``: 400 messages, 4 sessions, 100 messages per connection, lock-step;
- ``pipelined``: the same with MAIL/RCPT/DATA in one write where PIPELINING
  is advertised (txsmtpsrv; twisted.mail and aiosmtpd do not, so they run
  lock-step here and their figure equals persist's);
- ``churn``: 150 connections of one message each (connect, EHLO, MAIL, RCPT,
  DATA, QUIT), 10 sessions;
- ``large``: 3 messages of 10 MiB, 3 sessions (figure: instructions per MiB).

What it does not count: the kernel. Callgrind sees user-space instructions
only (Python, the C libraries, OpenSSL) -- not time in system calls, page
faults or scheduling. ``--syscalls`` therefore also runs every server natively
under ``strace -c -f`` (attached after the warm-up, detached after the load) and
reports system calls per message by name, so that "one send per reply, one
recv per read" can be compared separately. Syscall counts depend a little on
timing (how many sockets one ``epoll_wait`` returns, a ``recv`` that finds
nothing); instruction counts do too, a little, through the reactor's batching.

Run time on the 2-core VM: each server start under valgrind takes 15-40 s and
twisted.mail's large load ~80-120 s; the default (3 servers, 2 repeats, all
scenarios) takes 20-25 minutes, ``--repeat 1`` about half, ``--syscalls`` adds
a minute.

A benchmark, not a test: nothing is asserted; the exit status is 0, or 1 when
a run had failures (every reply is checked by ``_load.py``), or 2 when valgrind
is missing.

    python bench/instructions.py                        # baseline main vs working tree vs twisted.mail
    python bench/instructions.py --baseline 060bd64     # a git ref (git archive) ...
    python bench/instructions.py --baseline /work/bench-old   # ... or a directory holding txsmtpsrv/
    python bench/instructions.py --servers new,twisted.mail --scenarios persist --repeat 1
    python bench/instructions.py --servers new,new+mypyc,twisted.mail   # pure vs mypyc build (bench/_mypyc.py)
    python bench/instructions.py --syscalls --json out.json
    python bench/instructions.py --keep /tmp/cg       # keep the callgrind dumps for callgrind_annotate
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
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _load  # noqa: E402
import _mypyc  # noqa: E402
from _common import NotReady, export_tree, proc_cpu_seconds, wait_ready  # noqa: E402

MIB = 1024 * 1024
#: Runs bench/_peers.py KIND as __main__, after installing a SIGUSR1 handler that runs a full
#: gc.collect(): every measured load then starts from the same collector state (all
#: generations empty), so a full collection that happens to fall inside one server's window
#: and not another's does not decide the comparison.
PEER_WRAPPER = (
    "import gc, runpy, signal, sys; "
    "signal.signal(signal.SIGUSR1, lambda *_: gc.collect()); "
    "sys.argv = sys.argv[1:]; sys.path[0] = __import__('os').path.dirname(sys.argv[0]); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
START_TIMEOUT = 600.0  # interpreter start under valgrind (uninstrumented) takes 10-60 s
SCENARIOS = ("persist", "pipelined", "churn", "large")
PEERS = ("twisted.mail", "aiosmtpd")


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


class ServerError(Exception):
    """A server did not start, died, or a control command failed."""


# ---------------------------------------------------------------- trees and processes


def resolve_baseline(spec: str, scratch: str) -> tuple[str, str]:
    """(tree directory, description) for a directory holding txsmtpsrv/ or a git ref."""
    if os.path.isdir(os.path.join(spec, "txsmtpsrv")):
        return os.path.abspath(spec), f"directory {os.path.abspath(spec)}"
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", f"{spec}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return export_tree(commit, os.path.join(scratch, "baseline")), f"git {spec} ({commit})"


async def settle(pid: int, quiet: float = 0.4, limit: float = 60.0) -> None:
    """Wait until the server has used no CPU for ``quiet`` seconds (bounded by ``limit``)."""
    end = time.monotonic() + limit
    last, since = proc_cpu_seconds(pid), time.monotonic()
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        now = proc_cpu_seconds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


class Server:
    """One server process, optionally under callgrind; always stopped."""

    def __init__(self, target: Target, outdir: Optional[str]) -> None:
        self.target = target
        self.outdir = outdir  # callgrind output directory; None = run natively
        self.stderr = tempfile.TemporaryFile()
        self.port = 0
        self.pid = 0
        self.dumps = 0
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (target.tree, env.get("PYTHONPATH")) if p)
        env["PYTHONHASHSEED"] = "0"
        env.pop("PYTHONASYNCIODEBUG", None)
        if target.reactor:
            env["TXSMTPSRV_BENCH_REACTOR"] = target.reactor
        command = [sys.executable, "-c", PEER_WRAPPER, os.path.join(HERE, "_peers.py"), target.kind]
        if outdir is not None:
            command = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={os.path.join(outdir, 'callgrind.out.%p')}",
            ] + command
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.stderr, env=env, cwd=target.tree,
        )

    def wait_ready(self) -> None:
        try:
            self.port, self.pid, detail = wait_ready(self.proc, START_TIMEOUT)
        except NotReady as e:
            exited = self.proc.returncode is not None
            raise ServerError(f"{self.target.label}: {e}" + (f"\n{self.errors()}" if exited else "")) from None
        if "+mypyc" in self.target.label and "build=mypyc" not in detail:
            raise ServerError(f"{self.target.label}: the server does not run the mypyc build ({detail})")

    def control(self, *args: str) -> None:
        """``callgrind_control ARGS PID``; the server is idle in epoll_wait, vgdb wakes it."""
        done = subprocess.run(
            ["callgrind_control", *args, str(self.pid)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0 or "OK" not in done.stdout:
            raise ServerError(f"callgrind_control {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def collect_garbage(self) -> None:
        """Make the server run a full ``gc.collect()`` (SIGUSR1, see PEER_WRAPPER)."""
        os.kill(self.pid, signal.SIGUSR1)

    def start_count(self) -> None:
        self.control("-i", "on")
        self.control("-z")

    def dump_count(self) -> tuple[int, str]:
        """Dump, return (instructions since the last zero, dump file)."""
        self.control("-d")
        self.dumps += 1
        assert self.outdir is not None
        path = os.path.join(self.outdir, f"callgrind.out.{self.pid}.{self.dumps}")
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1]), path
        raise ServerError(f"no totals in {path}")

    def errors(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        return text[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


class Strace:
    """``strace -c -f -p PID`` attached for one load: syscalls by name."""

    def __init__(self, pid: int, path: str) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["strace", "-c", "-f", "-o", path, "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        # strace says "Process N attached" (per thread) on stderr once it traces.
        line = self.proc.stderr.readline().decode(errors="replace")
        if "attached" not in line:
            self.proc.kill()
            raise ServerError(f"strace did not attach: {line.strip()}")

    def finish(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        counts: dict[str, int] = {}
        with open(self.path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 5 or not re.match(r"^\d+\.\d+$", parts[0]):
                    continue
                name = parts[-1]
                if name == "total":
                    continue
                # "% time, seconds, usecs/call, calls, [errors], syscall"
                counts[name] = int(parts[3])
        return counts


def gc_instructions(dump: str) -> int:
    """Inclusive instructions of CPython's cyclic collector (``gc_collect_main``) in a dump."""
    try:
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
            capture_output=True, text=True, timeout=300,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    total = 0
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+) \(.*?\)\s+\S*:gc_collect_main(?:'\d+)?(?: |$)", line)
        if m:
            total += int(m.group(1).replace(",", ""))
    return total


# ---------------------------------------------------------------- loads


#: The load generator: "asyncio" (bench/_load.py, EHLO) or "smtp-source" (Postfix's, HELO).
CLIENT = "asyncio"


async def deliver(port: int, *, total: int, sessions: int, per_connection: int,
                  payload: bytes, pipelining: bool) -> _load.Tally:
    tally = _load.Tally()
    if CLIENT == "smtp-source" and not pipelining:
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


async def measure(server: Server, scenario: str, loads: Loads, repeat: int,
                  strace_dir: Optional[str]) -> Result:
    res = Result(server.target.label, scenario, repeat)
    warm, load, unit = scenario_plan(scenario, loads)
    tally = await deliver(server.port, **warm)
    if tally.failures:
        res.failures, res.errors = tally.failures, [f"warm-up: {e}" for e in tally.errors]
        return res
    server.collect_garbage()
    await settle(server.pid)
    tracer = None
    if strace_dir is not None:
        tracer = Strace(server.pid, os.path.join(strace_dir, f"{server.pid}.{scenario}"))
    else:
        server.start_count()
    t0 = time.monotonic()
    tally = await deliver(server.port, **load)
    await settle(server.pid)
    res.seconds = time.monotonic() - t0
    if tracer is not None:
        res.syscalls = tracer.finish()
    else:
        res.instructions, dump = server.dump_count()
        res.gc_instructions = gc_instructions(dump)
    res.units = tally.delivered * unit
    res.failures, res.errors = tally.failures, tally.errors
    return res


def run_server(target: Target, scenarios: list[str], loads: Loads, repeat: int,
               outdir: Optional[str], strace_dir: Optional[str],
               progress: Callable[[str], None]) -> list[Result]:
    """Start one server (under callgrind unless ``strace_dir``), run every scenario in order, stop it."""
    server = Server(target, outdir)
    results: list[Result] = []
    try:
        server.wait_ready()
        for scenario in scenarios:
            res = asyncio.run(measure(server, scenario, loads, repeat, strace_dir))
            if server.proc.poll() is not None:
                raise ServerError(f"{target.label}: died\n{server.errors()}")
            results.append(res)
            what = (f"{sum(res.syscalls.values())} syscalls" if strace_dir
                    else f"{res.instructions:,} Ir")
            progress(f"  {target.label:>13} {scenario:<9} #{repeat}: {what} for {res.units:g} "
                     f"units, {res.seconds:.1f} s" + (f", FAILURES {res.errors}" if res.failures else ""))
    finally:
        server.stop()
    return results


# ---------------------------------------------------------------- report


def fmt_int(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:,.0f}"


def table(results: list[Result], labels: list[str], scenarios: list[str],
          metric: Callable[[Result], Optional[float]]) -> list[str]:
    """One table: per scenario, each label's median [spread], ratios to twisted.mail, new/old."""
    ref = "twisted.mail" if "twisted.mail" in labels else None
    head = ["scenario"] + labels
    if ref:
        head += [f"{lab}/{ref}" for lab in labels if lab != ref]
    if "old" in labels and "new" in labels:
        head.append("new/old")
    rows = [head]
    medians: dict[tuple[str, str], float] = {}
    for sc in scenarios:
        row = [sc]
        for lab in labels:
            vals = [metric(r) for r in results if r.label == lab and r.scenario == sc]
            good = [v for v in vals if v is not None]
            if not good:
                row.append("FAILED" if vals else "-")
                continue
            med = statistics.median(good)
            medians[(lab, sc)] = med
            spread = (max(good) - min(good)) / med * 100 if len(good) > 1 and med else 0.0
            row.append(f"{fmt_int(med)} [{spread:.2f}%]")
        if ref:
            for lab in labels:
                if lab == ref:
                    continue
                a, b = medians.get((lab, sc)), medians.get((ref, sc))
                row.append(f"{a / b:.3f}" if a and b else "-")
        if "old" in labels and "new" in labels:
            a, b = medians.get(("new", sc)), medians.get(("old", sc))
            row.append(f"{a / b:.3f} ({(a / b - 1) * 100:+.1f}%)" if a and b else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for i, cells in enumerate(rows):
        out.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def report(results: list[Result], labels: list[str], scenarios: list[str], loads: Loads,
           meta: dict[str, str]) -> str:
    out = [f"{k}: {v}" for k, v in meta.items()]
    out.append("loads: " + "; ".join(f"{s}: {loads.describe()[s]}" for s in scenarios))
    out.append("")
    out.append("Instructions (callgrind Ir, server process, load only) per message; "
               "churn per connection; large per MiB.")
    out.append("Each cell: median of the repeats [spread = (max-min)/median]. "
               "Every load starts after a full gc.collect().")
    out.append("")
    out.append("All instructions:")
    out += table(results, labels, scenarios, lambda r: r.per_unit)
    out.append("")
    out.append("Without the cyclic garbage collector (gc_collect_main, inclusive) -- the code's path length:")
    out += table(results, labels, scenarios, lambda r: r.per_unit_no_gc)
    out.append("")
    out.append("Every run (instructions per unit, of which cyclic GC):")
    for r in results:
        if not r.syscalls:
            out.append(f"  {r.label:>13} {r.scenario:<9} #{r.repeat}: {fmt_int(r.per_unit)}"
                       f" (GC {fmt_int(r.gc_per_unit)}; {r.instructions:,} Ir / {r.units:g})"
                       + (f" FAILED {r.failures}: {r.errors}" if r.failures else ""))
    return "\n".join(out)


def report_syscalls(results: list[Result], labels: list[str], scenarios: list[str]) -> str:
    out = ["", "System calls per message (churn: per connection; large: per MiB), "
           "strace -c -f, native run, load only:"]
    for sc in scenarios:
        runs = {r.label: r for r in results if r.scenario == sc and r.syscalls}
        if not runs:
            continue
        names = sorted({n for r in runs.values() for n in r.syscalls},
                       key=lambda n: -max(r.syscalls.get(n, 0) for r in runs.values()))
        out.append(f"  {sc}:")
        out.append("    " + f"{'syscall':<16}" + "".join(f"{lab:>14}" for lab in labels if lab in runs))
        for name in names + ["total"]:
            cells = []
            for lab in labels:
                r = runs.get(lab)
                if r is None:
                    continue
                n = sum(r.syscalls.values()) if name == "total" else r.syscalls.get(name, 0)
                cells.append(f"{n / r.units:14.2f}" if r.units else f"{'-':>14}")
            out.append(f"    {name:<16}" + "".join(cells))
    return "\n".join(out)


# ---------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring (and bench/README.md) for method and caveats.",
    )
    d = Loads()
    p.add_argument("--baseline", default="main",
                   help="'old' txsmtpsrv: a git ref of this checkout (git archive) or a directory "
                   "holding txsmtpsrv/ (default: main)")
    p.add_argument("--servers", default="old,new,twisted.mail",
                   help="comma list of old, new, twisted.mail, aiosmtpd (default: old,new,twisted.mail); "
                        "old@NAME / new@NAME run that txsmtpsrv sink on twistd's reactor NAME "
                        "(e.g. new,new@smtpsrv-epoll); new+mypyc (also with @NAME) is the working tree's "
                        "mypyc-compiled build (bench/_mypyc.py; or --mypyc-tree)")
    p.add_argument("--mypyc-tree", metavar="DIR",
                   help="an unpacked mypyc build for new+mypyc (default: build one, ~1 minute)")
    p.add_argument("--client", choices=("asyncio", "smtp-source"), default="asyncio",
                   help="load generator: bench/_load.py (default) or Postfix's smtp-source, as bench.py "
                        "--client smtp-source (HELO, lock-step; pipelined stays with the asyncio client)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma list of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--repeat", type=int, default=2, help="server processes per target (default 2)")
    p.add_argument("--persist", type=int, default=d.persist_total, help="persist/pipelined messages")
    p.add_argument("--churn", type=int, default=d.churn_total, help="churn connections")
    p.add_argument("--large", type=int, default=d.large_total, help="large messages (10 MiB each)")
    p.add_argument("--syscalls", action="store_true",
                   help="also count system calls per message (native runs under strace -c -f)")
    p.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    p.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR (for callgrind_annotate)")
    p.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    global CLIENT
    CLIENT = args.client
    loads = Loads(persist_total=args.persist, churn_total=args.churn, large_total=args.large)
    scenarios = [s for s in args.scenarios.split(",") if s]
    labels = [s for s in args.servers.split(",") if s]
    bad = [s for s in scenarios if s not in SCENARIOS] + [
        s for s in labels
        if s not in ("old", "new", "new+mypyc") + PEERS
        and not (s.partition("@")[0] in ("old", "new", "new+mypyc") and s.partition("@")[2])]
    if bad:
        sys.stderr.write(f"unknown scenario/server: {', '.join(bad)}\n")
        return 2
    use_cg = not args.no_callgrind
    missing = [tool for tool, needed in (("valgrind", use_cg), ("callgrind_control", use_cg),
                                         ("strace", args.syscalls)) if needed and not shutil.which(tool)]
    if missing:
        packages = sorted({"strace" if tool == "strace" else "valgrind" for tool in missing})
        sys.stderr.write(
            f"instructions.py needs {' and '.join(missing)} on PATH (Debian: apt-get install "
            f"{' '.join(packages)}); nothing measured.\n")
        return 2

    def progress(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    scratch = tempfile.mkdtemp(prefix="txsmtpsrv-instr-")
    try:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "python": sys.version.split()[0], "new": f"working tree {ROOT}"}
        targets = []
        for lab in list(labels):
            base, _, reactor = lab.partition("@")
            if base == "new":
                targets.append(Target(lab, "txsmtpsrv", ROOT, reactor))
            elif base == "new+mypyc":
                if not meta.get("new+mypyc"):
                    if args.mypyc_tree:
                        _mypyc.check_tree(args.mypyc_tree)
                    meta["new+mypyc"] = os.path.abspath(args.mypyc_tree or _mypyc.build_tree())
                targets.append(Target(lab, "txsmtpsrv", meta["new+mypyc"], reactor))
            elif base == "old":
                tree, desc = resolve_baseline(args.baseline, scratch)
                meta["old"] = desc
                targets.append(Target(lab, "txsmtpsrv", tree, reactor))
            else:
                module = "twisted.mail.smtp" if lab == "twisted.mail" else lab
                probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
                if probe.returncode != 0:
                    progress(f"{lab}: cannot import {module} (pip install -e '.[bench]'); skipped")
                    labels.remove(lab)
                    continue
                targets.append(Target(lab, lab, ROOT))
        for target in targets:
            if target.kind == "txsmtpsrv":  # the tree the server will really import
                env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                    p for p in (target.tree, os.environ.get("PYTHONPATH")) if p))
                where = subprocess.run(
                    [sys.executable, "-c", "import txsmtpsrv; print(txsmtpsrv.__file__)"],
                    capture_output=True, text=True, env=env, cwd=target.tree,
                ).stdout.strip()
                meta[f"{target.label} imports"] = where
                if not where.startswith(os.path.realpath(target.tree)) and not where.startswith(target.tree):
                    progress(f"warning: {target.label} imports txsmtpsrv from {where!r}, not from {target.tree}")
        head = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip()
        meta["new"] += f" ({head})" if head else ""
        try:
            vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
            meta["valgrind"] = vg
        except OSError:
            pass
        outdir = args.keep or os.path.join(scratch, "callgrind")
        os.makedirs(outdir, exist_ok=True)
        results: list[Result] = []
        # Targets interleaved per repeat, so that a repeat of every target exists early.
        for rep in range(1, args.repeat + 1):
            for target in targets:
                if use_cg:
                    progress(f"callgrind: {target.label} (repeat {rep}) ...")
                    results += run_server(target, scenarios, loads, rep, outdir, None, progress)
        if args.syscalls:
            sdir = os.path.join(scratch, "strace")
            os.makedirs(sdir, exist_ok=True)
            for target in targets:
                progress(f"strace: {target.label} ...")
                results += run_server(target, scenarios, loads, 1, None, sdir, progress)
        text = report([r for r in results if not r.syscalls], labels, scenarios, loads, meta) \
            if use_cg else "\n".join(f"{k}: {v}" for k, v in meta.items())
        if args.syscalls:
            text += "\n" + report_syscalls(results, labels, scenarios)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "loads": loads.__dict__,
                           "runs": [r.__dict__ | {"per_unit": r.per_unit, "per_unit_no_gc": r.per_unit_no_gc}
                                    for r in results]},
                          f, indent=1)
        return 1 if any(r.failures for r in results) else 0
    except subprocess.CalledProcessError as exc:
        sys.stderr.write(f"error: {' '.join(exc.cmd)} failed: {(exc.stderr or b'').decode()}\n")
        return 1
    except ServerError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
