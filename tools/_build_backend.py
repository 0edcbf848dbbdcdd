"""
The build backend: setuptools', plus mypy among the build requirements when
C{TXSMTPSRV_MYPYC=1} asks for the compiled build (see C{setup.py}), so that
C{TXSMTPSRV_MYPYC=1 pip install .} works in pip's isolated build
environment.  Without the variable it is setuptools unchanged.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the rest of PEP 517 and 660 as setuptools has it)
from setuptools.command.build_ext import build_ext as _build_ext

#: What setup.py's mypycify needs: mypy (mypyc ships inside it) and the
#: plugin the package's mypy configuration (pyproject.toml) loads; pinned as
#: the test extra pins them.
MYPYC_REQUIRES = ["mypy~=2.4.1", "mypy-zope~=1.0.17"]


def wants_mypyc() -> bool:
    """
    Whether C{TXSMTPSRV_MYPYC} asks for the compiled build (C{1}, C{true},
    C{yes}, C{on}, any case; unset, empty, C{0}, C{false}, C{no}, C{off}: the
    pure one). Anything else stops the build: C{TXSMTPSRV_MYPYC=True} used to
    build a pure wheel without a word. (setup.py asks here too.)
    """
    value = os.environ.get("TXSMTPSRV_MYPYC", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise SystemExit(f"TXSMTPSRV_MYPYC={os.environ['TXSMTPSRV_MYPYC']!r}: say 1 (the mypyc build) or 0 (pure)")


#: Why compiled modules are never built into a checkout.
IN_CHECKOUT = ("TXSMTPSRV_MYPYC=1 builds wheels only, not an editable install or build_ext --inplace: "
               "a compiled module beside its .py in a checkout would shadow every later edit (see setup.py)")

#: setup.py commands that write no compiled module: metadata, and the sdist
#: (the sources either way; TXSMTPSRV_MYPYC=1 applies to the wheel built from it).
_NO_COMPILING = {"egg_info", "dist_info", "sdist"}
#: Commands that build, when given with one of those (C{setup.py sdist bdist_wheel}).
_BUILDING = {"build", "build_ext", "bdist", "bdist_wheel", "bdist_egg", "install"}


def compiles(argv: Sequence[str]) -> bool:
    """
    Whether setup.py run with C{argv} (its arguments) compiles with mypyc:
    only when L{wants_mypyc}, and not for metadata or an sdist. An
    editable install or C{build_ext --inplace} (also C{-i}, C{-fi}) is
    refused here, before anything is compiled; L{BuildExt} refuses the
    ways of asking for it that C{argv} does not show (setup.cfg).
    """
    if not wants_mypyc():
        return False
    given = set(argv)
    inplace = "build_ext" in given and any(a == "--inplace" or re.fullmatch(r"-[fg]*i[fgi]*", a) for a in argv)
    if inplace or {"develop", "editable_wheel"} & given:
        raise SystemExit(IN_CHECKOUT)
    return not (given & _NO_COMPILING) or bool(given & _BUILDING)


class BuildExt(_build_ext):  # type: ignore[misc, unused-ignore]  # setuptools: typed in some versions only
    """setuptools' build_ext, refusing to write compiled modules into the source tree (C{inplace})."""

    def run(self) -> None:
        if self.inplace and self.extensions:
            raise SystemExit(IN_CHECKOUT)
        super().run()


def _mypyc() -> List[str]:
    return MYPYC_REQUIRES if wants_mypyc() else []


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return list(_setuptools.get_requires_for_build_wheel(config_settings)) + _mypyc()


def _no_compiled_editable() -> None:
    if _mypyc():
        # The developer trap: a .so beside each .py of a checkout would shadow every later edit.
        raise SystemExit(IN_CHECKOUT)


def get_requires_for_build_editable(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    _no_compiled_editable()
    return list(_setuptools.get_requires_for_build_editable(config_settings))


def prepare_metadata_for_build_editable(metadata_directory: str,
                                        config_settings: Optional[Dict[str, Any]] = None) -> str:
    _no_compiled_editable()
    return str(_setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings))


def build_editable(wheel_directory: str, config_settings: Optional[Dict[str, Any]] = None,
                   metadata_directory: Optional[str] = None) -> str:
    _no_compiled_editable()
    return str(_setuptools.build_editable(wheel_directory, config_settings, metadata_directory))
