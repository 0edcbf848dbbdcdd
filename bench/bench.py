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

Its parts: ``_bench_config.py`` (server names, workload sizes, figures),
``_bench_scenarios.py`` (what each scenario measures on a running server),
``_bench_runs.py`` (a fresh server per run, or all at once with
``--interleave``), ``_bench_report.py`` (medians, ratios, the table).

This is a benchmark, not a test: it never asserts timings.  It does check
every SMTP reply and reports runs that had failures.

    python bench/bench.py            # full run (~6-8 minutes on 2 cores with all six servers)
    python bench/bench.py --quick    # smoke run (~30 seconds)
    python bench/bench.py --json results.json
    python bench/bench.py --client smtp-source --servers txsmtpsrv,node,go-smtp
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _mypyc  # noqa: E402
import _peers  # noqa: E402
import _smtp_source  # noqa: E402
from _bench_config import (  # noqa: E402
    CLIENTS, PEERS, SCENARIOS, SMTP_SOURCE_SCENARIOS, SUBJECT, Config, is_mypyc, is_subject,
)
from _bench_report import render_problems, render_table, summarise  # noqa: E402
from _bench_runs import check_available, run_interleaved, run_one  # noqa: E402
from _bench_scenarios import RunResult  # noqa: E402
from _common import pin_cpus  # noqa: E402
from _server import ServerProcess  # noqa: E402


def machine_description() -> str:
    """CPU count and model, kernel and Python, for the report's first line."""
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
    """The command line, checked (unknown servers and scenarios, ranges, incompatible options)."""
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
    """Run, report; 0, 1 if any run failed, 2 if nothing could run, 130 after Ctrl-C."""
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
    mypyc_tree = ""  # the unpacked mypyc build for txsmtpsrv+mypyc servers
    if any(is_mypyc(s) for s in args.servers):
        if args.mypyc_tree:
            _mypyc.check_tree(args.mypyc_tree)
            mypyc_tree = os.path.abspath(args.mypyc_tree)
        else:
            mypyc_tree = _mypyc.build_tree()
        meta["mypyc_tree"] = mypyc_tree
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
                for res in run_interleaved(servers, scenario, args.interleave, cfg, server_cpu, mypyc_tree, log):
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
                    res = run_one(kind, scenario, rep, cfg, server_cpu, mypyc_tree)
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
