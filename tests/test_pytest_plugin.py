# -*- test-case-name: tests.test_pytest_plugin -*-
"""
The pytest plugin and the threaded server, used as a user's project would.

Each test copies files from C{tests/user_project/} into a fresh directory
and runs pytest there in a subprocess (C{pytester.runpytest_subprocess}):
the plugin is found through its C{pytest11} entry point, exactly as after
C{pip install txsmtpsrv}. A subprocess also keeps this suite's reactor
(driven by trial test cases) apart from the threaded server's.
"""

from __future__ import annotations

import os
from typing import Any

pytest_plugins = ["pytester"]

PROJECT = os.path.join(os.path.dirname(__file__), "user_project")


def _copy(pytester: Any, **files: str) -> None:
    """Write each C{user_project/<source>} as C{<name>.py} in the test directory."""
    for name, source in files.items():
        with open(os.path.join(PROJECT, source), encoding="utf-8") as f:
            pytester.makepyfile(**{name: f.read()})


def _run(pytester: Any, *args: str) -> Any:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=300)
    return result


def test_user_project_with_smtplib_and_aiosmtplib(pytester: Any) -> None:
    """The fixtures, every sender and option in mail_tests.py; all pass."""
    _copy(pytester, mailer="mailer.py", test_mail="mail_tests.py")
    result = _run(pytester)
    result.assert_outcomes(passed=14)


def test_no_leaks_after_100_cycles(pytester: Any) -> None:
    """Start + one message + stop, 100 times: the same threads and descriptors after as before."""
    _copy(pytester, test_leaks="leak_tests.py")
    _run(pytester).assert_outcomes(passed=2)


def test_reactor_run_by_the_application(pytester: Any) -> None:
    """When the application already runs the reactor in a thread, ThreadedServer uses it."""
    _copy(pytester, test_own_reactor="own_reactor_tests.py")
    _run(pytester).assert_outcomes(passed=1)


def test_plugin_loads_nothing_and_survives_without_crochet(pytester: Any) -> None:
    """
    Loading the plugin imports neither txsmtpsrv nor Twisted; without crochet
    only the tests that use a server fail, with an ImportError naming it.
    """
    pytester.makeconftest("import sys\nsys.modules['crochet'] = None  # as if not installed\n")
    pytester.makepyfile(test_light="""
        import sys

        def test_plugin_is_light():
            assert "_txsmtpsrv_pytest" in sys.modules
            assert "txsmtpsrv" not in sys.modules
            assert "twisted.internet.reactor" not in sys.modules

        def test_fixture_needs_crochet(smtp_server):
            pass
    """)
    result = _run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ModuleNotFoundError*crochet*"])


def test_plugin_can_be_disabled(pytester: Any) -> None:
    """-p no:txsmtpsrv removes the fixtures (the entry point's name is txsmtpsrv)."""
    pytester.makepyfile(test_x="def test_x(smtp_server):\n    pass\n")
    result = _run(pytester, "-p", "no:txsmtpsrv")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'smtp_server' not found*"])
