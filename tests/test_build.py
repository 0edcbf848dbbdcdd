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
import glob
import os
import shutil
import subprocess
import sys
import types
from typing import Any, List, Tuple

import pytest

from tests._support import under_ci
from txsmtpsrv import _build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expected_build() -> None:
    """The build under test is the one tests/run.sh asked for, and never a mixture."""
    expected = os.environ.get("TXSMTPSRV_EXPECT_BUILD")
    if under_ci() and not expected:
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


def _backend() -> Any:
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import _build_backend
    finally:
        sys.path.remove(os.path.join(REPO, "tools"))
    return _build_backend


def _setup_py(tmp_path: Any, *args: str) -> Tuple[subprocess.CompletedProcess[str], bool]:
    """
    Run a copy of the checkout's setup.py with TXSMTPSRV_MYPYC=1 and a mypyc
    that notes its import and is then missing: whether the command went as
    far as compiling, without compiling anything.
    """
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".mypy_cache", "bench", "docs"))
    fake = tmp_path / "fake" / "mypyc"
    fake.mkdir(parents=True)
    marker = tmp_path / "mypyc-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('no mypyc here')\n")
    done = subprocess.run([sys.executable, "setup.py", *args], cwd=tree, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TXSMTPSRV_MYPYC="1", PYTHONPATH=str(tmp_path / "fake")))
    return done, marker.exists()


@pytest.mark.parametrize("args", [["build_ext", "--inplace"], ["build_ext", "-i"], ["build_ext", "-fi"],
                                  ["build_ext", "-j", "2", "--inplace"]])
def test_no_compiled_modules_built_into_the_checkout(tmp_path: Any, args: List[str]) -> None:
    """setup.py build_ext --inplace refuses TXSMTPSRV_MYPYC=1 before compiling: a .so beside each .py shadows edits."""
    done, compiling = _setup_py(tmp_path, *args)
    assert done.returncode != 0
    assert "builds wheels only" in done.stderr
    assert not compiling


def test_the_build_ext_command_refuses_inplace_extensions(tmp_path: Any) -> None:
    """
    The backstop for every other way of asking for in-place extensions
    (setup.cfg's [build_ext] inplace=1, ...): setup.py's build_ext command
    refuses to put compiled modules into the checkout; with no extension
    (the pure build) there is nothing to refuse.
    """
    from setuptools import Distribution, Extension

    backend = _backend()
    for extensions, refused in (([Extension("txsmtpsrv._x", ["x.c"])], True), ([], False)):
        dist = Distribution({"ext_modules": extensions, "cmdclass": {"build_ext": backend.BuildExt},
                             "script_name": "setup.py"})
        command = dist.get_command_obj("build_ext")
        command.inplace = 1
        command.build_temp = command.build_lib = str(tmp_path)
        command.ensure_finalized()
        if refused:
            with pytest.raises(SystemExit, match="builds wheels only"):
                command.run()
        else:
            command.run()


@pytest.mark.parametrize("args, compiles", [
    (["sdist"], False), (["sdist", "--formats", "gztar"], False), (["egg_info"], False), (["dist_info"], False),
    (["bdist_wheel"], True), (["build"], True), (["build_ext"], True), (["install"], True),
    (["sdist", "bdist_wheel"], True),
])
def test_which_commands_compile(monkeypatch: Any, args: List[str], compiles: bool) -> None:
    """An sdist is the sources either way; TXSMTPSRV_MYPYC=1 applies to the wheels built from it."""
    backend = _backend()
    monkeypatch.setenv("TXSMTPSRV_MYPYC", "1")
    assert backend.compiles(args) is compiles
    monkeypatch.setenv("TXSMTPSRV_MYPYC", "0")
    assert backend.compiles(args) is False


def test_an_sdist_with_mypyc_asked_for_is_the_sources(tmp_path: Any) -> None:
    """
    TXSMTPSRV_MYPYC=1 python -m build makes an sdist, then a wheel from it:
    the sdist step compiled (or, in build's isolated environment without
    mypy, stopped with "needs mypy"); it now makes the plain sdist.
    """
    done, compiling = _setup_py(tmp_path, "sdist", "--dist-dir", str(tmp_path / "dist"))
    assert not compiling
    assert "needs mypy" not in done.stderr
    assert not glob.glob(str(tmp_path / "tree" / "build" / "*.c"))
