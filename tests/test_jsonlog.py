# -*- test-case-name: tests.test_jsonlog -*-
"""
L{txsmtpsrv._jsonlog.JSONLog} in memory: a reopen after the file was renamed
sends new events to a new file at the path, none lost or written twice; a
reopen that fails keeps the old file; standard output is never reopened.
Format specs (C{{duration:.3f}}) hold in the JSON log and in twistd's text
log beside it, whichever observer runs first.
And L{SMTPService}'s signals: C{SIGUSR1} (chained to the handler before it)
and C{SIGHUP} reopen C{--log-json}. The real daemon is in C{test_signals.py}.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, cast

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (ILogObserver, Logger, LogLevel, capturedLogs, eventAsJSON, eventsFromJSONLogFile,
                            formatEvent, globalLogPublisher, textFileLogObserver)

from txsmtpsrv._jsonlog import JSONLog
from txsmtpsrv._tap import SMTPService, makeService
from txsmtpsrv._workers import _WorkerProtocol

from tests._support import result
from tests._tap import _scratch_directory  # noqa: F401 (the autouse fixture)
from tests._tap import parse
from tests.test_tap_workers import FakeProcessTransport

NAMESPACE = "tests.test_jsonlog"
emit = Logger(namespace=NAMESPACE)


def written(path: Path) -> List[str]:
    """The messages of this module's events in a JSON log file (each line must be JSON)."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["message"] for e in events if e.get("log_namespace") == NAMESPACE]


def reopen_lines(path: Path) -> List[dict]:
    return [e for e in map(json.loads, path.read_text().splitlines())
            if e.get("log_format", "").startswith("JSON log reopened")]


@pytest.fixture
def jsonlog(tmp_path: Path) -> Iterator[JSONLog]:
    log = JSONLog(str(tmp_path / "events.json"))
    log.started()
    yield log
    log.close()


def test_reopen_after_rename(jsonlog: JSONLog, tmp_path: Path) -> None:
    """Renamed, then reopened: old events stay in the renamed file, new ones go to a new file, each once."""
    path = tmp_path / "events.json"
    emit.info("{message}", message="one")
    emit.info("{message}", message="two")
    path.rename(tmp_path / "events.json.1")
    emit.info("{message}", message="three")  # logrotate renamed it; the signal has not come yet
    jsonlog.reopen()
    emit.info("{message}", message="four")
    assert written(tmp_path / "events.json.1") == ["one", "two", "three"]
    assert written(path) == ["four"]
    [line] = reopen_lines(path)  # the first line of the new file says why it starts there
    assert line["path"] == str(path)
    assert reopen_lines(tmp_path / "events.json.1") == []


def test_reopen_without_rename_appends(jsonlog: JSONLog, tmp_path: Path) -> None:
    """A reopen with nothing rotated (a SIGHUP for certificates): the same file goes on, nothing repeated."""
    emit.info("{message}", message="one")
    jsonlog.reopen()
    emit.info("{message}", message="two")
    assert written(tmp_path / "events.json") == ["one", "two"]
    assert sorted(os.listdir(tmp_path)) == ["events.json"]


def test_relative_path_is_reopened_where_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path is resolved once: after twistd's --rundir chdir the reopen finds the same file."""
    log = JSONLog("events.json")
    try:
        log.started()
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        (tmp_path / "events.json").rename(tmp_path / "events.json.1")
        log.reopen()
        emit.info("{message}", message="after")
    finally:
        log.close()
    assert written(tmp_path / "events.json") == ["after"]
    assert not (tmp_path / "elsewhere" / "events.json").exists()


def test_failed_reopen_keeps_old_file(tmp_path: Path) -> None:
    """The directory is gone: one error line (no traceback), events keep going to the old, renamed file."""
    directory = tmp_path / "logs"
    directory.mkdir()
    log = JSONLog(str(directory / "events.json"))
    try:
        log.started()
        emit.info("{message}", message="before")
        (directory / "events.json").rename(tmp_path / "kept.json")
        directory.rmdir()
        with capturedLogs() as events:
            log.reopen()
        emit.info("{message}", message="after")
    finally:
        log.close()
    [error] = events
    assert error["log_level"].name == "error" and "log_failure" not in error
    text = formatEvent(error)
    assert text.startswith(f"cannot reopen the JSON log {directory / 'events.json'}, still writing to the old file: ")
    assert "No such file or directory" in text
    assert written(tmp_path / "kept.json") == ["before", "after"]
    assert json.loads((tmp_path / "kept.json").read_text().splitlines()[1])["log_level"]["name"] == "error"
    assert not directory.exists()


def test_stdout_is_not_reopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'-': a reopen does nothing, says nothing, and opens no file named '-' (nor closes stdout)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    log = JSONLog("-")
    try:
        log.started()
        monkeypatch.setattr(sys, "stdout", io.StringIO())  # twistd redirects sys.stdout once logging begins
        with capturedLogs() as events:
            log.reopen()
        emit.info("{message}", message="still here")
    finally:
        log.close()
    assert not events
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["still here"]
    assert os.listdir(tmp_path) == [] and not out.closed


# ---------------------------------------------------------------------------
# Format specs: the JSON log beside twistd's text log

SUMMARY = "closed duration={duration:.3f}s bytes={size:>6} {size}"
DURATION = 0.0012459754943847656
ROUNDED = "closed duration=0.001s bytes=   512 512"


@pytest.fixture
def both(tmp_path: Path) -> Iterator[Callable[[bool], io.StringIO]]:
    """
    Attach a JSON log and twistd's text observer (C{textFileLogObserver}),
    the JSON one first (as twistd does: C{--log-json} is attached when the
    service is made, before logging begins) or last; give the text output.
    """
    attached: List[Any] = []

    def attach(json_first: bool) -> io.StringIO:
        text = io.StringIO()
        observer = textFileLogObserver(text)
        if not json_first:
            globalLogPublisher.addObserver(observer)
        attached.append(JSONLog(str(tmp_path / "events.json")))
        attached[-1].started()
        if json_first:
            globalLogPublisher.addObserver(observer)
        attached.append(observer)
        return text

    yield attach
    for each in attached:
        each.close() if isinstance(each, JSONLog) else globalLogPublisher.removeObserver(each)


def loaded(path: Path) -> List[str]:
    """The JSON log read back as Twisted reads its own, formatted (this module's events)."""
    with path.open() as f:
        return [formatEvent(e) for e in eventsFromJSONLogFile(f) if e.get("log_namespace") == NAMESPACE]


@pytest.mark.parametrize("json_first", [True, False], ids=["json-first", "text-first"])
def test_format_specs_in_both_logs(both: Callable[[bool], io.StringIO], tmp_path: Path, json_first: bool) -> None:
    """
    The JSON writer flattens the event it is given: the text observer after
    it read C{duration=0.0012459754943847656s}. Both logs keep the spec,
    whichever runs first, and the JSON line reads back formatted the same.
    """
    text = both(json_first)
    emit.info(SUMMARY, duration=DURATION, size=512)
    [line] = text.getvalue().splitlines()
    assert line.endswith(f"[{NAMESPACE}#info] {ROUNDED}")
    assert loaded(tmp_path / "events.json") == [ROUNDED]
    [event] = [json.loads(raw) for raw in (tmp_path / "events.json").read_text().splitlines()]
    assert event["duration"] == DURATION  # the value itself stays whole for whoever reads the JSON


def test_format_specs_of_replayed_start_up_events(tmp_path: Path) -> None:
    """
    Logged before twistd's logging began: the JSON log wrote it then, and
    twistd replays the same event to the text observer (not written twice).
    """
    log = JSONLog(str(tmp_path / "events.json"))
    text = io.StringIO()
    observer = textFileLogObserver(text)
    early: List[Any] = []
    keep = cast(ILogObserver, early.append)
    globalLogPublisher.addObserver(keep)
    try:
        emit.info(SUMMARY, duration=DURATION, size=512)
        globalLogPublisher.removeObserver(keep)
        globalLogPublisher.addObserver(observer)
        for event in early:
            globalLogPublisher(event)  # as LogBeginner.beginLoggingTo replays its buffer
        log.started()
    finally:
        globalLogPublisher.removeObserver(keep)
        globalLogPublisher.removeObserver(observer)
        log.close()
    [line] = text.getvalue().splitlines()
    assert line.endswith(ROUNDED)
    assert loaded(tmp_path / "events.json") == [ROUNDED]


def test_format_specs_of_relayed_worker_events(both: Callable[[bool], io.StringIO], tmp_path: Path) -> None:
    """A worker's line (Twisted's JSON, the specs not applied) reads rounded in the parent's two logs."""
    text = both(True)
    protocol = _WorkerProtocol(None, 1)  # type: ignore[arg-type]
    protocol.makeConnection(FakeProcessTransport(4242))
    event = {"log_format": SUMMARY, "duration": DURATION, "size": 512, "log_level": LogLevel.info,
             "log_namespace": NAMESPACE, "log_time": 1.0}
    protocol.childDataReceived(1, ("\x1e" + eventAsJSON(event) + "\n").encode())
    assert text.getvalue().splitlines()[-1].endswith(f"[{NAMESPACE}#info worker 4242] {ROUNDED}")
    assert loaded(tmp_path / "events.json") == [ROUNDED]


# ---------------------------------------------------------------------------
# SMTPService: the signals


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., SMTPService]]:
    """
    Make a service on a memory reactor and do twistd's privileged start (the
    signal handlers go in); at teardown stop it (the JSON log closes, the
    handlers go back) and restore the handlers the test found.
    """
    made: List[SMTPService] = []
    found = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGUSR1)}

    def make(*extra: str) -> SMTPService:
        reactor = MemoryReactorClock()
        reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)  # type: ignore[method-assign]  # the hop to the reactor
        options = parse("--maildir", str(tmp_path / "md"), "--hide-starttls", *extra)
        service = makeService(options, reactor=reactor)
        assert isinstance(service, SMTPService)
        made.append(service)
        service.privilegedStartService()
        return service

    yield make
    for service in made:
        if service.running:
            assert result(service.stopService()) is None
    for signum, handler in found.items():
        signal.signal(signum, handler)


def test_sigusr1_reopens_and_chains(service: Callable[..., SMTPService], tmp_path: Path) -> None:
    """
    SIGUSR1 (installed before listening) reopens --log-json and runs the
    handler it replaced (twistd's, rotating --logfile); stopping restores it.
    Without --log-json (nothing to reopen) SIGUSR1 is left alone.
    """
    path = tmp_path / "events.json"
    chained: List[Any] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: chained.append(signum))
    previous = signal.getsignal(signal.SIGUSR1)
    plain = service()
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert result(plain.stopService()) is None
    with_log = service("--log-json", str(path))
    assert signal.getsignal(signal.SIGUSR1) == with_log._user1
    with_log.startService()
    path.rename(tmp_path / "events.json.1")
    os.kill(os.getpid(), signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not chained and time.monotonic() < deadline:
        time.sleep(0.01)  # the Python-level handler runs between bytecodes
    assert chained == [signal.SIGUSR1]
    emit.info("{message}", message="after")
    assert written(path) == ["after"] and len(reopen_lines(path)) == 1
    assert "after" not in written(tmp_path / "events.json.1")
    assert result(with_log.stopService()) is None
    assert signal.getsignal(signal.SIGUSR1) == previous


def test_sighup_reopens_too(service: Callable[..., SMTPService], tmp_path: Path) -> None:
    """SIGHUP's reload reopens --log-json first, so its own lines are in the new file."""
    path = tmp_path / "events.json"
    with_log = service("--log-json", str(path))
    with_log.startService()
    path.rename(tmp_path / "events.json.1")
    with_log._hangup(signal.SIGHUP, None)
    emit.info("{message}", message="after")
    assert written(path) == ["after"] and len(reopen_lines(path)) == 1
