# -*- test-case-name: tests.test_apidocs -*-
"""
The API reference builds with pydoctor, warning-free, into docs/api/.

The build uses the repository's own configuration (C{[tool.pydoctor]} in
pyproject.toml: epytext, every warning an error, public names documented
under C{txsmtpsrv}), so a docstring that pydoctor cannot parse, or a
C{L{}} link to nothing, fails this test and CI.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from typing import Any, List

import pytest

import txsmtpsrv
from txsmtpsrv._optdoc import _inline, option_docs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(REPO, "docs", "api")


def pydoctor(*args: str, cwd: str = REPO) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pydoctor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def page_text(name: str) -> str:
    with open(os.path.join(OUTPUT, name), encoding="utf-8") as f:
        raw = f.read()
    raw = re.sub(r"(?s)<script.*?</script>", " ", raw)
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", raw).split()))


@pytest.fixture(scope="module")
def reference() -> str:
    """Build docs/api/ once for this module; the build's output (warnings) as text."""
    result = pydoctor("txsmtpsrv")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"pydoctor failed:\n{output}"
    return output


def test_builds_without_warnings(reference: str) -> None:
    """pydoctor reports nothing: no docstring syntax errors, no unresolved links."""
    assert reference.strip() == ""
    assert os.path.exists(os.path.join(OUTPUT, "index.html"))


def test_public_names_documented_in_the_package(reference: str) -> None:
    """Every name in txsmtpsrv.__all__ is documented as txsmtpsrv.<name>, not under a private module."""
    # A class has its own page; a function or a constant is an entry (an anchor) on the package's page.
    with open(os.path.join(OUTPUT, "txsmtpsrv.html"), encoding="utf-8") as f:
        package = f.read()
    missing: List[str] = []
    for name in txsmtpsrv.__all__:
        page = os.path.join(OUTPUT, f"txsmtpsrv.{name}.html")
        if not os.path.exists(page) and f'name="txsmtpsrv.{name}"' not in package:
            missing.append(name)
    assert missing == []
    for name in ("ServerOptions", "SMTPServer", "Hooks", "MessageStream", "TLSConfig"):
        assert os.path.exists(os.path.join(OUTPUT, f"txsmtpsrv.{name}.html")), name


def test_server_options_page_shows_every_option(reference: str) -> None:
    """The ServerOptions page lists every option with its type, its meaning and its default."""
    text = page_text("txsmtpsrv.ServerOptions.html")
    for doc in option_docs(txsmtpsrv.ServerOptions):
        # "name : type = ¶ meaning Default: value ." (a type has no "=" in it)
        m = re.search(rf"(?<![\w.]){doc.name} : ([^=¶]*?) = ¶ (.*?) Default: (.*?) \. ", text)
        assert m is not None, doc.name
        assert m.group(3) == doc.default, doc.name
        # The meaning's first words, markup rendered as text (spacing aside: a link gets spaces around it).
        first_words = "".join(_inline(doc.text, "").split()[:4])
        assert first_words in "".join(m.group(2).split()), doc.name
    assert "Default: 33554432 (32 MiB)" in text
    assert "Default: '{name} Nice to meet you, {client_hostname}'" in text


def test_a_broken_docstring_fails_the_build(tmp_path: Any) -> None:
    """With the repository's settings, a bad docstring or a dangling link makes pydoctor fail."""
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""\nBroken: L{nowhere} and\n\n    an indented block without ::\n"""\n')
    result = pydoctor("--config", os.path.join(REPO, "pyproject.toml"), "--html-output", str(tmp_path / "out"),
                      str(package), cwd=str(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nowhere" in output or "bad docstring" in output, output
