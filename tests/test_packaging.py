# -*- test-case-name: tests.test_packaging -*-
"""
The package as pip sees it: license, metadata, one version, the Twisted
plugin shipped in the wheel, a changelog entry for the release.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from typing import Any

import txsmtpsrv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dist_metadata() -> Any:
    return metadata.metadata("txsmtpsrv")


def test_license_file_is_mit() -> None:
    """LICENSE holds the MIT terms; the metadata says MIT as an SPDX expression."""
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text
    assert dist_metadata()["License-Expression"] == "MIT"


def test_metadata_complete() -> None:
    """pip show has a summary, an author, a home page and the project URLs."""
    meta = dist_metadata()
    assert meta["Summary"]
    assert meta["Author"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    assert meta["Requires-Python"] == ">=3.10"
    assert any(r.startswith("twisted[tls]") for r in metadata.requires("txsmtpsrv") or [])


def test_extras() -> None:
    """The extras users install by name exist; bcrypt (auth file hashes) is in one and in the test set."""
    meta = dist_metadata()
    assert {"test", "docs", "metrics", "bcrypt", "bench"} <= set(meta.get_all("Provides-Extra") or [])
    requires = metadata.requires("txsmtpsrv") or []
    for extra in ("bcrypt", "test"):
        assert any(r.startswith("bcrypt") and f'extra == "{extra}"' in r for r in requires), extra


def test_classifiers() -> None:
    """Classifiers name the status, the Python versions supported (matching Requires-Python) and typing."""
    classifiers = set(dist_metadata().get_all("Classifier"))
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    versions = sorted(c.rsplit(" ", 1)[1] for c in classifiers
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in versions
    assert {"Framework :: Twisted", "Typing :: Typed"} <= classifiers
    # PEP 639: the License-Expression replaces license classifiers.
    assert not any(c.startswith("License ::") for c in classifiers)


def test_one_version() -> None:
    """The version is written once, in txsmtpsrv/_version.py; the metadata and setup files take it from there."""
    assert metadata.version("txsmtpsrv") == txsmtpsrv.__version__
    for name in ("pyproject.toml", "setup.py"):
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            assert txsmtpsrv.__version__ not in f.read(), name


def test_changelog_has_this_release() -> None:
    """CHANGELOG.md starts with an Unreleased section, then has a section for the current version."""
    with open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8") as f:
        headings = re.findall(r"(?m)^## \[([^\]]+)\]", f.read())
    assert headings[0] == "Unreleased"
    assert txsmtpsrv.__version__ in headings


def test_wheel_ships_the_plugin(tmp_path: Any) -> None:
    """A built wheel holds the package, py.typed, LICENSE and the twisted/plugins modules, but no dropin.cache."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp_path), REPO],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TXSMTPSRV_MYPYC"})  # the default build
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    assert wheel.startswith(f"txsmtpsrv-{txsmtpsrv.__version__}-py3-none-any")
    with zipfile.ZipFile(tmp_path / wheel) as z:
        names = set(z.namelist())
    assert {"twisted/plugins/txsmtpsrv_plugin.py", "twisted/plugins/txsmtpsrv_endpoints.py",
            "twisted/plugins/txsmtpsrv_reactor.py", "txsmtpsrv/__init__.py", "txsmtpsrv/py.typed"} <= names
    assert f"txsmtpsrv-{txsmtpsrv.__version__}.dist-info/licenses/LICENSE" in names
    assert not any(n.endswith("dropin.cache") or n.startswith(("tests/", "twisted/__init__")) for n in names)
    # Pure: no compiled module, not even one an earlier TXSMTPSRV_MYPYC=1 build left in build/
    # (tests/run.sh's mypyc pass runs this test in the tree it compiled).
    assert not any(n.endswith((".so", ".pyd", ".c")) for n in names)
    # Every module of the package, subpackages included, is in the wheel.
    for directory, _, files in os.walk(os.path.join(REPO, "txsmtpsrv")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(directory, name), REPO).replace(os.sep, "/")
                assert path in names, f"{path} is missing from the wheel (pyproject.toml packages?)"
