"""
``tls.py --instructions``: what a TLS connection and a TLS message cost
txsmtpsrv in user-space instructions (callgrind, ``_callgrind.py``), for this
tree and a ``--baseline``. /proc CPU figures on a shared machine swing 15-30 %;
instruction counts repeat to well under 1 %, so they settle a handshake's cost
and what resumption saves.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from _callgrind import START_TIMEOUT, Callgrind, Strace, collect_garbage, gc_instructions, peer_argv, peer_env
from _common import ROOT, resolve_baseline
from _server import ServerProcess
from _settle import QUIET, settle
from _tls_client import churn, session


def instructions(args: argparse.Namespace, cert: str, key: str) -> dict[str, Any]:
    """
    User-space instructions per connection of txsmtpsrv (this tree, and ``--baseline``'s)
    for ``plain``, ``full`` and ``resumed`` connections, under callgrind (repeatable on
    a shared machine where /proc CPU figures swing 15-30 %). One lock-step client thread;
    each mode gets a warm-up, then a full ``gc.collect()`` in the server, then the count
    for ``--connections`` connections. ``--strace`` adds system calls per connection.
    Then per 1 KiB message on one connection without and with STARTTLS (``persist-plain``,
    ``persist-tls``): the difference of a ``--messages`` and a ``--messages``/5 count, so
    the connection's set-up and QUIT cancel out.
    """
    trees = [("new", ROOT)]
    if args.baseline:
        scratch = tempfile.mkdtemp(prefix="txsmtpsrv-tls-baseline-")
        trees.insert(0, ("old", resolve_baseline(args.baseline, scratch)[0]))
    out: dict[str, Any] = {}
    for label, tree in trees:
        outdir = tempfile.mkdtemp(prefix="txsmtpsrv-tls-cg-")
        server = ServerProcess(label, peer_argv("txsmtpsrv", "--cert", cert, "--key", key, outdir=outdir),
                               env=peer_env(tree), cwd=tree)
        try:
            server.wait_ready(START_TIMEOUT)
            count = Callgrind(server.pid, outdir)
            figures: dict[str, Any] = {}
            for mode in ("full", "resumed") if args.implicit else ("plain", "full", "resumed"):
                figures[mode] = per_connection(label, server.port, count, mode, args)
            for mode in ("persist-tls",) if args.implicit else ("persist-plain", "persist-tls"):
                figures[mode] = per_message(label, server.port, count, mode, args)
            plain = figures["plain"]["per_conn"] if "plain" in figures else 0  # (--implicit: whole connections)
            full, again = figures["full"]["per_conn"] - plain, figures["resumed"]["per_conn"] - plain
            figures["handshake"] = {"full": full, "resumed": again, "ratio": again / full}
            out[label] = figures
        finally:
            server.stop(grace=60)
    return out


def zero(count: Callgrind) -> None:
    """Settle, a full ``gc.collect()`` in the server, settle, count from zero: every count starts alike."""
    settle(count.pid, QUIET)
    collect_garbage(count.pid)
    settle(count.pid, QUIET)
    count.start_count()


def per_connection(label: str, port: int, count: Callgrind, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Instructions (and with ``--strace`` system calls) per ``plain``, ``full`` or ``resumed`` connection."""
    churn(port, 1, 3, mode)  # warm-up
    tracers: list[Strace] = []

    def primed() -> None:
        zero(count)
        if args.strace:
            tracers.append(Strace(count.pid, os.path.join(count.outdir, f"strace.{mode}")))

    outcome = churn(port, 1, args.connections, mode, primed)
    tracer = tracers[0] if tracers else None
    settle(count.pid, QUIET)
    calls = tracer.finish() if tracer is not None else {}
    total, dump = count.dump_count()
    if outcome.errors:
        raise RuntimeError(f"{label} {mode}: {outcome.errors[:2]}")
    gc_count = gc_instructions(dump)
    print(f"{label} {mode}: {total / outcome.units:,.0f} instructions/connection "
          f"({gc_count / outcome.units:,.0f} of them in the cyclic GC)"
          + (f", {sum(calls.values()) / outcome.units:.1f} syscalls" if calls else ""), file=sys.stderr)
    return {"per_conn": total / outcome.units, "gc_per_conn": gc_count / outcome.units,
            "resumed": outcome.resumed,
            "units": outcome.units, "dump": dump,
            "syscalls": {k: v / outcome.units for k, v in sorted(calls.items())}}


def per_message(label: str, port: int, count: Callgrind, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """
    Instructions per 1 KiB message on one connection, ``persist-plain`` or ``persist-tls``:
    the difference of two counts, so the connection's set-up and QUIT cancel out.
    """
    counts = []
    for messages in (args.messages // 5, args.messages):
        session(port, mode == "persist-tls", messages, lambda: zero(count))
        settle(count.pid, QUIET)
        counts.append(count.dump_count())
    per_message = (counts[1][0] - counts[0][0]) / (args.messages - args.messages // 5)
    print(f"{label} {mode}: {per_message:,.0f} instructions/message", file=sys.stderr)
    return {"per_message": per_message, "dumps": [c[1] for c in counts]}
