# -*- test-case-name: tests.test_tap_hooks -*-
"""
--hooks in C{twistd smtpsrv}: a hooks class or module object named on the
command line is loaded (from a module written by the test), its hooks come
first and a user on_data replaces delivery; L{LayeredHooks} sends on_close
to every layer.
"""

from __future__ import annotations

import os
import sys

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from txsmtpsrv import Hooks
from txsmtpsrv._delivery import MaildirDelivery
from txsmtpsrv._tap import LayeredHooks, makeService

from tests._tap import _scratch_directory  # noqa: F401 (the autouse fixture)
from tests._support import result
from tests._tap import parse


# ---------------------------------------------------------------------------
# Hooks


def write_module(directory, name: str, source: str) -> None:
    """Write a Python module the test then imports by name."""
    (directory / f"{name}.py").write_text(source)


POLICY = '''
from txsmtpsrv import Hooks, SMTPError

class Policy(Hooks):
    instances = 0

    def __init__(self):
        Policy.instances += 1

    def on_rcpt_to(self, session, address):
        if address.local_part == "blocked":
            raise SMTPError(550, "No such user", "5.1.1")

policy = Policy

def on_helo(session, hostname):
    pass
'''


@pytest.fixture
def policy_module(tmp_path, monkeypatch):
    """A hooks module importable as 'txsmtpsrv_test_policy'."""
    name = "txsmtpsrv_test_policy"
    write_module(tmp_path, name, POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("suffix", [":Policy", ".Policy", ":policy"])
def test_hooks_class_is_loaded_and_instantiated(policy_module, suffix, tmp_path):
    """A class named with ':' or '.' is instantiated by makeService; its hooks come first."""
    options = parse("--hooks", policy_module + suffix, "--maildir", str(tmp_path / "md"))
    cls = sys.modules[policy_module].Policy
    assert options.hooksObject is cls
    service = makeService(options, reactor=MemoryReactorClock())
    hooks = service.server.hooks
    assert isinstance(hooks, LayeredHooks)
    assert isinstance(hooks.layers[0], cls) and cls.instances == 1
    resolved = service.server._hooks
    assert resolved.on_rcpt_to.__func__ is cls.on_rcpt_to
    assert isinstance(resolved.on_data.__self__, MaildirDelivery)
    assert resolved.on_mail_from is None  # inherited do-nothing hooks don't count


def test_hooks_module_object(policy_module):
    """A module works as a hooks object: its on_* functions are the hooks."""
    options = parse("--hooks", policy_module)
    service = makeService(options, reactor=MemoryReactorClock())
    assert service.server._hooks.on_helo is sys.modules[policy_module].on_helo


def test_user_on_data_replaces_delivery(tmp_path):
    """A hooks object with on_data takes over delivery; one without leaves it to the Maildir."""
    class Mine:
        def on_data(self, session, stream):
            pass

    delivery = MaildirDelivery(str(tmp_path))
    assert LayeredHooks(Mine(), delivery).on_data.__self__.__class__ is Mine
    assert LayeredHooks(Hooks(), delivery).on_data.__self__ is delivery
    with pytest.raises(AttributeError):
        LayeredHooks(Hooks(), delivery).on_connect  # noqa: B018
    with pytest.raises(AttributeError):
        LayeredHooks(delivery).layers_  # noqa: B018


def test_on_close_goes_to_every_layer():
    """Each layer's on_close runs, and one failing doesn't stop the others."""
    calls = []

    class A:
        def on_close(self, session):
            calls.append("a")
            raise RuntimeError("boom")

    class B:
        def on_close(self, session):
            calls.append("b")

    with capturedLogs() as events:
        result(LayeredHooks(A(), B()).on_close("session"))
    assert calls == ["a", "b"]
    assert any("on_close hook failed" in formatEvent(e) for e in events)


def test_workers_find_hooks_in_the_parents_directory(tmp_path, monkeypatch):
    """
    A --hooks module found in the working directory is found by the workers too:
    they start after twistd's --rundir chdir, so the directory goes on their
    PYTHONPATH.
    """
    name = "txsmtpsrv_test_rundir_policy"
    write_module(tmp_path, name, POLICY)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    options = parse("--hooks", f"{name}:Policy", "--workers", "2", "-l", "tcp:0:interface=127.0.0.1",
                    "--maildir", str(tmp_path / "md"))
    service = makeService(options, reactor=MemoryReactorClock())
    pool = service.pool
    try:
        assert str(tmp_path) in pool._env["PYTHONPATH"].split(os.pathsep)
    finally:
        for port in pool.ports:
            port.close()
        for cleanup in service.cleanups:  # the shared development certificate's directory
            cleanup()
        sys.modules.pop(name, None)


def test_workers_find_hooks_on_a_relative_pythonpath(tmp_path, monkeypatch):
    """
    PYTHONPATH=lib found the --hooks module here (Python made the entry absolute on
    sys.path); the workers, started after --rundir's chdir, get it absolute too.
    """
    from txsmtpsrv._workers import worker_environment

    (tmp_path / "lib").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["lib", str(tmp_path / "other")]))
    paths = worker_environment()["PYTHONPATH"].split(os.pathsep)
    assert str(tmp_path / "lib") in paths and "lib" not in paths
    assert str(tmp_path / "other") in paths
