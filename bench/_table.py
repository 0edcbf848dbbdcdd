"""
The plain-text tables that bench.py and instructions.py print: columns padded
to their widest cell, labels flush left, figures flush right, a rule of dashes
under the header. One copy, so both reports keep the same look. (tls.py prints
a Markdown table instead, for pasting into bench/README.md.)
"""

from __future__ import annotations


def aligned(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """C{header}, a rule and C{rows} as lines; the first C{left} columns are text (flush left)."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
