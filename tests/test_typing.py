# -*- test-case-name: tests.test_typing -*-
"""
The package type-checks under C{mypy --strict} (with mypy-zope), as
configured in pyproject.toml, and its keyword options are typed: a
misspelt option or a value of the wrong type passed to C{SMTPServer} is a
type error, not only a run-time one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "pyproject.toml")


def mypy(*args: str, cwd: str = REPO) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--config-file", CONFIG, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_package_is_strict_clean() -> None:
    """mypy --strict (pyproject.toml's settings, mypy-zope plugin) finds nothing in txsmtpsrv."""
    result = mypy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_option_typos_are_type_errors(tmp_path: Any) -> None:
    """A misspelt option or a wrongly typed one is reported; well-typed calls pass."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from txsmtpsrv import SMTPServer, ServerOptions\n"
        "SMTPServer(None, max_client=3)\n"                                    # line 2: typo
        "SMTPServer(None, size='10M')\n"                                      # line 3: wrong type
        "ServerOptions.build(maxClients=3)\n"                                 # line 4: camelCase
        "SMTPServer(None, bare_line_endings='maybe')\n"                       # line 5: not a choice
        "SMTPServer(None, name='mx.test', max_clients=3, size=1024,\n"
        "           disabled_commands='VRFY,EXPN', auth_methods=['PLAIN'],\n"
        "           xclient_trusted=['10.0.0.0/8'], tls={'key': 'k.pem'}, socket_timeout=30)\n"
        "ServerOptions.build(ServerOptions(), hide_dsn=True)\n"
    )
    result = mypy(str(snippet), cwd=str(tmp_path))
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    assert lines == [2, 3, 4, 5], result.stdout
    assert 'Unexpected keyword argument "max_client"' in result.stdout
    assert 'did you mean "max_clients"?' in result.stdout
