"""
bench.py's report: medians over the clean runs, txsmtpsrv/peer ratios (of
the medians, per round, and the per-round median with its confidence
interval), the table printed to stdout, and the failures and server stderr
under it. Only arithmetic and text: it reads L{RunResult}s and measures
nothing.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from _bench_config import PEERS, SUBJECT, Config, Figure, figures, is_subject
from _bench_scenarios import RunResult
from _common import median_interval
from _table import aligned

STDERR_LINES = 25


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
    """A median as the table shows it: C{*} where some runs failed, FAILED where all did, - where none ran."""
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
    rows: list[list[str]] = []
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
    lines.extend(aligned(headers, rows, left=2))
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
