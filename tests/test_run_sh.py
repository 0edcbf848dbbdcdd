"""
tests/run.sh's own logic: which passes run, the exit status, what is left
behind. Run with a stand-in Python (it logs what it is asked to do and
fails on request) and a PATH without apt-get, so nothing is installed and no
suite runs inside the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The stand-in: pip install does nothing, pip wheel makes a wheel holding one
#: file (or fails with FAKE_WHEEL_FAIL), pytest logs its build and working
#: directory and exits with FAKE_PYTEST_<build>; the rest goes to the real Python.
FAKE_PYTHON = r"""#!/bin/sh
if [ "$1 $2" = "-m pip" ]; then
  [ "$3" = wheel ] || exit 0
  [ -z "${FAKE_WHEEL_FAIL:-}" ] || exit 7
  for last; do :; done
  exec "$REAL_PYTHON" -c 'import os, sys, zipfile
os.makedirs(sys.argv[1])
with zipfile.ZipFile(sys.argv[1] + "/txsmtpsrv-0-py3-none-any.whl", "w") as z:
    z.writestr("txsmtpsrv/_fake_compiled.txt", "x")
    z.writestr("txsmtpsrv-0.dist-info/METADATA", "x")' "$last"
fi
if [ "$1 $2" = "-m pytest" ]; then
  echo "$TXSMTPSRV_EXPECT_BUILD $PWD" >> "$FAKE_LOG"
  eval "exit \${FAKE_PYTEST_$TXSMTPSRV_EXPECT_BUILD:-0}"
fi
exec "$REAL_PYTHON" "$@"
"""


def run_sh(tmp_path: Any, gcc: bool = True, **env: str) -> Tuple[int, List[Tuple[str, str]], str]:
    """Run tests/run.sh; return its exit status, the pytest passes (build, directory) and its stderr."""
    venv, bin_ = tmp_path / "venv", tmp_path / "bin"
    (venv / "bin").mkdir(parents=True)
    bin_.mkdir()
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    for tool in ("id", "dirname", "mktemp", "tar", "rm") + (("gcc",) if gcc else ()):
        real = shutil.which(tool)
        assert real is not None, tool
        (bin_ / tool).symlink_to(real)
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "pytest.log"
    log.write_text("")
    environ: Dict[str, str] = {
        "PATH": str(bin_), "VIRTUAL_ENV": str(venv), "REAL_PYTHON": sys.executable, "FAKE_LOG": str(log),
        "TMPDIR": str(tmp_path / "tmp"), "HOME": str(tmp_path), **env,
    }
    done = subprocess.run([shutil.which("bash") or "/bin/bash", os.path.join(REPO, "tests", "run.sh")],
                          env=environ, capture_output=True, text=True, timeout=120)
    passes = [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]
    return done.returncode, passes, done.stderr  # type: ignore[return-value]


def test_both_passes_run_and_their_copy_is_removed(tmp_path: Any) -> None:
    rc, passes, _ = run_sh(tmp_path)
    assert rc == 0
    assert [build for build, _ in passes] == ["pure", "mypyc"]
    assert passes[0][1] == REPO
    tree = passes[1][1]
    assert tree.startswith(str(tmp_path / "tmp")) and not os.path.exists(tree)
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("failing, code", [("pure", 1), ("mypyc", 3)])
def test_a_failing_pass_is_the_exit_status(tmp_path: Any, failing: str, code: int) -> None:
    """Either pass failing fails the run, and the other pass still runs."""
    rc, passes, _ = run_sh(tmp_path, **{f"FAKE_PYTEST_{failing}": str(code)})
    assert rc == code
    assert [build for build, _ in passes] == ["pure", "mypyc"]


@pytest.mark.parametrize("code", [2, 4])
def test_an_interrupted_first_pass_stops_the_run(tmp_path: Any, code: int) -> None:
    """Ctrl-C in the pure pass (pytest's 2), or arguments pytest refuses (4): the mypyc pass is not started."""
    rc, passes, _ = run_sh(tmp_path, FAKE_PYTEST_pure=str(code))
    assert rc == code
    assert [build for build, _ in passes] == ["pure"]


def test_a_failing_compiled_build_fails_the_run_and_leaves_nothing(tmp_path: Any) -> None:
    rc, passes, _ = run_sh(tmp_path, FAKE_WHEEL_FAIL="1")
    assert rc == 7
    assert [build for build, _ in passes] == ["pure"]
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("builds", ["mypc", "pure, mypyc", "pure,,mypyc", "all"])
def test_unknown_builds_are_an_error(tmp_path: Any, builds: str) -> None:
    """A misspelt TXSMTPSRV_TEST_BUILDS used to run no pass (or one of two) and exit 0."""
    rc, passes, stderr = run_sh(tmp_path, TXSMTPSRV_TEST_BUILDS=builds)
    assert rc == 2 and passes == []
    assert "TXSMTPSRV_TEST_BUILDS" in stderr


@pytest.mark.parametrize("builds, expected", [("pure", ["pure"]), ("mypyc", ["mypyc"]),
                                              ("mypyc,pure", ["pure", "mypyc"])])
def test_one_pass_on_request(tmp_path: Any, builds: str, expected: List[str]) -> None:
    rc, passes, _ = run_sh(tmp_path, TXSMTPSRV_TEST_BUILDS=builds)
    assert rc == 0 and [build for build, _ in passes] == expected


def test_no_compiler_fails_under_ci_only(tmp_path: Any) -> None:
    """Without gcc the mypyc pass cannot run: an error under CI, a warning elsewhere."""
    rc, passes, stderr = run_sh(tmp_path / "ci", gcc=False, CI="true")
    assert rc == 1 and [build for build, _ in passes] == ["pure"]
    assert "cannot test the mypyc build" in stderr
    rc, passes, stderr = run_sh(tmp_path / "dev", gcc=False)
    assert rc == 0 and "cannot test the mypyc build" in stderr
