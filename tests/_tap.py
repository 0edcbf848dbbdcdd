# -*- test-case-name: tests.test_tap_options,tests.test_tap_hooks,tests.test_tap_service,tests.test_tap_workers -*-
"""
What the L{txsmtpsrv._tap} tests (tests/test_tap_*.py) share: an autouse
fixture that runs each test in its own scratch directory (parsing without
--maildir makes ./Maildir), parsing a C{twistd smtpsrv} command line, and
the result of a Deferred that must have fired.

The tests run in memory: options are parsed directly, services run on a
C{MemoryReactorClock}, workers on a fake process reactor. The real thing
(twistd in a subprocess) is in C{test_twistd.py}.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

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


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must have fired; failures are raised."""
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]
