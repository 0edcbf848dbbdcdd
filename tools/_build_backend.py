"""
The build backend: setuptools', plus mypy among the build requirements when
C{TXSMTPSRV_MYPYC=1} asks for the compiled build (see C{setup.py}), so that
C{TXSMTPSRV_MYPYC=1 pip install .} works in pip's isolated build
environment.  Without the variable it is setuptools unchanged.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the rest of PEP 517 and 660 as setuptools has it)

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


def _mypyc() -> List[str]:
    return MYPYC_REQUIRES if wants_mypyc() else []


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return list(_setuptools.get_requires_for_build_wheel(config_settings)) + _mypyc()


def _no_compiled_editable() -> None:
    if _mypyc():
        # The developer trap: a .so beside each .py of a checkout would shadow every later edit.
        raise SystemExit("TXSMTPSRV_MYPYC=1 builds wheels only, not an editable install (see setup.py)")


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
