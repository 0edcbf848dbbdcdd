"""
instructions.py's report: per scenario, each server's median count and spread,
its ratio to twisted.mail and new/old, once with all instructions and once
without the cyclic collector; then every run, and system calls per message by
name (``--syscalls``). Only arithmetic and text over L{Result}s.
"""

from __future__ import annotations

import statistics
from typing import Callable, Optional

from _instructions_runs import Loads, Result
from _table import aligned


def fmt_int(x: Optional[float]) -> str:
    """A count with thousands separators; - where there is none (a failed run)."""
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
    rows: list[list[str]] = []
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
    return aligned(head, rows)


def report(results: list[Result], labels: list[str], scenarios: list[str], loads: Loads,
           meta: dict[str, str]) -> str:
    """The instruction report: what was run, both tables, then every run."""
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
    """System calls per unit by name, most frequent first, one block per scenario (``--syscalls``)."""
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
