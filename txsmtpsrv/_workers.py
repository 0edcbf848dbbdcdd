# -*- test-case-name: tests.test_tap_workers,tests.test_workers_wrapped -*-
"""
C{--workers N}: N processes serving one set of ports.

Twisted runs one reactor per process, so this is how to use several cores.
The twistd process is the parent: while still privileged it binds the
listening sockets of every C{--listen} address (L{txsmtpsrv._sharedports}:
with C{SO_REUSEPORT}, one per process), serves the first itself and spawns
N-1 workers (C{python -m twisted smtpsrv --worker --adopt FD:FAMILY ...}
with the same options) that inherit one socket each through
C{spawnProcess(childFDs=...)} and adopt it. The parent keeps its copies of
the workers' sockets, so a worker that dies is restarted on the same socket
without dropping queued connections, and serves that socket itself
meanwhile. Worker log events come back as JSON on the worker's standard
output and are re-emitted by the parent with C{worker_pid} added.

Signals: the parent forwards C{SIGHUP} (certificate reload) to every worker
that is ready (its handler installed); one that is still starting gets it
once it says it is ready, so no worker misses a renewal. Stopping the parent
sends C{SIGTERM} to every worker (each closes gracefully; C{SIGKILL} after
C{close_timeout + 10} seconds) and waits for them; a worker whose parent
vanishes (its standard input pipe closes) stops itself.

C{--max-clients} applies per process; with C{SO_REUSEPORT}, connections
still queued on a worker's socket when the whole server stops are reset.
"""

from __future__ import annotations

import os
import site
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from ._logging import apply_format_specs
from ._sharedports import SharedPort, listen_endpoint

__all__ = ["WorkerPool", "ParentWatch", "twist_command", "worker_environment", "READY"]

log = Logger()

#: The log format a process emits once its signal handlers are installed
#: and it listens: the parent forwards reloads to a worker only after it.
READY = "txsmtpsrv ready, pid {pid}"

@implementer(IReadDescriptor)
class ParentWatch(Service):
    """
    In a worker: stop the reactor (gracefully) when the parent's pipe on
    our standard input closes, i.e. when the parent died without telling us.
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self._reactor = reactor
        self._fd = fd
        self._reading = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        os.set_blocking(self._fd, False)
        self._reactor.addReader(self)
        self._reading = True

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "txsmtpsrv-parent-watch"

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError as e:
            return Failure(e)
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False
        if self.running:
            log.warn("parent process went away: worker {pid} stops", pid=os.getpid())
            try:
                self._reactor.stop()
            except ierror.ReactorNotRunning:
                pass


_REACTOR_NAMES = {
    "EPollReactor": "epoll",
    "PollReactor": "poll",
    "SelectReactor": "select",
    "KQueueReactor": "kqueue",
    "AsyncioSelectorReactor": "asyncio",
    "SMTPEPollReactor": "smtpsrv-epoll",  # txsmtpsrv._reactor: workers run what the parent runs
}


def worker_environment(search: Sequence[str] = ()) -> Dict[str, str]:
    """
    Our environment, with the directory we import txsmtpsrv from on PYTHONPATH,
    and after it C{search}: where the parent found modules it imported from its
    working directory (C{--hooks}), since a worker starts after twistd's
    C{--rundir} C{chdir} (relative PYTHONPATH entries are made absolute too).
    """
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    standard = set(site.getsitepackages()) | {site.getusersitepackages()}
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in standard and root not in paths:
        paths.insert(0, root)
    paths += [p for p in search if p not in paths]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)  # systemd's sockets are not the workers' to adopt
    return env


class _WorkerProtocol(ProcessProtocol):
    """One worker: relays its log output and reports its end."""

    max_line = 1 << 20

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: Optional[int] = None
        #: Whether it said L{READY}: its SIGHUP handler is installed.
        self.ready = False
        #: A reload was asked for before it was ready.
        self.reload_pending = False
        self.ended: Deferred[None] = Deferred()
        self._buffers = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        log.info("started worker {index}, pid {worker_pid}", index=self.index, worker_pid=self.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD, b"") + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > self.max_line:
            lines.append(rest)
            rest = b""
        self._buffers[childFD] = rest
        for line in lines:
            self._relay(childFD, line)

    def _relay(self, childFD: int, line: bytes) -> None:
        text = line.lstrip(b"\x1e").decode("utf-8", "replace").rstrip()
        if not text:
            return
        if childFD == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                apply_format_specs(event)
                if event.get("log_format") == READY and not self.ready:
                    self.pool._worker_ready(self)
                event["worker_pid"] = self.pid
                level = getattr(event.get("log_level"), "name", "-")
                system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
                event["log_system"] = f"{system} worker {self.pid}"
                globalLogPublisher(event)
                return
        log.warn("worker {worker_pid}: {line}", worker_pid=self.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self._relay(fd, rest)
        self._buffers = {1: b"", 2: b""}
        self.pool._worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Runs workers 1..N-1 of C{--workers N}, each on its own sockets; restarts
    the ones that die, and stops them all (and waits) when stopped.

    With C{SO_REUSEPORT} the kernel keeps sending connections to a dead
    worker's socket, so while a worker is down the parent serves its sockets
    itself (given a C{factory}); restarts back off exponentially, so a worker
    that cannot start costs a restart a minute, not a restart a second.
    """

    restart_delay = 1.0
    max_restart_delay = 60.0
    #: A worker that ran this long before dying starts the back-off afresh.
    healthy_after = 60.0

    def __init__(self, reactor: Any, ports: Sequence[SharedPort], count: int,
                 argv: Sequence[str], env: Dict[str, str], stop_timeout: float,
                 factory: Any = None, on_exit: Optional[Callable[[int], None]] = None) -> None:
        self._reactor = reactor
        #: Called with a dead worker's pid (metrics forget its live gauges).
        self._on_exit = on_exit
        self.ports = list(ports)
        self.count = count
        self._argv = list(argv)
        self._env = env
        self.stop_timeout = stop_timeout
        self._factory = factory
        self.workers: Dict[int, _WorkerProtocol] = {}
        self._restarts: Dict[int, Any] = {}
        self._failures: Dict[int, int] = {}
        self._started: Dict[int, float] = {}
        self._covering: Dict[int, List[Any]] = {}  # ports the parent serves for a dead worker
        self._stopping = False

    def worker_argv(self) -> List[str]:
        """The worker command line, with fds 3, 4, ... for the ports in order."""
        argv = list(self._argv)
        position = argv.index("smtpsrv") + 1
        adopt = ["--worker"]
        for offset, port in enumerate(self.ports):
            if port.prefix:  # built around the inherited socket as the parent builds its own
                adopt.append(f"--listen={port.endpoint_string(3 + offset)}")
            else:
                adopt.append(f"--adopt={3 + offset}:{port.family_name}")
        return argv[:position] + adopt + argv[position:]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self._stopping = False
        for index in range(1, self.count + 1):
            self._reactor.callWhenRunning(self._spawn, index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        self._uncover(index)
        self._started[index] = self._reactor.seconds()
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for offset, port in enumerate(self.ports):
            child_fds[3 + offset] = port.socket_for(index).fileno()
        protocol = _WorkerProtocol(self, index)
        self.workers[index] = protocol
        argv = self.worker_argv()
        try:
            self._reactor.spawnProcess(protocol, argv[0], argv, env=self._env, childFDs=child_fds)
        except Exception:  # fork failed (EAGAIN, ENOMEM): as a worker that died, or its socket goes unserved
            self._worker_ended(protocol, Failure(), started=False)

    def reload(self) -> None:
        """Forward a certificate reload (SIGHUP) to every worker, now or once it is ready."""
        for worker in list(self.workers.values()):
            if worker.ready:
                self._signal(worker, "HUP")
            else:
                worker.reload_pending = True

    def _worker_ready(self, worker: _WorkerProtocol) -> None:
        worker.ready = True
        if worker.reload_pending:
            worker.reload_pending = False
            self._signal(worker, "HUP")

    def _worker_ended(self, protocol: _WorkerProtocol, reason: Failure, started: bool = True) -> None:
        """
        A worker ended (or, C{started} false, could not be forked): serve its
        sockets from the parent and start it again after the back-off.
        """
        if self.workers.get(protocol.index) is protocol:
            del self.workers[protocol.index]
        if self._on_exit is not None and protocol.pid is not None:
            try:
                self._on_exit(protocol.pid)
            except Exception:
                log.failure("cleaning up after worker {worker_pid} failed", worker_pid=protocol.pid)
        if self._stopping:
            log.info("worker {index} (pid {worker_pid}) stopped", index=protocol.index, worker_pid=protocol.pid)
            return
        index = protocol.index
        ran = self._reactor.seconds() - self._started.get(index, 0.0)
        failures = 1 if ran >= self.healthy_after else self._failures.get(index, 0) + 1
        self._failures[index] = failures
        delay = min(self.restart_delay * 2 ** (failures - 1), self.max_restart_delay)
        if started:
            log.error(
                "worker {index} (pid {worker_pid}) exited unexpectedly ({reason}); restarting in {delay} s",
                index=index, worker_pid=protocol.pid, reason=reason.getErrorMessage(), delay=delay,
            )
        else:  # no process, so no pid: saying it exited would send the operator looking for one
            log.error("worker {index} could not be started ({reason}); trying again in {delay} s",
                      index=index, reason=reason.getErrorMessage(), delay=delay)
        self._cover(index)
        self._restarts[index] = self._reactor.callLater(delay, self._spawn, index)

    def _cover(self, index: int) -> None:
        """Serve a dead worker's sockets from the parent until it is back."""
        if self._factory is None or index in self._covering:
            return
        ports: List[Any] = []
        for port in self.ports:
            sock = port.socket_for(index)
            try:
                if port.prefix:
                    factory = self._factory
                    endpoint = listen_endpoint(self._reactor, port.endpoint_string(os.dup(sock.fileno())),
                                               lambda: factory.tls)
                    endpoint.listen(factory).addCallback(ports.append)
                else:
                    ports.append(self._reactor.adoptStreamPort(sock.fileno(), port.family, self._factory))
            except Exception:
                log.failure("cannot serve worker {index}'s socket from the parent", index=index)
        self._covering[index] = ports

    def _uncover(self, index: int) -> None:
        for listening in self._covering.pop(index, []):
            listening.stopListening()  # closes the parent's duplicate only

    def stopService(self) -> "Deferred[None]":
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        for index in list(self._covering):
            self._uncover(index)
        for port in self.ports:
            port.close()  # the workers keep their own copies
        waiting = [worker.ended for worker in self.workers.values()]
        for worker in list(self.workers.values()):
            self._signal(worker, "TERM")
        if not waiting:
            return succeed(None)
        killer = self._reactor.callLater(self.stop_timeout, self._kill_all)

        def stopped(_: object) -> None:
            if killer.active():
                killer.cancel()

        return DeferredList(waiting).addCallback(stopped)

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            log.warn("worker {worker_pid} did not stop in time: killing it", worker_pid=worker.pid)
            self._signal(worker, "KILL")

    @staticmethod
    def _signal(worker: _WorkerProtocol, signal: str) -> None:
        try:
            if worker.transport is not None:
                worker.transport.signalProcess(signal)
        except (ierror.ProcessExitedAlready, OSError):
            pass


def twist_command(reactor: Any) -> List[str]:
    """How to start a worker: C{python -m twisted} (C{twist}) logging JSON to stdout."""
    argv = [sys.executable, "-m", "twisted", "--log-format=json", "--log-file=-"]
    name = _REACTOR_NAMES.get(type(reactor).__name__)
    if name is not None:
        argv.append(f"--reactor={name}")
    return argv + ["smtpsrv"]
