"""
Packaging shim: all metadata lives in C{pyproject.toml}.

This file only keeps C{pip install -e .} working with a pip too old for
PEP 660 editable installs (it then runs C{setup.py develop}, which, like
C{--config-settings editable_mode=compat}, puts the checkout on C{sys.path}
so that Twisted finds C{twisted/plugins/txsmtpsrv_plugin.py} and
C{twistd smtpsrv} works from the working tree).  A PEP 660 "strict"
editable install would hide the plugin: Twisted's plugin discovery looks
for C{twisted/plugins} directories on C{sys.path}, which an import hook
does not provide.

C{TXSMTPSRV_MYPYC=1} at build time (opt-in, as black and charset-normalizer
do) compiles the dialogue's pure modules with mypyc (shipped with mypy)
into C extensions: ~15 % fewer instructions per message (bench/README.md).
The Python sources stay the source of truth and the default build is pure,
so a machine without a C compiler installs as before.  Build a wheel with
it (C{TXSMTPSRV_MYPYC=1 pip wheel .}), not an editable install: a compiled
module next to its C{.py} in a checkout would shadow every later edit of
the C{.py}.  Which build runs: C{txsmtpsrv._build.compiled()}.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

# setuptools packs whatever build/lib* holds: a compiled module left there by
# an earlier TXSMTPSRV_MYPYC=1 build would ship in a pure wheel (and a stale
# one in a compiled wheel).  Every build starts from the sources.
for _stale in glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "lib*")):
    shutil.rmtree(_stale, ignore_errors=True)

#: The modules compiled with TXSMTPSRV_MYPYC=1: the sans-IO dialogue on the
#: per-message path.  Nothing that imports Twisted (compiled as non-native
#: classes they measured slower than interpreted), and not _actions (a list
#: subclass mypyc cannot compile).  Keep in step with _build.COMPILED.
MYPYC_MODULES = [
    "txsmtpsrv/_reader.py", "txsmtpsrv/_dotcodec.py", "txsmtpsrv/_commands.py",
    "txsmtpsrv/_core.py", "txsmtpsrv/_cmd_guard.py", "txsmtpsrv/_cmd_session.py", "txsmtpsrv/_cmd_mail.py",
    "txsmtpsrv/_dispatch.py", "txsmtpsrv/_dialogue.py",
]


def _ext_modules() -> list:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
    try:
        from _build_backend import wants_mypyc  # one reading of TXSMTPSRV_MYPYC for both
    finally:
        del sys.path[0]
    if not wants_mypyc():
        return []
    if {"develop", "editable_wheel"} & set(sys.argv):
        # The developer trap: a .so beside each .py of a checkout, shadowing every later edit.
        sys.exit("TXSMTPSRV_MYPYC=1 builds wheels only, not an editable install (see setup.py)")
    if {"egg_info", "dist_info"} & set(sys.argv):  # metadata only (pip's first steps): nothing to compile
        return []
    try:
        from mypyc.build import mypycify  # the build requirements add mypy (tools/_build_backend.py)
    except ImportError:
        sys.exit("TXSMTPSRV_MYPYC=1 needs mypy (mypyc) and a C compiler with Python's headers")

    # follow-imports=silent: type-check (and compile) only these modules; what
    # they import (through txsmtpsrv/__init__.py: Twisted, and the extras'
    # packages) need not be installed in the build environment.
    return mypycify(["--follow-imports=silent", *MYPYC_MODULES], opt_level=os.environ.get("TXSMTPSRV_MYPYC_OPT", "3"))


setup(ext_modules=_ext_modules())
