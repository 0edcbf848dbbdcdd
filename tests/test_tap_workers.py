# -*- test-case-name: tests.test_tap_workers -*-
"""
--workers in C{twistd smtpsrv}, on a fake process reactor: one shared port
per process, the worker pool spawning, restarting (with back-off) and
stopping workers, relayed worker logs, and a worker stopping when its
parent's pipe closes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, Dict, List

import pytest
from twisted.internet import error as ierror
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, eventAsJSON, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure

from txsmtpsrv._sharedports import SharedPort as _SharedPort
from txsmtpsrv._tap import Options, makeService
from txsmtpsrv._workers import ParentWatch as _ParentWatch, WorkerPool as _WorkerPool, _WorkerProtocol

from tests._tap import _scratch_directory  # noqa: F401 (the autouse fixture)
from tests._support import result
from tests._tap import parse


# ---------------------------------------------------------------------------
# Workers


def test_shared_port_binds_one_port_per_process():
    """--workers binds N sockets on one port (SO_REUSEPORT), so the kernel spreads connections."""
    port = _SharedPort.bind("tcp:0:interface=127.0.0.1", 3)
    try:
        assert len(port.sockets) == 3
        numbers = {s.getsockname() for s in port.sockets}
        assert len(numbers) == 1 and next(iter(numbers))[1] != 0
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in port.sockets)
        assert port.socket_for(0) is port.sockets[0] and port.socket_for(2) is port.sockets[2]
    finally:
        port.close()
    assert all(s.fileno() == -1 for s in port.sockets)


def test_shared_port_bind_error_is_usage_error():
    """A port already taken by an ordinary listener is reported as a usage error."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(usage.UsageError):
            _SharedPort.bind(f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1", 2)
    finally:
        taken.close()


def test_make_service_with_workers(tmp_path):
    """The parent adopts its own socket and gets a pool that starts N-1 workers with the same options."""
    reactor = MemoryReactorClock()
    users = tmp_path / "users.txt"
    users.write_text("alice:secret\n")
    options = parse("--workers", "3", "-l", "tcp:0:interface=127.0.0.1", "--maildir", str(tmp_path),
                    "--name", "mx.test", "--lmtp", "--auth", f"file:{users}", "--size", "10",
                    "--no-reverse-lookup")
    service = makeService(options, reactor=reactor)
    [pool] = [s for s in service if isinstance(s, _WorkerPool)]
    try:
        assert pool.count == 2
        argv = pool.worker_argv()
        assert argv[:3] == [sys.executable, "-m", "twisted"]
        assert "--log-format=json" in argv
        i = argv.index("smtpsrv")
        assert argv[i + 1 : i + 3] == ["--worker", "--adopt=3:INET"]
        assert f"--maildir={tmp_path}" in argv and "--name=mx.test" in argv and "--size=10" in argv
        assert f"--auth=file:{users}" in argv and "--lmtp" in argv and "--no-reverse-lookup" in argv
        assert not any(a.startswith("--workers") or a.startswith("--listen") for a in argv)
        worker_options = Options()
        worker_options.parseOptions(argv[i + 1 :])  # what the worker will parse is valid
        assert worker_options["adopt"] == [(3, socket.AF_INET)]
        service.privilegedStartService()
        [(fd, family, factory)] = [(p[0], p[1], p[2]) for p in reactor.adoptedPorts]
        assert family == socket.AF_INET and factory is service.server
    finally:
        for port in pool.ports:
            port.close()


class FakeProcessTransport:
    """What spawnProcess returns, recording signals."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: List[str] = []
        self.gone = False

    def signalProcess(self, signal: str) -> None:
        if self.gone:
            raise ierror.ProcessExitedAlready()
        self.signals.append(signal)


class ProcessReactor(Clock):
    """A clock that records spawnProcess calls and runs callWhenRunning at once."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: List[Dict[str, Any]] = []
        self.stopped = False

    def callWhenRunning(self, f, *args):
        f(*args)

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        transport = FakeProcessTransport(1000 + len(self.spawned))
        self.spawned.append(dict(protocol=protocol, executable=executable, args=args, env=env,
                                 childFDs=childFDs, transport=transport))
        protocol.makeConnection(transport)
        return transport


def end(process: Dict[str, Any], code: int = 0) -> None:
    """The fake worker process exits."""
    process["transport"].gone = True
    process["protocol"].processEnded(Failure(ierror.ProcessDone(code) if code == 0 else ierror.ProcessTerminated(code)))


@pytest.fixture
def pool():
    """A worker pool of two on a fake reactor, with one real shared port."""
    reactor = ProcessReactor()
    port = _SharedPort.bind("tcp:0:interface=127.0.0.1", 3)
    pool = _WorkerPool(reactor, [port], 2, [sys.executable, "-m", "twisted", "smtpsrv", "--name=x"],
                       {"X": "1"}, stop_timeout=5)
    yield reactor, pool
    port.close()


def test_pool_spawns_workers_with_their_sockets(pool):
    """Each worker gets fd 3 = its own socket, a pipe on stdin and pipes for its output."""
    reactor, pool = pool
    pool.startService()
    assert len(reactor.spawned) == 2
    for index, process in enumerate(reactor.spawned, 1):
        assert process["childFDs"] == {0: "w", 1: "r", 2: "r", 3: pool.ports[0].sockets[index].fileno()}
        assert process["args"] == [sys.executable, "-m", "twisted", "smtpsrv", "--worker", "--adopt=3:INET",
                                   "--name=x"]
        assert process["env"] == {"X": "1"}


def test_pool_restarts_a_dead_worker(pool):
    """A worker that exits while running is started again after restart_delay, on the same socket."""
    reactor, pool = pool
    pool.startService()
    first = reactor.spawned[0]
    with capturedLogs() as events:
        end(first, 1)
    assert any(e["log_level"] == LogLevel.error for e in events)
    assert len(reactor.spawned) == 2
    reactor.advance(pool.restart_delay)
    assert len(reactor.spawned) == 3
    assert reactor.spawned[2]["childFDs"] == first["childFDs"]


def test_pool_backs_off_and_serves_a_dead_workers_socket(pool):
    """A worker that keeps dying is restarted ever more slowly; meanwhile the parent serves its socket."""
    reactor, pool = pool
    adopted: List[Any] = []

    class Listening:
        def __init__(self, fd):
            self.fd, self.stopped = fd, False

        def stopListening(self):
            self.stopped = True

    def adopt(fd, family, factory):
        adopted.append(Listening(fd))
        return adopted[-1]

    reactor.adoptStreamPort = adopt
    pool._factory = object()
    pool.startService()
    delays = []
    with capturedLogs():
        for _ in range(5):
            worker = reactor.spawned[-2] if len(reactor.spawned) == 2 else reactor.spawned[-1]
            end(worker, 1)
            assert adopted[-1].fd == worker["childFDs"][3] and not adopted[-1].stopped
            [call] = [c for c in reactor.getDelayedCalls() if c.active()]
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(delays[-1])
            assert adopted[-1].stopped  # the worker is back: the parent lets go
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    # A worker that ran a good while before dying starts the back-off again.
    reactor.advance(pool.healthy_after)
    with capturedLogs():
        end(reactor.spawned[-1], 1)
    [call] = [c for c in reactor.getDelayedCalls() if c.active()]
    assert call.getTime() - reactor.seconds() == pool.restart_delay


def test_pool_retries_a_worker_it_could_not_fork(pool):
    """
    A failed fork (out of memory, process limit) is a worker that died: the parent
    serves its socket and tries again later; stopping does not wait for it. The log
    says it could not be started, and why, not that a process with no pid exited.
    """
    reactor, pool = pool
    adopted: List[Any] = []

    class Listening:
        def stopListening(self):
            pass

    reactor.adoptStreamPort = lambda fd, family, factory: adopted.append(fd) or Listening()
    pool._factory = object()
    spawn = reactor.spawnProcess

    def fork_fails(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    reactor.spawnProcess = fork_fails
    with capturedLogs() as events:
        pool.startService()
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert [e["index"] for e in errors] == [1, 2]
    # It never ran: the log says so (and why), not that a process without a pid exited.
    assert formatEvent(errors[0]) == (
        "worker 1 could not be started ([Errno 11] Resource temporarily unavailable); trying again in 1.0 s")
    assert adopted == [s.fileno() for s in pool.ports[0].sockets[1:]] and pool.workers == {}
    reactor.spawnProcess = spawn
    reactor.advance(pool.restart_delay)
    assert len(reactor.spawned) == 2
    reactor.spawnProcess = fork_fails
    with capturedLogs() as events:
        end(reactor.spawned[0], 1)
        reactor.advance(pool.restart_delay * 2)  # the second failure in a row: the back-off doubled
    died, unforked = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
    assert died.startswith(f"worker 1 (pid {reactor.spawned[0]['transport'].pid}) exited unexpectedly (")
    assert died.endswith("; restarting in 2.0 s")
    assert unforked == "worker 1 could not be started ([Errno 11] Resource temporarily unavailable); trying again in 4.0 s"
    d = pool.stopService()
    end(reactor.spawned[1])
    assert result(d) is None


def test_pool_stop_terminates_and_waits(pool):
    """Stopping sends SIGTERM, closes the parent's sockets and fires once every worker ended."""
    reactor, pool = pool
    pool.startService()
    a, b = reactor.spawned
    end(a, 1)  # one died just before: its restart must not happen
    d = pool.stopService()
    assert all(s.fileno() == -1 for s in pool.ports[0].sockets)
    assert b["transport"].signals == ["TERM"]
    assert not d.called
    end(b)
    assert result(d) is None
    reactor.advance(60)
    assert len(reactor.spawned) == 2 and reactor.getDelayedCalls() == []


def test_pool_kills_workers_that_do_not_stop(pool):
    """A worker still running stop_timeout seconds after SIGTERM gets SIGKILL."""
    reactor, pool = pool
    pool.startService()
    d = pool.stopService()
    reactor.advance(pool.stop_timeout)
    assert [p["transport"].signals for p in reactor.spawned] == [["TERM", "KILL"], ["TERM", "KILL"]]
    for process in reactor.spawned:
        end(process, 9)
    result(d)


def test_worker_logs_are_relayed():
    """JSON events from a worker are re-emitted with its pid; other output becomes warnings."""
    protocol = _WorkerProtocol(None, 1)  # type: ignore[arg-type]
    protocol.makeConnection(FakeProcessTransport(4242))
    event = {"log_format": "stored {n}", "n": 3, "log_level": LogLevel.info, "log_namespace": "x.y",
             "log_time": 1.0}
    line = ("\x1e" + eventAsJSON(event) + "\n").encode()
    with capturedLogs() as events:
        protocol.childDataReceived(1, line[:10])
        assert events == []
        protocol.childDataReceived(1, line[10:] + b"not json\n")
        protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
    relayed, plain, err = events
    assert relayed["worker_pid"] == 4242 and formatEvent(relayed) == "stored 3"
    assert relayed["log_system"] == "x.y#info worker 4242"
    assert formatEvent(plain) == "worker 4242: not json"
    assert formatEvent(err) == "worker 4242: Traceback (most recent call last):"
    assert json.loads(eventAsJSON(relayed))["worker_pid"] == 4242


def test_relayed_worker_lines_keep_their_format_specs():
    """A worker's summary line reads as the parent's: duration=0.013s, not the float's every digit."""
    protocol = _WorkerProtocol(None, 1)  # type: ignore[arg-type]
    protocol.makeConnection(FakeProcessTransport(4242))
    event = {"log_format": "accepted={accepted} duration={duration:.3f}s", "accepted": 1,
             "duration": 0.01322174072265625, "log_level": LogLevel.info, "log_namespace": "x.y", "log_time": 1.0}
    with capturedLogs() as events:
        protocol.childDataReceived(1, ("\x1e" + eventAsJSON(event) + "\n").encode())
    [relayed] = events
    assert formatEvent(relayed) == "accepted=1 duration=0.013s"


class StoppableReactor:
    """Records addReader/removeReader and stop()."""

    def __init__(self) -> None:
        self.readers: List[Any] = []
        self.stops = 0

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        if reader in self.readers:
            self.readers.remove(reader)

    def stop(self):
        self.stops += 1


def test_parent_watch_stops_worker_when_pipe_closes():
    """A worker stops its reactor when its parent's pipe reaches end of file, not before."""
    r, w = os.pipe()
    reactor = StoppableReactor()
    watch = _ParentWatch(reactor, r)
    try:
        watch.startService()
        assert reactor.readers == [watch] and watch.fileno() == r
        assert watch.doRead() is None  # nothing to read yet
        os.write(w, b"x")
        assert watch.doRead() is None
        os.close(w)
        assert watch.doRead() is CONNECTION_DONE
        reactor.removeReader(watch)
        watch.connectionLost(Failure(CONNECTION_DONE))
        assert reactor.stops == 1
        watch.stopService()
    finally:
        os.close(r)
