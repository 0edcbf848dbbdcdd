"""
The mypyc build of txsmtpsrv for the benchmarks (``txsmtpsrv+mypyc`` in
``bench.py``, ``new+mypyc`` in ``instructions.py``): a wheel built from the
checkout with ``TXSMTPSRV_MYPYC=1`` (see setup.py), unpacked into a directory
that goes first on the server's PYTHONPATH. The checkout itself never gets a
compiled module (it would shadow later edits of the ``.py``). The server
reports which build it runs in its READY line (``build=mypyc``), and the
harnesses refuse a run whose build is not the one asked for.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = "+mypyc"


def split(name: str) -> tuple[str, bool]:
    """C{txsmtpsrv+mypyc} -> (C{txsmtpsrv}, True); other names unchanged, False."""
    if name.endswith(SUFFIX):
        return name[: -len(SUFFIX)], True
    return name, False


def build_tree(dest: str | None = None, source: str = ROOT, log=sys.stderr) -> str:
    """
    Build the compiled wheel of C{source} and unpack it into C{dest} (a new
    temporary directory by default); return C{dest}. Needs a C compiler and
    Python's headers (Debian: gcc, python3-dev); takes about a minute.
    The wheel is not kept, nor a temporary C{dest} when the build fails.
    """
    made = dest is None
    dest = dest or tempfile.mkdtemp(prefix="txsmtpsrv-mypyc-")
    log.write(f"building the mypyc wheel of {source} (about a minute)...\n")
    log.flush()
    try:
        with tempfile.TemporaryDirectory(prefix="txsmtpsrv-mypyc-wheel-") as wheels:  # only the tree stays
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", source,
                 "-w", wheels],
                check=True, env=dict(os.environ, TXSMTPSRV_MYPYC="1"),
            )
            (wheel,) = glob.glob(os.path.join(wheels, "txsmtpsrv-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                z.extractall(dest)
        check_tree(dest)
    except BaseException:
        if made:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    if made:  # kept for --mypyc-tree; nothing else is left behind
        log.write(f"the mypyc build is in {dest} (reuse it with --mypyc-tree {dest}; remove it when done)\n")
    return dest


def check_tree(tree: str) -> None:
    """Raise unless C{tree} imports a fully compiled txsmtpsrv (C{txsmtpsrv._build.compiled()})."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run(
        [sys.executable, "-c", "import txsmtpsrv, txsmtpsrv._build as b; print(b.compiled(), txsmtpsrv.__file__)"],
        capture_output=True, text=True, env=env, cwd=tree,
    )
    if out.returncode != 0 or not out.stdout.startswith("True "):
        raise RuntimeError(f"{tree} does not hold a compiled txsmtpsrv: {out.stdout.strip()} {out.stderr.strip()}")
