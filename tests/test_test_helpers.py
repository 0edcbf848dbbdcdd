"""
The tests' own shared helpers: made in one place, and doing what they say.
"""

from __future__ import annotations

import os
import re
import ssl
import unittest
from typing import Any

import pytest

from tests._certs import unverified_client_context

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_unverified_client_context_checks_nothing():
    """No certificate or name check (for the development certificate); C{version} pins both ends."""
    ctx = unverified_client_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    pinned = unverified_client_context(version=ssl.TLSVersion.TLSv1_2)
    assert pinned.minimum_version == pinned.maximum_version == ssl.TLSVersion.TLSv1_2


def test_unverified_client_context_is_not_copied():
    """Test modules use the helper in tests/_certs.py rather than a copy of it."""
    copies = []
    for name in sorted(os.listdir(TESTS)):
        if name.endswith(".py") and name not in ("_certs.py", os.path.basename(__file__)):
            with open(os.path.join(TESTS, name), encoding="utf-8") as f:
                if "ssl.CERT_NONE" in f.read():
                    copies.append(name)
    assert copies == []


_FALSE_CI = ["", "0", "false", "False", "FALSE", "no", "off", " false "]
_TRUE_CI = ["true", "1", "yes", "on", "TRUE", "woodpecker"]


@pytest.mark.parametrize("value, expected", [(v, False) for v in _FALSE_CI] + [(v, True) for v in _TRUE_CI])
def test_under_ci_reads_the_value(monkeypatch: Any, value: str, expected: bool) -> None:
    """
    CI=false (0, no, off, empty: how people turn a variable off) is not CI;
    any other value is (CI systems set true, 1 or their own name).
    """
    from tests._support import under_ci

    monkeypatch.setenv("CI", value)
    assert under_ci() is expected
    monkeypatch.delenv("CI")
    assert under_ci() is False


@pytest.mark.parametrize("value", _FALSE_CI)
def test_a_missing_tool_skips_when_ci_is_false(monkeypatch: Any, value: str) -> None:
    from tests._support import require

    monkeypatch.setenv("CI", value)
    with pytest.raises(unittest.SkipTest):
        require(None, "missing", "skip")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="missing"):
        require(None, "missing", "skip")


def test_ci_is_read_in_one_place() -> None:
    """The tests ask tests/_support.under_ci, not the variable, so every one reads CI=false alike."""
    readers = []
    for name in sorted(os.listdir(TESTS)):
        if name.endswith(".py") and name not in ("_support.py", os.path.basename(__file__)):
            with open(os.path.join(TESTS, name), encoding="utf-8") as f:
                if re.search(r"""environ(\.get)?[\[(]\s*["']CI["']|getenv\(\s*["']CI["']""", f.read()):
                    readers.append(name)
    assert readers == []
