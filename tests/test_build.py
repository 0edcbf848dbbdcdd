# -*- test-case-name: tests.test_build -*-
"""
The two builds: pure Python (the default, and the source of truth) and the
dialogue's modules compiled by mypyc (C{TXSMTPSRV_MYPYC=1}, see setup.py).

C{tests/run.sh} runs the suite on both and tells each pass which build it
must be measuring (C{TXSMTPSRV_EXPECT_BUILD}), so a pass cannot silently test
the other one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from typing import Any

import pytest

from txsmtpsrv import _build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expected_build() -> None:
    """The build under test is the one tests/run.sh asked for, and never a mixture."""
    expected = os.environ.get("TXSMTPSRV_EXPECT_BUILD")
    if os.environ.get("CI") and not expected:
        pytest.fail("under CI, tests/run.sh names the build each pass tests (TXSMTPSRV_EXPECT_BUILD)")
    build = "mypyc" if _build.compiled() else "pure"
    if expected:
        assert build == expected, _build.compiled_modules()


def test_compiled_list_matches_setup() -> None:
    """_build.COMPILED names exactly the modules setup.py compiles, each a module of the package."""
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        body = ast.parse(f.read()).body
    (value,) = [node.value for node in body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", "") == "MYPYC_MODULES" for t in node.targets)]
    paths = ast.literal_eval(value)
    assert tuple(os.path.basename(p)[:-3] for p in paths) == _build.COMPILED
    for path in paths:
        assert os.path.exists(os.path.join(REPO, path)), path


def test_mixed_build_raises(monkeypatch: Any) -> None:
    """Some modules compiled and some not (a stale .so beside an edited .py) is an error, not a build."""
    real = _build.importlib.import_module
    first = _build.COMPILED[0]
    compiled_now = set(_build.compiled_modules())

    def fake(name: str) -> Any:
        if name.rsplit(".", 1)[1] != first:
            return real(name)
        # Exactly the first module turned into the other kind of build.
        twin = types.ModuleType(name)
        twin.__file__ = f"/x/{first}." + ("py" if first in compiled_now else "cpython-311-x86_64-linux-gnu.so")
        return twin

    monkeypatch.setattr(_build.importlib, "import_module", fake)
    with pytest.raises(RuntimeError, match="mixed build"):
        _build.compiled()


def test_backend_asks_for_mypy_only_when_compiling(monkeypatch: Any) -> None:
    """The build backend adds mypy (and the mypy plugin the config names) to the build requirements only on request."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import _build_backend
    finally:
        sys.path.remove(os.path.join(REPO, "tools"))
    monkeypatch.delenv("TXSMTPSRV_MYPYC", raising=False)
    assert _build_backend._mypyc() == []
    monkeypatch.setenv("TXSMTPSRV_MYPYC", "1")
    assert any(r.startswith("mypy~=") for r in _build_backend._mypyc())
    assert any(r.startswith("mypy-zope") for r in _build_backend._mypyc())
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    for requirement in _build_backend.MYPYC_REQUIRES:  # pinned as the test extra pins them
        assert f'"{requirement}"' in pyproject


@pytest.mark.parametrize("value, compiled", [("1", True), ("TRUE", True), (" Yes ", True), ("on", True),
                                             ("", False), ("0", False), ("False", False), ("off", False)])
def test_backend_reads_the_variable_in_any_case(monkeypatch: Any, value: str, compiled: bool) -> None:
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import _build_backend
    finally:
        sys.path.remove(os.path.join(REPO, "tools"))
    monkeypatch.setenv("TXSMTPSRV_MYPYC", value)
    assert _build_backend.wants_mypyc() is compiled
    assert bool(_build_backend._mypyc()) is compiled


@pytest.mark.parametrize("value", ["maybe", "2", "mypyc"])
def test_an_unknown_mypyc_value_stops_the_build(value: str) -> None:
    """setup.py (and so every build) refuses what it cannot read, rather than building a pure wheel silently."""
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TXSMTPSRV_MYPYC=value), timeout=60)
    assert done.returncode != 0
    assert f"TXSMTPSRV_MYPYC={value!r}: say 1" in done.stderr


def test_backend_refuses_a_compiled_editable_install(monkeypatch: Any) -> None:
    """pip install -e . (PEP 660) with TXSMTPSRV_MYPYC=1 stops at the first step, with the reason."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import _build_backend
    finally:
        sys.path.remove(os.path.join(REPO, "tools"))
    monkeypatch.setenv("TXSMTPSRV_MYPYC", "1")
    for step in (lambda: _build_backend.get_requires_for_build_editable(),
                 lambda: _build_backend.prepare_metadata_for_build_editable("unused"),
                 lambda: _build_backend.build_editable("unused")):
        with pytest.raises(SystemExit, match="builds wheels only"):
            step()


def test_no_compiled_editable_install() -> None:
    """setup.py develop (old pip's editable install) refuses TXSMTPSRV_MYPYC=1: compiled modules would shadow edits."""
    for command in ("develop", "editable_wheel"):
        done = subprocess.run([sys.executable, "setup.py", command], cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, TXSMTPSRV_MYPYC="1"), timeout=60)
        assert done.returncode != 0
        assert "builds wheels only" in done.stderr


def test_bench_measures_the_build_it_names() -> None:
    """
    bench.py's txsmtpsrv+mypyc runs a compiled build or refuses: given this
    tree, the mypyc pass measures it (the server says build=mypyc) and the
    pure pass is told that the tree holds no compiled txsmtpsrv.
    """
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "bench.py"), "--quick", "--scenarios", "latency",
         "--servers", "txsmtpsrv,txsmtpsrv+mypyc", "--mypyc-tree", REPO],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)),
    )
    if _build.compiled():
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "txsmtpsrv+mypyc txsmtpsrv=" in proc.stdout and "build=mypyc" in proc.stdout
    else:
        assert proc.returncode != 0
        assert "does not hold a compiled txsmtpsrv" in proc.stderr
