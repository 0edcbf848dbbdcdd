# -*- test-case-name: tests.test_diskio_threads -*-
"""
Issue 13 part 1, the NOOP latency levers of the delivery threads: the
threads run below the reactor's priority, and a Maildir's directories are
checked once rather than for every message (made again if they vanish).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, List

import pytest
from twisted.internet.defer import Deferred

from txsmtpsrv import _diskio
from txsmtpsrv._data import MessageStream
from txsmtpsrv._diskio import ThreadIO, lower_thread_priority
from txsmtpsrv._maildir import MaildirDelivery
from txsmtpsrv._session import Address, Session


class HeldReactor:
    """Queues what threads hand to callFromThread until the test runs it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: List[Callable[[], Any]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append(lambda: f(*args))

    def addSystemEventTrigger(self, *args: Any) -> None:
        pass

    def run_queued(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for call in calls:
            call()
        return len(calls)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_delivery_threads_run_below_the_reactor_priority():
    held = HeldReactor()
    io = ThreadIO(1, held)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    try:
        d = io.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        wait_for(lambda: bool(held.calls))
        held.run_queued()
        assert d.result == min(19, mine + _diskio.THREAD_NICENESS)
        assert _diskio.THREAD_NICENESS > 0
    finally:
        io.stop()
    # ... and only the thread's: this one is untouched.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_lower_thread_priority_zero_changes_nothing(monkeypatch):
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    calls: List[Any] = []
    monkeypatch.setattr(os, "setpriority", lambda *args: calls.append(args))
    lower_thread_priority(0)
    assert calls == []  # not even set to the value it has (which no priority reading could tell)
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine


def deliver(delivery: MaildirDelivery, n: int) -> Any:
    s = Session(f"s{n}", "127.0.0.1", 25, "192.0.2.1", 40000 + n)
    s.host_name_appears_as = "client.example"
    s.opening_command = "EHLO"
    s.envelope.mail_from = Address("bob@example.com")
    s.envelope.rcpt_to = [Address("alice@example.org")]
    stream = MessageStream(lambda: None, lambda: None, 0)
    d: Deferred[None] = delivery.on_data(s, stream)
    stream.write(f"Subject: {n}\r\n\r\nbody\r\n".encode())
    stream.finish()
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "inline delivery did not finish"
    return out[0]


@pytest.fixture
def made(monkeypatch: Any) -> List[str]:
    """The directories the Maildir delivery makes (it still makes them), in order."""
    paths: List[str] = []
    real = _diskio.make_directory

    def counting(path: str) -> None:
        paths.append(path)
        real(path)

    monkeypatch.setattr("txsmtpsrv._maildir.make_directory", counting)
    return paths


def test_maildir_directories_checked_once_and_made_again_if_removed(tmp_path, made):
    box = tmp_path / "Maildir"
    delivery = MaildirDelivery(str(box), "mx.test", threads=0)
    for n in range(3):
        assert deliver(delivery, n) is None
    assert len(made) == 4  # the Maildir and cur, new, tmp: once, not per message
    assert len(os.listdir(box / "new")) == 3
    shutil.rmtree(box)  # an operator removes it under a running server
    assert deliver(delivery, 3) is None
    assert len(made) == 8
    assert len(os.listdir(box / "new")) == 1
    assert sorted(os.listdir(box)) == ["cur", "new", "tmp"]


def test_maildir_new_removed_after_the_first_delivery_is_made_again(tmp_path):
    box = tmp_path / "Maildir"
    delivery = MaildirDelivery(str(box), "mx.test", threads=0)
    assert deliver(delivery, 0) is None
    shutil.rmtree(box / "new")
    assert deliver(delivery, 1) is None
    assert len(os.listdir(box / "new")) == 1 and os.listdir(box / "tmp") == []


def test_maildir_tmp_that_cannot_be_made_fails_once_not_forever(tmp_path, made):
    """
    tmp/ a dangling symlink (its target on a mount that is gone): making the
    directories "succeeds" and creating the file still finds no directory.
    The delivery fails with that error after one more try, not by recursing
    until Python gives up.
    """
    box = tmp_path / "Maildir"
    delivery = MaildirDelivery(str(box), "mx.test", threads=0)
    assert deliver(delivery, 0) is None  # the directories are made and known
    shutil.rmtree(box / "tmp")
    os.symlink(tmp_path / "gone", box / "tmp")
    made.clear()
    with pytest.raises(FileNotFoundError):
        delivery._create_tmp(time.time())
    assert len(made) <= 8  # the Maildir and cur, new, tmp made again once (not ~1000 times)
    failure = deliver(delivery, 1)  # the client gets the local error, the log the real one
    assert failure is not None and not failure.check(RecursionError)
