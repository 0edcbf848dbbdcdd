# -*- test-case-name: tests.test_maildir_tmp -*-
"""
Issue 10 item 7: files that crashed deliveries leave in a Maildir's C{tmp/}
are removed once older than 36 hours, at start-up and then periodically, on
an injectable clock, and each removal is logged.
"""

from __future__ import annotations

import os
import time

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from txsmtpsrv import MaildirDelivery
from txsmtpsrv._maildir_tmp import TMP_MAX_AGE, TmpCleaner, remove_stale

HOUR = 3600.0


def make(path, name: str, age: float, now: float) -> str:
    """A file in C{path} last modified and accessed C{age} seconds before C{now}."""
    os.makedirs(path, exist_ok=True)
    full = os.path.join(path, name)
    with open(full, "wb") as f:
        f.write(b"partial message")
    os.utime(full, (now - age, now - age))
    return full


def real_clock() -> Clock:
    clock = Clock()
    clock.advance(time.time())
    return clock


def test_remove_stale_only_old_regular_files(tmp_path):
    """Files older than 36 h go; younger files, directories and symlinks stay."""
    now = time.time()
    tmp = str(tmp_path / "tmp")
    old = [make(tmp, f"old{i}", 37 * HOUR, now) for i in range(3)]
    young = make(tmp, "young", 35 * HOUR, now)
    os.mkdir(os.path.join(tmp, "subdir"))
    os.utime(os.path.join(tmp, "subdir"), (now - 40 * HOUR, now - 40 * HOUR))
    os.symlink(young, os.path.join(tmp, "link"))
    assert remove_stale(tmp, now) == (3, 0)
    assert not any(os.path.exists(p) for p in old)
    assert sorted(os.listdir(tmp)) == ["link", "subdir", "young"]


def test_remove_stale_recently_read_file_stays(tmp_path):
    """A file accessed recently is in use (maildir(5) speaks of access): it stays."""
    now = time.time()
    path = make(str(tmp_path), "reading", 40 * HOUR, now)
    os.utime(path, (now - HOUR, now - 40 * HOUR))
    assert remove_stale(str(tmp_path), now) == (0, 0)


def test_remove_stale_missing_directory(tmp_path):
    assert remove_stale(str(tmp_path / "nope"), time.time()) == (0, 0)


def test_cleaner_at_start_and_periodically_with_logs(tmp_path):
    """start() cleans at once; later passes run every interval on the clock; each removal is logged
    with the count and the directory."""
    clock = real_clock()
    now = clock.seconds()
    tmp = str(tmp_path / "tmp")
    make(tmp, "crashed-long-ago", 37 * HOUR, now)
    make(tmp, "crashed-yesterday", 35.5 * HOUR, now)
    cleaner = TmpCleaner(tmp, clock, interval=HOUR)
    with capturedLogs() as events:
        cleaner.start()
        assert os.listdir(tmp) == ["crashed-yesterday"]
        clock.advance(HOUR)  # now 36.5 h old
        assert os.listdir(tmp) == []
        clock.advance(HOUR)  # nothing to do: nothing logged
    removals = [e for e in events if e.get("count") is not None]
    assert [(e["count"], e["directory"]) for e in removals] == [(1, tmp), (1, tmp)]
    cleaner.stop()
    assert not clock.getDelayedCalls()


def test_maildir_delivery_start_and_stop_cleaning(tmp_path):
    """MaildirDelivery.start_cleaning() removes stale tmp/ files (36 h by default) now and later."""
    clock = real_clock()
    delivery = MaildirDelivery(str(tmp_path / "md"), "mx.test", clock=clock)
    tmp = os.path.join(delivery.path, "tmp")
    make(tmp, "stale", TMP_MAX_AGE + 60, clock.seconds())
    make(tmp, "fresh", 60, clock.seconds())
    delivery.start_cleaning()
    assert os.listdir(tmp) == ["fresh"]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(delivery.tmp_clean_interval * 40)  # past 36 h: removed by a periodic pass
    assert os.listdir(tmp) == []
    delivery.stop_cleaning()
    assert not clock.getDelayedCalls()


def test_cleaning_can_be_turned_off(tmp_path):
    clock = real_clock()
    delivery = MaildirDelivery(str(tmp_path), "mx.test", clock=clock, tmp_clean_interval=0)
    make(os.path.join(str(tmp_path), "tmp"), "stale", 40 * HOUR, clock.seconds())
    delivery.start_cleaning()
    assert os.listdir(os.path.join(str(tmp_path), "tmp")) == ["stale"]
    assert not clock.getDelayedCalls()


def test_twistd_cleans_at_start_up(tmp_path):
    """twistd smtpsrv with a Maildir removes stale tmp/ files when the service starts."""
    from txsmtpsrv._tap import Options, makeService
    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    maildir = tmp_path / "md"
    make(str(maildir / "tmp"), "stale", 40 * HOUR, reactor.seconds())
    options = Options()
    options.parseOptions(["--maildir", str(maildir), "--no-reverse-lookup", "-l", "tcp:0:interface=127.0.0.1"])
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    assert os.listdir(maildir / "tmp") == []
    service.stopService()
