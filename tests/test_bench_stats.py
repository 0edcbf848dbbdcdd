# -*- test-case-name: tests.test_bench_stats -*-
"""
The benchmark's confidence interval for a median ratio (bench/_common.median_interval),
which decides whether a target such as "persist <= 1.0x Node" is met beyond the noise.
"""

from __future__ import annotations

import math
import os
import sys

from hypothesis import given
from hypothesis import strategies as st

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import _bench_config  # noqa: E402
import _bench_report  # noqa: E402
import _common  # noqa: E402


def _below(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k - 1): the chance that the k-th smallest value lies above the median."""
    return sum(math.comb(n, j) for j in range(k)) / 2 ** n


def test_known_ranks() -> None:
    """The textbook 95 % ranks: 1st/6th of 6, 14th/27th of 40, 40th/61st of 100."""
    assert _common.median_interval([float(v) for v in range(1, 7)]) == (1.0, 6.0)
    assert _common.median_interval([float(v) for v in range(1, 41)]) == (14.0, 27.0)
    assert _common.median_interval([float(v) for v in range(1, 101)]) == (40.0, 61.0)


def test_too_few_values() -> None:
    """Five values cannot bound the median at 95 % (even min-max covers only 94 %)."""
    assert _common.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert _common.median_interval([]) is None


@given(st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=6, max_size=300, unique=True))
def test_interval_is_the_narrowest_that_covers(values: list[float]) -> None:
    """Symmetric ranks that cover at least 95 %, where one rank narrower would not."""
    interval = _common.median_interval(values)
    assert interval is not None
    ordered = sorted(values)
    n = len(values)
    k = ordered.index(interval[0]) + 1
    assert interval[1] == ordered[n - k]
    assert 1 - 2 * _below(n, k) >= 0.95
    assert 1 - 2 * _below(n, k + 1) < 0.95


def test_report_lines() -> None:
    """The report prints each ratio's median and interval, and nothing for too few rounds."""
    fig = _bench_config.Figure("persist_cpu", "persist", "persist", "us", 0)
    summary = {"persist_cpu": {
        "round_ratios": {"txsmtpsrv/node": [1.0] * 3 + [1.1] * 4, "txsmtpsrv/twisted.mail": [0.5] * 3},
        "round_ratio_ci": {"txsmtpsrv/node": _bench_report.median_ci([1.0] * 3 + [1.1] * 4),
                           "txsmtpsrv/twisted.mail": _bench_report.median_ci([0.5] * 3)},
    }}
    lines = _bench_report.render_intervals(summary, {"persist_cpu": fig})
    assert len(lines) == 2
    assert "tx/node" in lines[1] and "1.10 [1.00-1.10] (7 rounds)" in lines[1]
