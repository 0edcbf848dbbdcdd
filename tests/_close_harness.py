# -*- test-case-name: tests.test_reactor_close -*-
"""
The harness of C{tests.test_reactor_close} and C{tests.test_reactor_close_edges}:
reactors of each kind made for a test (never installed, never run: polled by
hand, a bounded number of passes) with a spy on their epoll object, real
client sockets on 127.0.0.1 or a UNIX socket, and a probe protocol that
notes what it is told and does what the scenario says.
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple, Type

import pytest
from twisted.internet import error, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

import tests._tls  # noqa: F401  (imports the global reactor: before any fd count)
from txsmtpsrv._reactor import SMTPEPollReactor
from txsmtpsrv._sendnow import ReplyWriter, eligible

KINDS = [EPollReactor, SMTPEPollReactor]
PASSES = 400  # at most, per wait
SECONDS = 10.0  # at most, per wait
BIG = 8 << 20  # more than loopback's socket buffers hold


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the harness ------------------------------------------------------------------------


class SpyPoller:
    """The reactor's epoll object, every registration change recorded (fd, events)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.changes: List[Tuple[str, int, int]] = []

    def register(self, fd: int, events: int) -> None:
        self.changes.append(("register", fd, events))
        self.real.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self.changes.append(("modify", fd, events))
        self.real.modify(fd, events)

    def unregister(self, fd: int) -> None:
        self.changes.append(("unregister", fd, 0))
        self.real.unregister(fd)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> Any:
        return self.real.poll(timeout, maxevents)

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()

    def asked_to_write(self, fd: int, since: int = 0, until: Optional[int] = None) -> bool:
        """Whether C{fd} was registered for writability in C{changes[since:until]}."""
        return any(f == fd and events & select.EPOLLOUT for _, f, events in self.changes[since:until])


class Client:
    """The test's end of a connection: non-blocking, read as the reactor is polled."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.data = bytearray()
        self.eof = False  # EOF or a reset
        self.reset = False

    def drain(self) -> None:
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = self.reset = True
                return
            if not chunk:
                self.eof = True
                return
            self.data += chunk

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)  # (small: a non-blocking socket takes it whole)


class Probe(Protocol):
    """A server protocol that runs the test's script on data and notes when and why it was closed."""

    def __init__(self, loop: "Loop", script: Callable[["Probe", bytes], None]) -> None:
        self.loop = loop
        self.script = script
        self.fd = -1
        self.reasons: List[type] = []
        self.lose_pass: Optional[int] = None
        self.lost_pass: Optional[int] = None
        self.lose_mark = 0
        self.lost_mark: Optional[int] = None
        self.raise_on_lost: Optional[BaseException] = None
        self.on_lost: Optional[Callable[[], None]] = None

    def connectionMade(self) -> None:
        self.fd = self.transport.fileno()  # type: ignore[union-attr]
        self.loop.conns.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.script(self, data)

    def lose(self) -> None:
        """C{transport.loseConnection()}, noting the pass and the epoll changes so far."""
        self.lose_pass = self.loop.passes
        self.lose_mark = len(self.loop.spy.changes)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.reasons.append(reason.type)  # type: ignore[arg-type]
        self.lost_pass = self.loop.passes
        self.lost_mark = len(self.loop.spy.changes)
        if self.on_lost is not None:
            self.on_lost()
        if self.raise_on_lost is not None:
            exc, self.raise_on_lost = self.raise_on_lost, None
            raise exc

    @property
    def closed_in_its_pass(self) -> bool:
        return self.lose_pass is not None and self.lose_pass == self.lost_pass

    @property
    def asked_to_write(self) -> bool:
        """Whether epoll was asked to watch this connection for writing between loseConnection and the close."""
        return self.loop.spy.asked_to_write(self.fd, self.lose_mark, self.lost_mark)


@implementer(IHalfCloseableProtocol)
class HalfProbe(Probe):
    """A L{Probe} that takes half-closes."""

    read_ended = False
    write_ended = False

    def readConnectionLost(self) -> None:
        self.read_ended = True

    def writeConnectionLost(self) -> None:
        self.write_ended = True


class ProbeFactory(Factory):
    def __init__(self, loop: "Loop", script: Callable[[Probe, bytes], None], cls: Type[Probe]) -> None:
        self.loop, self.script, self.cls = loop, script, cls

    def buildProtocol(self, addr: Any) -> Probe:
        p = self.cls(self.loop, self.script)
        p.factory = self
        return p


class Loop:
    """One reactor made for a test, its listening ports, server protocols and clients."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.r: Any = kind()
        self.spy = SpyPoller(self.r._poller)
        self.r._poller = self.spy
        self.passes = 0
        self.conns: List[Probe] = []
        self.clients: List[Client] = []
        self.ports: List[Any] = []
        self.address: Any = None

    @property
    def ours(self) -> bool:
        return self.kind is SMTPEPollReactor

    def listen(self, script: Callable[[Probe, bytes], None], cls: Type[Probe] = Probe,
               unix: Optional[str] = None) -> None:
        factory = ProbeFactory(self, script, cls)
        if unix is None:
            port = self.r.listenTCP(0, factory, interface="127.0.0.1")
            self.address = ("127.0.0.1", port.getHost().port)
        else:
            port = self.r.listenUNIX(unix, factory)
            self.address = unix
        self.ports.append(port)

    def connect(self, n: int = 1) -> List[Client]:
        new = []
        for _ in range(n):
            family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(self.address)
            new.append(Client(sock))
        self.clients.extend(new)
        total = len(self.clients)
        self.pump(lambda: len(self.conns) == total)
        return new

    def step(self, timeout: float = 0.01) -> None:
        """One pass, as the reactor's main loop makes it: due calls, then a poll."""
        self.r.runUntilCurrent()
        self.passes += 1
        try:
            self.r.doPoll(timeout)
        finally:
            for c in self.clients:
                c.drain()

    def pump(self, done: Callable[[], bool], passes: int = PASSES, must: bool = True) -> bool:
        """Pass until C{done()} (at most C{passes} passes and L{SECONDS}); whether it came."""
        deadline = time.monotonic() + SECONDS
        for _ in range(passes):
            if done() or time.monotonic() > deadline:
                break
            self.step()
        if must:
            assert done(), f"not done after {self.passes} passes on {self.kind.__name__}"
        return done()

    def finished(self) -> bool:
        """Every server connection told of its end, every client at EOF."""
        return all(p.lost_pass is not None for p in self.conns) and all(c.eof for c in self.clients)

    def close(self) -> None:
        for c in self.clients:
            c.sock.close()
        for p in self.conns:
            p.raise_on_lost = None
            p.on_lost = None
        self.r.runUntilCurrent()  # (abortConnection's connectionLost, if the test left it due)
        for p in self.conns:
            t: Any = p.transport
            if not t.disconnected:
                t.connectionLost(Failure(error.ConnectionDone()))
        for port in self.ports:
            if port.connected:
                port.connectionLost(Failure(error.ConnectionDone()))
        for sel in self.r.removeAll():
            sel.connectionLost(Failure(error.ConnectionDone()))
        self.spy.close()
        self.r.waker.connectionLost(None)


@pytest.fixture
def loops() -> Iterator[Callable[[type], Loop]]:
    """Makes L{Loop}s; closes them after the test, and checks no file descriptor outlives them."""
    made: List[Loop] = []
    tcp._reservedFD.reserve()  # (Twisted's spare descriptor for EMFILE: opened at the first accept, kept for good)
    before = _open_fds()

    def make(kind: type) -> Loop:
        loop = Loop(kind)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.close()
    assert _open_fds() == before


def run(make: Callable[[type], Loop], kind: type, script: Callable[[Probe, bytes], None], clients: int = 1,
        cls: Type[Probe] = Probe, unix: Optional[str] = None) -> Loop:
    """Listen, connect C{clients}, send each one line (in one pass), pass until everything is closed."""
    loop = make(kind)
    loop.listen(script, cls, unix)
    for c in loop.connect(clients):
        c.send(b"QUIT\r\n")
    loop.pump(loop.finished)
    return loop


def listening(make: Callable[[type], Loop], kind: type, script: Callable[[Probe, bytes], None],
              cls: Type[Probe] = Probe, connect: int = 0) -> Loop:
    """A L{Loop} listening on 127.0.0.1, with C{connect} clients connected."""
    loop = make(kind)
    loop.listen(script, cls)
    if connect:
        loop.connect(connect)
    return loop


def direct(p: Probe, data: bytes) -> None:
    """Write as the SMTP protocol does: on the socket while nothing is queued (L{ReplyWriter}), then stop."""
    w = ReplyWriter(p.transport, eligible(p.transport))
    w.write(data)
    w.stop()
