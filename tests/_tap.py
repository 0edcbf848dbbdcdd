# -*- test-case-name: tests.test_tap_options,tests.test_tap_hooks,tests.test_tap_service,tests.test_tap_workers -*-
"""
What the L{txsmtpsrv._tap} tests (tests/test_tap_*.py) share: an autouse
fixture that runs each test in its own scratch directory (parsing without
--maildir makes ./Maildir) and parsing a C{twistd smtpsrv} command line
(the result of a fired Deferred: C{tests._support.result}).

The tests run in memory: options are parsed directly, services run on a
C{MemoryReactorClock}, workers on a fake process reactor. The real thing
(twistd in a subprocess) is in C{test_twistd.py}.
"""

from __future__ import annotations

from typing import Any

import pytest

from txsmtpsrv._tap import Options


@pytest.fixture(autouse=True)
def _scratch_directory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --maildir, parsing makes ./Maildir: in the test's directory, never in the checkout."""
    monkeypatch.chdir(tmp_path)


def parse(*argv: str) -> Options:
    """Parse a C{twistd smtpsrv} command line."""
    options = Options()
    options.parseOptions(list(argv))
    return options


