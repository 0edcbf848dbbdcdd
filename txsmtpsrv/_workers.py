# -*- test-case-name: tests.test_tap_workers,tests.test_tap_options -*-
"""
C{--workers N}: N processes serving one set of ports.

Twisted runs one reactor per process, so this is how to use several cores.
The twistd process is the parent: while still privileged it creates, for
every C{tcp:}/C{tcp6:} listen address, N sockets bound to the same address
with C{SO_REUSEPORT} (the kernel then spreads new connections across them;
where C{SO_REUSEPORT} does not exist, one socket shared by all), serves the
first itself and spawns N-1 workers (C{python -m twisted smtpsrv --worker
--adopt FD:FAMILY ...} with the same options) that inherit one socket each
through C{spawnProcess(childFDs=...)} and adopt it. The parent keeps its
copies of the workers' sockets, so a worker that dies is restarted on the
same socket without dropping queued connections, and serves that socket
itself meanwhile. Worker log events come back as JSON on the worker's
standard output and are re-emitted by the parent with C{worker_pid} added.

Signals: the parent forwards C{SIGHUP} (certificate reload) to every worker
that is ready (its handler installed); one that is still starting gets it
once it says it is ready, so no worker misses a renewal. Stopping the parent
sends C{SIGTERM} to every worker (each closes gracefully; C{SIGKILL} after
C{close_timeout + 10} seconds) and waits for them; a worker whose parent
vanishes (its standard input pipe closes) stops itself.

C{tcp:}, C{tcp6:} and C{unix:} sockets can be shared, also behind
C{smtps:} and C{smtpproxy:}: the parent binds the socket (a C{unix:} one
once, shared by all), and every process builds the same wrappers around
its copy from the C{adopted:FD:FAMILY} endpoint string
(L{txsmtpsrv._adopted}); other endpoints are refused, saying so.
C{--max-clients} applies per process; with C{SO_REUSEPORT}, connections
still queued on a worker's socket when the whole server stops are reset.
"""

from __future__ import annotations

import os
import site
import socket
import stat
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from ._adopted import FAMILIES  # --adopt FD:FAMILY names, as in adopted: strings
from ._logging import apply_format_specs
from ._tlsimplicit import wrap_server_tls  # smtps: on our TLS layer where it is plain TCP

#: A --listen prefix for implicit TLS (port 465 style) with the server's own certificates.
SMTPS = "smtps:"

__all__ = ["SharedPort", "WorkerPool", "ParentWatch", "shareable_address", "twist_command",
           "worker_environment", "READY"]

log = Logger()

_FAMILY_NAMES: Dict[int, str] = {v: k for k, v in FAMILIES.items()}
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


def _endpoint_arguments(description: str) -> Tuple[List[str], Dict[str, str]]:
    """Split an endpoint string like Twisted does: C{:} separates, C{=} names, C{\\} escapes."""
    args: List[str] = []
    kwargs: Dict[str, str] = {}
    current: List[str] = []
    key: Optional[str] = None
    escaped = False
    for ch in description + ":":
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and key is None:
            key, current = "".join(current), []
        elif ch == ":":
            value = "".join(current)
            if key is None:
                args.append(value)
            else:
                kwargs[key] = value
            current, key = [], None
        else:
            current.append(ch)
    return args, kwargs


def shareable_address(description: str) -> Tuple[int, str, int, int]:
    """
    C{(family, interface, port, backlog)} of a C{tcp:}/C{tcp6:} endpoint
    string; C{usage.UsageError} for anything --workers cannot share.
    """
    args, kwargs = _endpoint_arguments(description)
    kind = args.pop(0).lower() if args else ""
    if kind == "tcp":
        names = ["port", "interface", "backlog"]
        defaults = {"interface": "", "backlog": "50"}
    elif kind == "tcp6":
        names = ["port", "backlog", "interface"]
        defaults = {"interface": "::", "backlog": "50"}
    else:
        raise usage.UsageError(
            f"--workers: cannot share --listen {description}: the parent binds the sockets and hands "
            f"them to the workers, which it can do for tcp:, tcp6: and unix: endpoints (also behind "
            f"smtps: and smtpproxy:), not for {kind or 'this'}: ones")
    if len(args) > len(names) or set(kwargs) - set(names):
        raise usage.UsageError(f"--listen {description}: unexpected arguments for --workers")
    values = dict(defaults)
    values.update(zip(names, args))
    values.update(kwargs)
    try:
        port, backlog = int(values["port"]), int(values["backlog"])
    except (KeyError, ValueError):
        raise usage.UsageError(f"--listen {description}: needs a numeric port (and backlog)") from None
    interface = values["interface"]
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    return family, interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port, backlog


#: The smtpproxy: options (see ProxyEndpointParser); the rest belongs to the inner endpoint.
_PROXY_KEYS = ("trusted", "timeout", "untrusted", "maxHeaderSize")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def split_wrappers(description: str) -> Tuple[str, str]:
    """
    C{(prefix, inner)}: the C{smtps:} and C{smtpproxy:...:} wrappers of a
    --listen description, and the endpoint they wrap, e.g.
    C{("smtpproxy:trusted=10.0.0.0/8:", "tcp:25")}.
    """
    prefix, rest = "", description
    if rest.startswith(SMTPS):
        prefix, rest = SMTPS, rest[len(SMTPS):]
    if rest.split(":", 1)[0].lower() == "smtpproxy":
        args, kwargs = _endpoint_arguments(rest)
        proxy = {key: kwargs.pop(key) for key in _PROXY_KEYS if key in kwargs}
        prefix += "smtpproxy:" + "".join(f"{key}={_escape(value)}:" for key, value in proxy.items())
        rest = ":".join([_escape(a) for a in args[1:]] + [f"{k}={_escape(v)}" for k, v in kwargs.items()])
    return prefix, rest


def _unix_address(description: str) -> Tuple[str, int, int]:
    """C{(path, mode, backlog)} of a C{unix:} endpoint string (positional arguments in Twisted's order)."""
    args, kwargs = _endpoint_arguments(description)
    names = ["address", "mode", "backlog", "lockfile"]
    values = {"backlog": "50", "mode": "666", "lockfile": "0"}
    if len(args) - 1 > len(names) or set(kwargs) - set(names) - {"wantPID"}:
        raise usage.UsageError(f"--listen {description}: unexpected arguments for --workers")
    values.update(zip(names, args[1:]))
    values.update(kwargs)
    path = values.get("address", "")
    if not path:
        raise usage.UsageError(f"--listen {description}: unix: needs a socket path")
    try:
        return path, int(values["mode"], 8), int(values["backlog"])
    except ValueError:
        raise usage.UsageError(f"--listen {description}: mode must be octal, backlog a number") from None


def check_shareable(description: str) -> None:
    """Raise C{usage.UsageError} saying why --workers cannot share C{description}."""
    _, inner = split_wrappers(description)
    if inner.split(":", 1)[0].lower() == "unix":
        _unix_address(inner)
    else:
        shareable_address(inner)


def listen_endpoint(reactor: Any, description: str, tls: Callable[[], Any]) -> Any:
    """
    The endpoint for a --listen description: C{smtps:} wraps the rest in the
    server's own TLS (C{tls()}: its reloadable certificates), anything else
    is an ordinary endpoint string.
    """
    implicit_tls = description.startswith(SMTPS)
    try:
        endpoint = serverFromString(reactor, description[len(SMTPS):] if implicit_tls else description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"--listen {description}: {e}") from None
    return wrap_server_tls(tls(), endpoint) if implicit_tls else endpoint


def _bind_unix(description: str, inner: str) -> socket.socket:
    path, mode, backlog = _unix_address(inner)
    if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a stale socket file
        else:
            raise usage.UsageError(f"--listen {description}: {path} is in use by another server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise usage.UsageError(f"--listen {description}: {e}") from None
    return sock


class SharedPort:
    """
    The listening sockets of one --listen address for all processes: one
    per process with C{SO_REUSEPORT} (TCP), else one shared by all.

    @ivar prefix: the wrappers (C{smtps:}, C{smtpproxy:...:}) every process
        puts around its socket, or C{""}.
    @ivar path: the socket file of a C{unix:} listener (removed at close).
    """

    def __init__(self, description: str, family: int, sockets: List[socket.socket],
                 prefix: str = "", path: Optional[str] = None) -> None:
        self.description = description
        self.family = family
        self.sockets = sockets
        self.prefix = prefix
        self.path = path

    def endpoint_string(self, fd: int) -> str:
        """How a process that holds this port's socket on C{fd} listens on it."""
        return f"{self.prefix}adopted:{fd}:{_FAMILY_NAMES[self.family]}"

    @classmethod
    def bind(cls, description: str, processes: int) -> "SharedPort":
        prefix, inner = split_wrappers(description)
        if inner.split(":", 1)[0].lower() == "unix":
            return cls(description, socket.AF_UNIX, [_bind_unix(description, inner)], prefix,
                       os.path.abspath(_unix_address(inner)[0]))  # removed after --rundir's chdir
        family, interface, port, backlog = shareable_address(inner)
        reuse_port = hasattr(socket, "SO_REUSEPORT")
        sockets: List[socket.socket] = []
        try:
            for _ in range(processes if reuse_port else 1):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((interface, port))
                port = sock.getsockname()[1]  # port 0: the others join the port we got
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError as e:
            for sock in sockets:
                sock.close()
            raise usage.UsageError(f"--listen {description}: {e}") from None
        return cls(description, family, sockets, prefix)

    def socket_for(self, index: int) -> socket.socket:
        """The socket process C{index} (0: the parent) serves."""
        return self.sockets[index % len(self.sockets)]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.path is not None and os.path.exists(self.path):
            try:
                os.unlink(self.path)
            except OSError:
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
                adopt.append(f"--adopt={3 + offset}:{_FAMILY_NAMES[port.family]}")
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
            self._worker_ended(protocol, Failure())

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

    def _worker_ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
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
        log.error(
            "worker {index} (pid {worker_pid}) exited unexpectedly ({reason}); restarting in {delay} s",
            index=index, worker_pid=protocol.pid, reason=reason.getErrorMessage(), delay=delay,
        )
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


