# -*- test-case-name: tests.test_optdoc -*-
"""
Every option documented once (the docstring under its field), and shown
everywhere: C{help(ServerOptions)}, the README's table, the API reference.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pydoc
import subprocess
import sys
from typing import Any

from txsmtpsrv import ServerOptions, ServerOptionsArgs
from txsmtpsrv._optdoc import BEGIN, END, _inline, help_text, option_docs, readme_table, update_readme

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
TOOL = os.path.join(REPO, "tools", "optdoc.py")


def test_every_option_has_a_docstring() -> None:
    """Each ServerOptions field has its own docstring (write one under a new field)."""
    undocumented = [d.name for d in option_docs(ServerOptions) if not d.text]
    assert undocumented == [], f"write a docstring under these fields in _options.py: {undocumented}"
    assert [d.name for d in option_docs(ServerOptions)] == [f.name for f in dataclasses.fields(ServerOptions)]


def test_readme_table_is_current() -> None:
    """README.md's options table is what the docstrings say (else: python tools/optdoc.py)."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert update_readme(text, readme_table(ServerOptions, ServerOptionsArgs)) == text, \
        "run: python tools/optdoc.py"
    for doc in option_docs(ServerOptions, ServerOptionsArgs):
        assert f"| `{doc.name}` | `{doc.type}` | `{doc.default}` |" in text


def test_help_shows_type_default_and_meaning() -> None:
    """help(ServerOptions) lists every option with its type, default and (the start of) its meaning."""
    shown = pydoc.render_doc(ServerOptions, renderer=pydoc.plaintext)
    for doc in option_docs(ServerOptions, ServerOptionsArgs):
        assert f"{doc.name}: {doc.type} = {doc.default}" in shown
        first_words = " ".join(_inline(doc.text, "").split()[:4])
        assert first_words in " ".join(shown.replace("|", " ").split()), doc.name
    assert "size: int = 33554432 (32 MiB)" in shown
    assert "name: str = socket.gethostname()" in shown
    assert "[smtp-server: maxClients]" in shown
    assert "xclient_trusted: str | Iterable[str] = ()" in shown  # the types accepted


def test_typed_arguments_match_the_fields() -> None:
    """ServerOptionsArgs (the typed keyword arguments) has exactly one key per ServerOptions field."""
    fields = [f.name for f in dataclasses.fields(ServerOptions)]
    keys = list(ServerOptionsArgs.__annotations__)
    assert sorted(keys) == sorted(fields), (
        f"add to ServerOptionsArgs: {sorted(set(fields) - set(keys))}; "
        f"remove from it: {sorted(set(keys) - set(fields))}")
    assert not ServerOptionsArgs.__total__  # every option is optional


def test_defaults_shown_are_the_real_defaults() -> None:
    """The default column is derived from the fields, not written by hand."""
    defaults = {d.name: d.default for d in option_docs(ServerOptions)}
    options = ServerOptions()
    for f in dataclasses.fields(ServerOptions):
        if f.default is not dataclasses.MISSING and not isinstance(f.default, frozenset):
            assert defaults[f.name].split(" (")[0] == repr(f.default)
    assert options.size == 32 * 1024 * 1024 and defaults["size"] == "33554432 (32 MiB)"


def test_inline_markup() -> None:
    """Epytext C{}/L{} become code, I{}/B{} plain text, nested braces survive."""
    assert _inline("a C{x} L{y.Z} I{it} B{b}", "`") == "a `x` `y.Z` it b"
    assert _inline("C{{helo}} and C{a{b}c}", "`") == "`{helo}` and `a{b}c`"
    assert _inline("Capital {braces} alone", "`") == "Capital {braces} alone"


def _load(tmp_path: Any, monkeypatch: Any, source: str) -> Any:
    """Import C{source} as module C{sample_options} (registered for this test only)."""
    path = tmp_path / "sample_options.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sample_options", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sample_options", module)
    spec.loader.exec_module(module)
    return module


def test_a_new_option_needs_only_its_docstring(tmp_path: Any, monkeypatch: Any) -> None:
    """Any dataclass documented the same way renders: factories, frozensets, smtp-server notes, a missing doc."""
    module = _load(tmp_path, monkeypatch, '''
from __future__ import annotations
import dataclasses
from typing import FrozenSet, Optional

@dataclasses.dataclass
class Sample:
    """Sample."""
    limit: int = 2 * 1024 * 1024
    """Largest C{thing} | in octets. (smtp-server: C{maxThing}, in ms there)"""
    names: FrozenSet[str] = frozenset({"B", "A"})
    """Names."""
    tags: list = dataclasses.field(default_factory=list)
    """
    Tags, several
    lines long.
    """
    other: Optional[int] = None
''')
    docs = option_docs(module.Sample)
    assert [(d.name, d.type, d.default) for d in docs] == [
        ("limit", "int", "2097152 (2 MiB)"), ("names", "FrozenSet[str]", "('A', 'B')"),
        ("tags", "list", "builtins.list()"), ("other", "Optional[int]", "None")]
    assert docs[0].text == "Largest C{thing} | in octets."
    assert docs[0].smtp_server == "C{maxThing}, in ms there"
    assert docs[2].text == "Tags, several lines long."
    assert docs[3].text == ""
    table = readme_table(module.Sample)
    assert "| `limit` | `int` | `2097152 (2 MiB)` | Largest `thing` \\| in octets. | `maxThing`, in ms there |" in table
    assert "other: Optional[int] = None\n    (undocumented)" in help_text(module.Sample)


def test_tool_check_and_rewrite(tmp_path: Any) -> None:
    """tools/optdoc.py --check fails on a stale table; without --check it rewrites it, and then --check passes."""
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\n| stale |\n{END}\n\nafter\n")

    def run(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, TOOL, *args, str(readme)], capture_output=True, text=True,
                              timeout=60)

    stale = run("--check")
    assert stale.returncode == 1 and "out of date" in stale.stderr
    assert run().returncode == 0
    text = readme.read_text()
    assert "| stale |" not in text and text.endswith(f"{END}\n\nafter\n")
    assert readme_table(ServerOptions, ServerOptionsArgs) in text
    assert run("--check").returncode == 0
    assert subprocess.run([sys.executable, TOOL, "--check"], capture_output=True, timeout=60).returncode == 0
