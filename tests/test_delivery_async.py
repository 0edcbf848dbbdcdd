# -*- test-case-name: tests.test_delivery_async -*-
"""
Issue 13 part 1: the file deliveries off the reactor thread, with group
commit, and still nothing lost.

Most tests drive the deliveries with L{ManualIO}, which queues each blocking
call until the test runs it, so every interleaving the thread pool could
produce can be forced step by step. A durability oracle records the real
C{fsync}/C{rename} calls and each message's acknowledgement and checks the
rule that makes a C{250} safe: the file was C{fsync}ed, then renamed, then a
directory C{fsync} *begun after the rename* ended -- all before the answer.
Then the same with the real thread pool on the reactor, and a crash test: a
C{twistd smtpsrv} killed with SIGKILL under load keeps every message it
acknowledged.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, List, Tuple

import pytest
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.trial import unittest

from txsmtpsrv import _diskio, _maildir, _mbox
from txsmtpsrv._data import MessageStream
from txsmtpsrv._diskio import FLUSH_AT, ThreadIO
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._maildir import MaildirDelivery
from txsmtpsrv._mbox import MboxDelivery
from txsmtpsrv._session import Address, Session

ROOT = Path(__file__).resolve().parent.parent


class ManualIO:
    """Blocking calls wait in a queue until the test runs them (in this thread)."""

    flush_at = FLUSH_AT

    def __init__(self) -> None:
        self.jobs: Deque[Tuple[Callable[..., Any], Tuple[Any, ...], Deferred[Any]]] = deque()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def step(self) -> str:
        """Run the oldest queued call; returns its function's name."""
        f, args, d = self.jobs.popleft()
        try:
            result = f(*args)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)
        return getattr(f, "__name__", repr(f))

    def drain(self, limit: int = 1000) -> None:
        for _ in range(limit):
            if not self.jobs:
                return
            self.step()
        raise AssertionError("jobs keep coming")


def session(n: int = 0) -> Session:
    s = Session(f"s{n}", "127.0.0.1", 25, "192.0.2.1", 40000 + n)
    s.host_name_appears_as = "client.example"
    s.opening_command = "EHLO"
    s.envelope.mail_from = Address("bob@example.com")
    s.envelope.rcpt_to = [Address("alice@example.org")]
    return s


class Stream(MessageStream):
    """A message stream that counts how often it paused its client."""

    def __init__(self) -> None:
        self.pauses = 0
        super().__init__(self._pause, lambda: None, 0)

    def _pause(self) -> None:
        self.pauses += 1


def body(n: int, size: int = 200) -> bytes:
    marker = f"Message-Id: <m{n}@test>\r\n\r\n".encode()
    return marker + b"x" * size + b"\r\nend\r\n"


class Oracle:
    """Records fsync/rename calls (any thread) and acknowledgements, then judges them."""

    def __init__(self, monkeypatch: Any) -> None:
        self.events: List[Tuple[str, str]] = []
        self.lock = threading.Lock()
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            self._log("fsync-start", path)
            real_fsync(fd)
            self._log("fsync-end", path)

        def rename(src: str, dst: str) -> None:
            real_rename(src, dst)
            self._log("rename", os.path.realpath(dst))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def _log(self, what: str, path: str) -> None:
        with self.lock:
            self.events.append((what, path))

    def acked(self, d: Deferred[None], n: int) -> Deferred[None]:
        def ack(result: Any) -> Any:
            if not isinstance(result, Failure):
                self._log("ack", str(n))
            return result

        return d.addBoth(ack)

    def check(self, maildir: Path) -> int:
        """Every acknowledged message obeys the durability rule; returns how many were acked."""
        files = {}
        for p in (maildir / "new").iterdir():
            n = int(p.read_bytes().split(b"Message-Id: <m", 1)[1].split(b"@", 1)[0])
            files[n] = str(p.resolve())
        new_dir = str((maildir / "new").resolve())
        acks = 0
        for i, (what, n) in enumerate(self.events):
            if what != "ack":
                continue
            acks += 1
            path = files[int(n)]
            tmp = os.path.join(str((maildir / "tmp").resolve()), os.path.basename(path))
            before = self.events[:i]
            renamed = before.index(("rename", path))
            assert ("fsync-end", tmp) in before[:renamed], f"message {n} acked before its file was synced"
            later = before[renamed:]
            starts = [k for k, e in enumerate(later) if e == ("fsync-start", new_dir)]
            assert any(("fsync-end", new_dir) in later[k:] for k in starts), \
                f"message {n} acked before a directory fsync begun after its rename ended"
        return acks


def start(delivery: Any, n: int, data: bytes, oracle: Oracle | None = None) -> Tuple[Deferred[None], Stream]:
    stream = Stream()
    d = delivery.on_data(session(n), stream)
    if oracle is not None:
        d = oracle.acked(d, n)
    stream.write(data)
    stream.finish()
    return d, stream


def fired(d: Deferred[Any]) -> Any:
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


@pytest.fixture
def manual(monkeypatch: Any) -> ManualIO:
    io = ManualIO()
    monkeypatch.setattr(_maildir, "make_io", lambda threads: io)
    monkeypatch.setattr(_mbox, "make_io", lambda threads: io)
    return io


def test_group_commit_one_directory_fsync_for_renames_made_meanwhile(tmp_path, manual, monkeypatch):
    """Three messages, two directory fsyncs: the second covers the two renamed while the first was pending."""
    oracle = Oracle(monkeypatch)
    delivery = MaildirDelivery(str(tmp_path), "mx.test")
    ds = [start(delivery, n, body(n), oracle)[0] for n in range(3)]
    # With threads the file is created in the same call that writes, syncs and renames it.
    assert [f.__name__ for f, _, _ in manual.jobs] == ["_last"] * 3
    for _ in range(3):
        manual.step()
    assert not any(d.called for d in ds)  # renamed, but no directory fsync has run yet
    assert manual.step() == "fsync_directory"  # asked for by the first message, after its rename
    assert fired(ds[0]) is None
    assert not ds[1].called and not ds[2].called
    manual.drain()
    assert [fired(d) for d in ds] == [None, None, None]
    assert delivery._commit.fsyncs == 2 and delivery._commit.commits == 3
    assert oracle.check(tmp_path) == 3
    assert os.listdir(tmp_path / "tmp") == []


def test_group_commit_failure_answers_451_to_the_whole_group_and_removes_their_files(tmp_path, manual, monkeypatch):
    """If the shared directory fsync fails, every message it covered gets 451 and is removed from new/."""
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    monkeypatch.setattr(_diskio, "fsync_directory", lambda path: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    delivery = MaildirDelivery(str(tmp_path), "mx.test")
    ds = [start(delivery, n, body(n))[0] for n in range(3)]
    manual.drain()
    for d in ds:
        failure = fired(d)
        assert isinstance(failure, Failure) and failure.check(SMTPError)
        assert failure.value.code == 451
    assert os.listdir(tmp_path / "new") == [] and os.listdir(tmp_path / "tmp") == []


def test_large_message_pauses_the_client_and_holds_little(tmp_path, manual):
    """While the disk is behind, at most about two batches are held and the client is paused."""
    delivery = MaildirDelivery(str(tmp_path), "mx.test", linesep=b"\r\n")
    stream = Stream()
    d = delivery.on_data(session(), stream)
    chunk = b"y" * 16382 + b"\r\n"
    for _ in range(64):  # 1 MiB, no write allowed to finish
        stream.write(chunk)
    assert stream.pauses >= 1
    held_by_stream = sum(len(c) for c in stream._buffer)
    # what the delivery took: the batch being written plus at most one more batch gathering
    assert 1024 * 1024 - held_by_stream <= 2 * FLUSH_AT + 2 * len(chunk)
    stream.finish()
    manual.drain()
    assert fired(d) is None
    [name] = os.listdir(tmp_path / "new")
    assert (tmp_path / "new" / name).read_bytes().endswith(chunk * 64)


def test_cancel_waits_for_the_write_in_flight_then_removes_the_file(tmp_path, manual):
    """A cancelled delivery never closes a file under a running write; the clean-up follows it."""
    delivery = MaildirDelivery(str(tmp_path), "mx.test")
    stream = Stream()
    d = delivery.on_data(session(), stream)
    stream.write(b"z" * (FLUSH_AT + 10))
    assert [f.__name__ for f, _, _ in manual.jobs] == ["_write"]
    d.cancel()
    assert fired(d).check(CancelledError)
    assert [f.__name__ for f, _, _ in manual.jobs] == ["_write"]  # the clean-up queues behind it
    assert manual.step() == "_write"  # creates and writes the file after the caller gave up
    assert len(os.listdir(tmp_path / "tmp")) == 1
    assert [f.__name__ for f, _, _ in manual.jobs] == ["_discard"]
    manual.drain()
    assert os.listdir(tmp_path / "tmp") == [] and os.listdir(tmp_path / "new") == []


def test_write_failure_seen_only_after_the_body_ended_still_answers_451(tmp_path, manual, monkeypatch):
    """A batch write that fails after the whole body arrived: 451, no file, never renamed."""
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, fd: int) -> None:
            self.f = real_fdopen(fd, "wb")

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Failing(fd))
    delivery = MaildirDelivery(str(tmp_path), "mx.test")
    stream = Stream()
    d = delivery.on_data(session(), stream)
    stream.write(b"w" * (FLUSH_AT + 10))
    stream.finish()
    assert [f.__name__ for f, _, _ in manual.jobs] == ["_write"]
    assert manual.step() == "_write"  # fails, after the whole body was taken
    assert [f.__name__ for f, _, _ in manual.jobs] == ["_last"]
    manual.drain()
    failure = fired(d)
    assert failure.check(SMTPError) and failure.value.code == 451
    assert os.listdir(tmp_path / "tmp") == [] and os.listdir(tmp_path / "new") == []


def test_mbox_appends_finished_meanwhile_share_one_fsync(tmp_path, manual, monkeypatch):
    """Messages that finished while one append ran are appended together, with one fsync, in order."""
    path = tmp_path / "inbox"
    synced: List[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    delivery = MboxDelivery(str(path), "mx.test")
    ds = [start(delivery, n, body(n))[0] for n in range(4)]
    while not any(f is _mbox._append_batch for f, _, _ in manual.jobs):
        manual.step()
    manual.drain()
    assert [fired(d) for d in ds] == [None] * 4
    appender_fsyncs = [p for p in synced if p == str(path)]
    assert len(appender_fsyncs) == 2  # the first message alone, then the three that queued behind it
    data = path.read_bytes()
    assert [data.index(f"<m{n}@test>".encode()) for n in range(4)] == sorted(
        data.index(f"<m{n}@test>".encode()) for n in range(4))
    assert data.count(b"\nFrom bob@example.com ") + data.startswith(b"From bob@example.com ") == 4
    assert _mbox._appenders == {}


def test_mbox_failed_batch_truncates_and_answers_every_message_451(tmp_path, manual, monkeypatch):
    """If a batched append fails, the mailbox is cut back and each message in the batch gets 451."""
    path = tmp_path / "inbox"
    delivery = MboxDelivery(str(path), "mx.test")
    first = start(delivery, 0, body(0))[0]
    while not any(f is _mbox._append_batch for f, _, _ in manual.jobs):
        manual.step()
    rest = [start(delivery, n, body(n))[0] for n in (1, 2)]
    manual.step()  # the first append, alone
    assert fired(first) is None
    before = path.read_bytes()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO"))
                        if os.readlink(f"/proc/self/fd/{fd}") == str(path) else real_fsync(fd))
    manual.drain()
    for d in rest:
        assert fired(d).value.code == 451
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------
# The real thread pool, on the reactor


class ThreadedDelivery(unittest.TestCase):
    """With the thread pool: the reactor keeps running while a delivery waits for the disk."""

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest that lands in the working directory.
        self.dir = Path(tempfile.mkdtemp(prefix="txsmtpsrv-delivery-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    @defer.inlineCallbacks
    def test_reactor_serves_while_fsync_blocks(self) -> Any:
        """A file fsync that hangs in a delivery thread does not stop the reactor's timers."""
        release = threading.Event()
        entered = threading.Event()
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            if not os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
                entered.set()
                release.wait(10)
            real_fsync(fd)

        self.patch(os, "fsync", slow_fsync)
        delivery = MaildirDelivery(str(self.dir), "mx.test", threads=2)
        self.addCleanup(release.set)
        self.addCleanup(delivery._io.stop)
        d, _ = start(delivery, 1, body(1))
        ticks = 0
        while not entered.is_set() and ticks < 500:  # bounded: 5 s
            yield _sleep(0.01)
            ticks += 1
        self.assertTrue(entered.is_set())
        yield _sleep(0.05)  # the reactor runs timers while the fsync is blocked
        self.assertFalse(d.called)
        release.set()
        yield d
        self.assertEqual(len(os.listdir(self.dir / "new")), 1)

    @defer.inlineCallbacks
    def test_many_concurrent_deliveries_are_durable_before_answered(self) -> Any:
        """40 messages at once through 8 threads: all stored, each acked only after its durable commit."""
        mp = pytest.MonkeyPatch()
        self.addCleanup(mp.undo)
        oracle = Oracle(mp)
        delivery = MaildirDelivery(str(self.dir), "mx.test", threads=8)
        self.addCleanup(delivery._io.stop)
        ds = [start(delivery, n, body(n, size=n * 100), oracle)[0] for n in range(40)]
        yield defer.gatherResults(ds, consumeErrors=True)
        self.assertEqual(oracle.check(self.dir), 40)
        self.assertLessEqual(delivery._commit.fsyncs, 40)
        self.assertEqual(os.listdir(self.dir / "tmp"), [])
        mbox = MboxDelivery(str(self.dir / "inbox"), "mx.test", threads=4)
        self.addCleanup(mbox._io.stop)
        yield defer.gatherResults([start(mbox, n, body(n))[0] for n in range(20)], consumeErrors=True)
        self.assertEqual((self.dir / "inbox").read_bytes().count(b"Message-Id: <m"), 20)


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def test_thread_io_stops_with_the_reactor_trigger():
    """The pool starts lazily and stop() is idempotent (twistd calls it at shutdown)."""
    io = ThreadIO(2)
    assert io._pool is None
    io.stop()
    assert _diskio.make_io(0).flush_at == 0
    with pytest.raises(ValueError):
        _diskio.make_io(-1)


# ---------------------------------------------------------------------------
# Crash: SIGKILL under load loses nothing that was acknowledged

CLIENTS = 8


def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path):
    """twistd smtpsrv killed mid-load: every message a client got 250 for is in new/, whole."""
    from tests.test_twistd import Twistd

    maildir = tmp_path / "Maildir"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--maildir", str(maildir)])
    acked: List[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        n = k
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
                while not stop.is_set() and n < 100_000:
                    smtp.sendmail("bob@example.com", ["alice@example.org"], body(n, size=2000 + n % 5000))
                    with lock:
                        acked.append(n)
                    n += CLIENTS
        except (OSError, smtplib.SMTPException):
            pass

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert len(acked) >= 150, server.log()
    stored = {}
    for p in (maildir / "new").iterdir():
        data = p.read_bytes()
        n = int(data.split(b"Message-Id: <m", 1)[1].split(b"@", 1)[0])
        stored[n] = data
    for n in acked:
        assert n in stored, f"message {n} was acknowledged but is not in new/"
        expected = body(n, size=2000 + n % 5000).replace(b"\r\n", b"\n")
        assert stored[n].endswith(expected), f"message {n} is damaged"
    # Unacknowledged messages may be there too (renamed before the kill), but never partial ones.
    for n, data in stored.items():
        assert data.endswith(body(n, size=2000 + n % 5000).replace(b"\r\n", b"\n"))
