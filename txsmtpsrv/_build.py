"""
Which build of txsmtpsrv is running: pure Python, or with the dialogue's
modules compiled by mypyc (C{TXSMTPSRV_MYPYC=1} at build time, see
C{setup.py}).  Tests and C{bench/} ask, so that a figure or a test pass says
which build it measured.  Pure: no Twisted import.
"""

from __future__ import annotations

import importlib
from typing import List

__all__ = ["COMPILED", "compiled", "compiled_modules"]

#: The modules C{setup.py} compiles with mypyc (its C{MYPYC_MODULES}).
COMPILED = ("_reader", "_dotcodec", "_commands", "_core", "_cmd_guard", "_cmd_session", "_cmd_mail",
            "_dispatch", "_dialogue")


def compiled_modules() -> List[str]:
    """The modules of L{COMPILED} that were loaded from a C extension, not from their C{.py}."""
    found = []
    for name in COMPILED:
        path = getattr(importlib.import_module(f"txsmtpsrv.{name}"), "__file__", None) or ""
        if not path.endswith((".py", ".pyc")):
            found.append(name)
    return found


def compiled() -> bool:
    """
    Whether this is the mypyc build: every module of L{COMPILED} compiled.
    A mixture (some C{.so} left beside edited sources) raises, since then
    neither build is what runs.
    """
    found = compiled_modules()
    if found and len(found) != len(COMPILED):
        raise RuntimeError(f"txsmtpsrv: a mixed build, compiled only {found}: rebuild or remove the stale .so files")
    return bool(found)
