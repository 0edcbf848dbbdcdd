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

Its parts: ``_instructions_runs.py`` (the loads, one server's scenarios
counted), ``_instructions_report.py`` (the tables), ``_callgrind.py`` (valgrind,
callgrind_control, strace).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _mypyc  # noqa: E402
from _common import resolve_baseline  # noqa: E402
from _instructions_report import report, report_syscalls  # noqa: E402
from _instructions_runs import Loads, Result, Target, run_server  # noqa: E402
from _server import ServerError  # noqa: E402

SCENARIOS = ("persist", "pipelined", "churn", "large")
PEERS = ("twisted.mail", "aiosmtpd")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line (servers and scenarios are checked by main)."""
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
    """Count, report; 0, 1 if a run failed, 2 on a bad command line or a missing tool."""
    args = parse_args(argv)
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
                    results += run_server(target, scenarios, loads, rep, outdir, None, progress, args.client)
        if args.syscalls:
            sdir = os.path.join(scratch, "strace")
            os.makedirs(sdir, exist_ok=True)
            for target in targets:
                progress(f"strace: {target.label} ...")
                results += run_server(target, scenarios, loads, 1, None, sdir, progress, args.client)
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
