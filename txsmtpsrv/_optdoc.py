# -*- test-case-name: tests.test_optdoc -*-
"""
Documentation of L{ServerOptions}, generated from its source.

Every option is documented once, by the docstring written under its field
in C{_options.py}: pydoctor shows those attribute docstrings in the API
reference, but Python drops them at run time (PEP 224 was rejected), so
this module reads them back from the source and renders them twice:

  - as plain text appended to C{ServerOptions.__doc__}, so that
    C{help(ServerOptions)} lists every option's type, default and meaning;
  - as the Markdown table between the markers in C{README.md}, rewritten by
    C{python tools/optdoc.py} (C{--check} only compares, as the tests
    do).

A docstring may end with C{(smtp-server: C{nodeName}...)}, naming the
equivalent option of Node's C{smtp-server}; it becomes its own column.
Adding an option therefore takes one field and one docstring, nothing else.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import textwrap
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

__all__ = ["OptionDoc", "option_docs", "help_text", "readme_table", "update_readme", "main"]

BEGIN = ("<!-- BEGIN options table: generated from the ServerOptions docstrings in "
         "txsmtpsrv/_options.py by `python tools/optdoc.py`; edit those, not this -->")
END = "<!-- END options table -->"

_SMTP_SERVER = re.compile(r"\s*\(smtp-server: (.*)\)\s*$", re.S)
_MIB = 1024 * 1024


class OptionDoc(NamedTuple):
    """One option as documented: name, type, default and meaning (epytext)."""

    name: str
    type: str
    default: str
    text: str
    smtp_server: str


def field_docstrings(cls: type) -> Dict[str, str]:
    """
    The attribute docstrings in the body of C{cls}: the string literal
    right after each annotated assignment.

    @raise OSError: the source is not available (e.g. only bytecode).
    """
    # Cheaper than inspect.getsource (this runs at import): parse the module
    # and take the top-level class of that name.
    path = inspect.getsourcefile(cls)
    if path is None:
        raise OSError(f"no source file for {cls!r}")
    with open(path, encoding="utf-8") as f:
        module = ast.parse(f.read())
    classes = [n for n in module.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    if not classes:
        raise OSError(f"class {cls.__name__} not found in {path}")
    node = classes[0]
    docs: Dict[str, str] = {}
    for stmt, after in zip(node.body, node.body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _default(f: dataclasses.Field[Any]) -> str:
    factory = f.default_factory
    if factory is not dataclasses.MISSING:
        module = getattr(factory, "__module__", "").lstrip("_")  # _socket -> socket
        return f"{module}.{getattr(factory, '__qualname__', repr(factory))}()"
    value = f.default
    if isinstance(value, frozenset):
        return repr(tuple(sorted(value))) if value else "frozenset()"
    if isinstance(value, int) and not isinstance(value, bool) and value >= _MIB and value % _MIB == 0:
        return f"{value} ({value // _MIB} MiB)"
    return repr(value)


def _annotation(value: Any) -> str:
    """An annotation as written: strings stay, forward references give their text."""
    if isinstance(value, str):
        return value
    forward = getattr(value, "__forward_arg__", None)
    if isinstance(forward, str):
        return forward
    return getattr(value, "__name__", repr(value))


def option_docs(cls: type, arguments: Optional[type] = None) -> List[OptionDoc]:
    """
    Every field of the dataclass C{cls} in order, with its docstring ("" if
    it has none). The type shown is the field's, or the one a C{TypedDict}
    of keyword C{arguments} accepts for it.
    """
    docs = field_docstrings(cls)
    accepted = getattr(arguments, "__annotations__", {}) if arguments is not None else {}
    result = []
    for f in dataclasses.fields(cls):
        text = docs.get(f.name, "")
        smtp_server = ""
        m = _SMTP_SERVER.search(text)
        if m is not None:
            text, smtp_server = text[:m.start()], " ".join(m.group(1).split())
        type_ = _annotation(accepted[f.name] if f.name in accepted else f.type)
        result.append(OptionDoc(f.name, type_, _default(f), " ".join(text.split()), smtp_server))
    return result


def _inline(text: str, code: str) -> str:
    """
    Epytext inline markup (C{C{x}}, C{L{x}}, C{I{x}}, C{B{x}}, nested
    braces allowed) rendered with C{code} around code and links.
    """
    out: List[str] = []
    i = 0
    while i < len(text):
        if text[i] in "CLIBU" and text.startswith("{", i + 1):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            inner = text[i + 2:j - 1]
            out.append(f"{code}{inner}{code}" if text[i] in "CL" else inner)
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def help_text(cls: type, arguments: Optional[type] = None) -> str:
    """The option list for C{help()}: name, type, default, then the meaning, indented."""
    lines = ["Options (keyword arguments of SMTPServer, all optional):", ""]
    for doc in option_docs(cls, arguments):
        lines.append(f"{doc.name}: {doc.type} = {doc.default}")
        meaning = _inline(doc.text, "") or "(undocumented)"
        if doc.smtp_server:
            meaning += f" [smtp-server: {_inline(doc.smtp_server, '')}]"
        lines.extend(textwrap.wrap(meaning, 76, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines)


def with_help_text(cls: type, arguments: Optional[type] = None) -> Optional[str]:
    """C{cls.__doc__} followed by L{help_text}; unchanged if the source cannot be read."""
    try:
        listing = help_text(cls, arguments)
    except (OSError, TypeError):
        return cls.__doc__
    base = inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""
    return f"{base}\n\n{listing}\n" if base else listing + "\n"


def _cell(text: str) -> str:
    return _inline(text, "`").replace("|", "\\|")


def readme_table(cls: type, arguments: Optional[type] = None) -> str:
    """The Markdown table of every option, as it stands between the README's markers."""
    rows = ["| option | type | default | meaning | smtp-server |", "|---|---|---|---|---|"]
    for doc in option_docs(cls, arguments):
        rows.append(f"| `{doc.name}` | `{doc.type}` | `{doc.default}` | {_cell(doc.text)} | "
                    f"{_cell(doc.smtp_server)} |")
    return "\n".join(rows)


def update_readme(text: str, table: str) -> str:
    """C{text} with everything between the markers replaced by C{table}."""
    m = re.search(r"<!-- BEGIN options table\b.*?-->\n(.*?)" + re.escape(END), text, re.S)
    if m is None:
        raise ValueError(f"README has no {BEGIN!r} ... {END!r} markers")
    return text[:m.start()] + BEGIN + "\n" + table + "\n" + text[m.end() - len(END):]


def main(argv: Sequence[str], options: type, arguments: Optional[type] = None) -> int:
    """
    C{tools/optdoc.py [--check] README.md}: rewrite the README's table of
    C{options} (a dataclass; C{arguments}: its keyword C{TypedDict}), or
    with C{--check} exit 1 if it is out of date. The classes are passed in,
    so that this module, which C{_options} imports, imports nothing of ours.
    """
    check = "--check" in argv
    (path,) = [a for a in argv if a != "--check"]
    with open(path, encoding="utf-8") as f:
        old = f.read()
    new = update_readme(old, readme_table(options, arguments))
    if new == old:
        return 0
    if check:
        sys.stderr.write(f"{path}: the options table is out of date; run python tools/optdoc.py\n")
        return 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    sys.stderr.write(f"{path}: options table updated\n")
    return 0
