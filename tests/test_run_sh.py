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
from typing import Any, Dict, List, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
  shift 2
  echo "$*" >> "$FAKE_LOG.args"
  eval "exit \${FAKE_PYTEST_$TXSMTPSRV_EXPECT_BUILD:-0}"
fi
exec "$REAL_PYTHON" "$@"
"""


#: A tar that does its work and then, creating an archive, fails anyway when FAKE_TAR_FAIL
#: is set (as GNU tar does with 2 after a file it could not read: the archive is short of it).
FAKE_TAR = r"""#!/bin/sh
"$REAL_TAR" "$@" || exit $?
[ "$1" = -cf ] || exit 0
exit ${FAKE_TAR_FAIL:-0}
"""


def run_sh(tmp_path: Any, gcc: bool = True, args: Sequence[str] = (), repo: str = REPO,
           **env: str) -> Tuple[int, List[Tuple[str, str]], str]:
    """
    Run C{repo}'s tests/run.sh with C{args}; return its exit status, the pytest passes (build,
    directory) and its stderr.
    """
    venv, bin_ = tmp_path / "venv", tmp_path / "bin"
    (venv / "bin").mkdir(parents=True)
    bin_.mkdir()
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    for tool in ("id", "dirname", "mktemp", "rm") + (("gcc",) if gcc else ()):
        real = shutil.which(tool)
        assert real is not None, tool
        (bin_ / tool).symlink_to(real)
    (bin_ / "tar").write_text(FAKE_TAR)
    (bin_ / "tar").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "pytest.log"
    log.write_text("")
    environ: Dict[str, str] = {
        "PATH": str(bin_), "VIRTUAL_ENV": str(venv), "REAL_PYTHON": sys.executable, "FAKE_LOG": str(log),
        "REAL_TAR": shutil.which("tar") or "tar",
        "TMPDIR": str(tmp_path / "tmp"), "HOME": str(tmp_path), **env,
    }
    done = subprocess.run([shutil.which("bash") or "/bin/bash", os.path.join(repo, "tests", "run.sh"), *args],
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


def test_a_wheel_directory_in_the_checkout_is_not_copied(tmp_path: Any) -> None:
    """
    The mypyc pass builds its wheel into the copy's .wheel/ and unpacks the one wheel there: a
    .wheel/ in the checkout (the copy's own, when this suite runs in the mypyc pass) must not be
    copied along, or the build meets a directory it did not make (9 failures of this file in the
    mypyc pass, before).
    """
    repo = tmp_path / "checkout"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "tests", "run.sh"), repo / "tests" / "run.sh")
    (repo / ".wheel").mkdir()
    (repo / ".wheel" / "txsmtpsrv-0-py3-none-any.whl").write_text("stale")
    rc, passes, err = run_sh(tmp_path, repo=str(repo))
    assert rc == 0, err
    assert [build for build, _ in passes] == ["pure", "mypyc"]


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


def test_a_failing_copy_fails_the_run_and_leaves_nothing(tmp_path: Any) -> None:
    """The copy of the checkout for the mypyc pass is a tar pipe: the creating tar's failure counts."""
    rc, passes, _ = run_sh(tmp_path, FAKE_TAR_FAIL="2")
    assert rc == 2
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


@pytest.mark.parametrize("value, failing", [("false", False), ("0", False), ("", False), ("FALSE", False),
                                            ("no", False), ("off", False), ("1", True), ("woodpecker", True)])
def test_ci_false_is_not_ci(tmp_path: Any, value: str, failing: bool) -> None:
    """CI=false (0, no, off, empty) is a developer's machine: no compiler is a warning, not a failure."""
    rc, passes, stderr = run_sh(tmp_path, gcc=False, CI=value)
    assert rc == (1 if failing else 0) and [build for build, _ in passes] == ["pure"]
    assert "cannot test the mypyc build" in stderr


@pytest.mark.parametrize("args", [[], ["tests/test_x.py"], ["-k", "haproxy"], ["tests/test_x.py::test_y", "-x"]])
def test_arguments_go_to_pytest_as_given(tmp_path: Any, args: List[str]) -> None:
    """
    Both passes get the arguments and nothing more: a test file named runs
    that file, not the whole suite as well (pytest's testpaths, in
    pyproject.toml, makes no path mean tests/).
    """
    rc, passes, _ = run_sh(tmp_path, args=args)
    assert rc == 0 and [build for build, _ in passes] == ["pure", "mypyc"]
    given = (tmp_path / "pytest.log.args").read_text().splitlines()
    assert [line.split() for line in given] == [["-q", "-p", "no:cacheprovider", *args]] * 2


def test_no_path_means_the_tests_directory(tmp_path: Any) -> None:
    """pytest with no path, run where the checkout's pyproject.toml is (as run.sh runs it), collects tests/ only."""
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path)
    for path in ("tests/test_a.py", "examples/test_b.py", "test_c.py"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("def test_it() -> None:\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line for line in done.stdout.splitlines() if "::" in line] == ["tests/test_a.py::test_it"]


def _bash_under_ci(values: List[str]) -> List[bool]:
    """run.sh's own C{under_ci}, taken from the script, asked about each value in one bash."""
    with open(os.path.join(REPO, "tests", "run.sh"), encoding="utf-8") as f:
        script = f.read()
    start = script.index("under_ci() {")
    function = script[start:script.index("\n}\n", start) + 3]
    lines = [function]
    for i in range(len(values)):
        lines.append(f'CI=$V{i} under_ci && echo yes || echo no')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    env.update({f"V{i}": value for i, value in enumerate(values)})
    out = subprocess.run(["bash", "-c", "\n".join(lines)], env=env, capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    return [answer == "yes" for answer in out]


_CI_TEXT = st.text(alphabet=st.sampled_from(list("01fFaAlLsSeEnNoOtTrRuUwWdk \t\n\r\x0b\x0c\x1c\x1f-_.")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(_CI_TEXT, st.sampled_from([" false ", "\tOFF\n", "f alse", "n o", " 0", "0 0"])),
                       min_size=1, max_size=40))
def test_run_sh_and_python_read_ci_alike(values: List[str]) -> None:
    """
    tests/run.sh (bash) and tests/_support.under_ci (Python) implement one
    rule in two languages: for any value they agree (run.sh once removed
    white space inside the value too, so CI="f alse" was CI to Python only).
    """
    from tests._support import reads_as_ci

    assert _bash_under_ci(values) == [reads_as_ci(value) for value in values]
