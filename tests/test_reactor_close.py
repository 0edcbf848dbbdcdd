# -*- test-case-name: tests.test_reactor_close -*-
"""
The close at the end of a pass on the C{smtpsrv-epoll} reactor
(L{txsmtpsrv._reactor.SMTPEPollReactor.addWriter}): a TCP or UNIX
connection whose C{loseConnection} finds nothing left to send is closed in
the pass it was asked in, not after a write event one pass later.

Each scenario runs on a reactor of each kind made for the test (never
installed, never run: the test polls it by hand, a bounded number of
passes) with real sockets on 127.0.0.1 or a UNIX socket, and what the
client receives (the bytes, then EOF or a reset) and what the protocol is
told (C{connectionLost}: how often, why) must be what Twisted's own
C{EPollReactor} gives. On ours the close also has to be the cheap one where
it applies: in the same pass, with no write registration in epoll (a spy
on the reactor's epoll object sees every C{register}/C{modify}).
Then the real server: C{smtplib}'s QUIT gets 221 and then EOF, in plain
text and after STARTTLS (our TLS layer, and Twisted's), and behind our
PROXY wrapper.

To see these tests fail, make C{SMTPEPollReactor.addWriter} always call
C{EPollReactor.addWriter}: every test that expects the close in its pass
without a write registration on ours fails (and nothing else).
"""

from __future__ import annotations

import os
import select
import smtplib
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, Type

import pytest

if not hasattr(select, "epoll"):  # pragma: no cover - the reactor is Linux's
    pytest.skip("no epoll here", allow_module_level=True)

from twisted.internet import error, tcp  # noqa: E402
from twisted.internet.abstract import FileDescriptor  # noqa: E402
from twisted.internet.epollreactor import EPollReactor  # noqa: E402
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer, IPushProducer  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402
from twisted.protocols import tls as tls_protocols  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from zope.interface import implementer  # noqa: E402

from tests._tls import client_context, mx_config  # noqa: E402  (imports the global reactor: before any fd count)
from txsmtpsrv import SMTPServer, _reactor, _tlslayer  # noqa: E402
from txsmtpsrv._proxy import ProxyWrappingFactory  # noqa: E402
from txsmtpsrv._reactor import SMTPEPollReactor  # noqa: E402
from txsmtpsrv._sendnow import HeldReplyWriter, ReplyWriter, eligible, reply_writer  # noqa: E402

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


# -- the close itself -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_then_the_close(loops: Any, kind: type) -> None:
    """The reply sent directly, then loseConnection: the client gets it, then EOF; ConnectionDone once."""
    def script(p: Probe, data: bytes) -> None:
        direct(p, b"221 bye\r\n")
        p.lose()

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert bytes(c.data) == b"221 bye\r\n" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    # Ours: in the same pass, epoll never asked to watch for writing; Twisted's: a pass later, after it.
    assert p.closed_in_its_pass is loop.ours
    assert p.asked_to_write is not loop.ours


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_to_say_then_the_close(loops: Any, kind: type) -> None:
    loop = run(loops, kind, lambda p, data: p.lose())
    (p,), (c,) = loop.conns, loop.clients
    assert bytes(c.data) == b"" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    assert p.closed_in_its_pass is loop.ours
    assert p.asked_to_write is not loop.ours


@pytest.mark.parametrize("kind", KINDS)
def test_what_the_transport_holds_goes_first(loops: Any, kind: type) -> None:
    """transport.write, then loseConnection: Twisted's way on both (a write event sends it, then closes)."""
    def script(p: Probe, data: bytes) -> None:
        p.transport.write(b"221 bye\r\n")  # type: ignore[union-attr]
        p.lose()

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert bytes(c.data) == b"221 bye\r\n" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    assert not p.closed_in_its_pass and p.asked_to_write


@pytest.mark.parametrize("kind", KINDS)
def test_writes_after_loseConnection_in_its_pass_go_before_the_close(loops: Any, kind: type) -> None:
    def script(p: Probe, data: bytes) -> None:
        direct(p, b"221 one\r\n")
        p.lose()
        p.transport.write(b"two\r\n")  # type: ignore[union-attr]
        p.transport.writeSequence([b"thr", b"ee\r\n"])  # type: ignore[union-attr]

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert bytes(c.data) == b"221 one\r\ntwo\r\nthree\r\n" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    assert not p.closed_in_its_pass


@pytest.mark.parametrize("kind", KINDS)
def test_more_than_the_socket_buffer_arrives_whole(loops: Any, kind: type) -> None:
    """A direct send the kernel takes only part of hands the rest to the transport, which sends it all, then closes."""
    payload = bytes(range(256)) * (BIG // 256)

    def script(p: Probe, data: bytes) -> None:
        direct(p, payload)
        p.lose()

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert len(c.data) == len(payload) and bytes(c.data) == payload and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    assert not p.closed_in_its_pass and p.asked_to_write


@pytest.mark.parametrize("kind", KINDS)
def test_several_connections_closing_in_one_pass(loops: Any, kind: type) -> None:
    """
    Three clients' lines read in one pass (the pass that holds replies on
    ours): each gets its reply (held, on ours: L{HeldReplyWriter}) and then EOF.
    """
    def script(p: Probe, data: bytes) -> None:
        w = reply_writer(p.transport)
        assert isinstance(w, HeldReplyWriter) is (kind is SMTPEPollReactor)
        w.write(b"221 bye %d\r\n" % p.fd)
        w.stop()
        p.lose()

    loop = run(loops, kind, script, clients=3)
    assert len({p.lose_pass for p in loop.conns}) == 1  # one pass read them all
    for p in loop.conns:
        assert p.reasons == [error.ConnectionDone]
        assert p.closed_in_its_pass is loop.ours and p.asked_to_write is not loop.ours
    assert sorted(bytes(c.data) for c in loop.clients) == sorted(b"221 bye %d\r\n" % p.fd for p in loop.conns)
    assert all(c.eof and not c.reset for c in loop.clients)


@pytest.mark.parametrize("kind", KINDS)
def test_a_held_reply_goes_before_the_close_even_unstopped(loops: Any, kind: type) -> None:
    """
    A held reply whose writer was not stopped before loseConnection (the
    rule in L{txsmtpsrv._sendnow}, which other code may not keep): the
    pass's replies are sent before its closes, so it still arrives, then EOF.
    """
    def script(p: Probe, data: bytes) -> None:
        reply_writer(p.transport).write(b"221 bye\r\n")
        p.lose()

    loop = run(loops, kind, script, clients=2)
    assert len({p.lose_pass for p in loop.conns}) == 1
    assert [bytes(c.data) for c in loop.clients] == [b"221 bye\r\n"] * 2
    assert all(c.eof and not c.reset for c in loop.clients)
    assert [p.reasons for p in loop.conns] == [[error.ConnectionDone]] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_unix_socket(loops: Any, kind: type, tmp_path: Path) -> None:
    def script(p: Probe, data: bytes) -> None:
        direct(p, b"221 bye\r\n")
        p.lose()

    loop = run(loops, kind, script, unix=str(tmp_path / "s"))
    (p,), (c,) = loop.conns, loop.clients
    assert type(p.transport).__module__ == "twisted.internet.unix"
    assert bytes(c.data) == b"221 bye\r\n" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    assert p.closed_in_its_pass is loop.ours and p.asked_to_write is not loop.ours


@pytest.mark.parametrize("kind", KINDS)
def test_a_descriptor_queued_with_no_byte_to_carry_it(loops: Any, kind: type, tmp_path: Path) -> None:
    """
    A UNIX connection's C{sendFileDescriptor} with nothing written, then
    loseConnection: Twisted's write event reports the overrun; the close
    must not drop the descriptor silently as a clean ConnectionDone.
    """
    def script(p: Probe, data: bytes) -> None:
        p.transport.sendFileDescriptor(p.fd)  # type: ignore[union-attr]
        p.lose()

    loop = run(loops, kind, script, unix=str(tmp_path / "s"))
    (p,), (c,) = loop.conns, loop.clients
    assert p.reasons == [error.FileDescriptorOverrun] and c.eof


# -- aborts, half-closes, producers -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_abortConnection_after_loseConnection(loops: Any, kind: type) -> None:
    """The abort wins: ConnectionAborted once, the client is reset (nothing closes it cleanly first)."""
    def script(p: Probe, data: bytes) -> None:
        p.lose()
        p.transport.abortConnection()  # type: ignore[union-attr]

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert p.reasons == [error.ConnectionAborted]
    assert c.reset and bytes(c.data) == b""


@pytest.mark.parametrize("kind", KINDS)
def test_loseConnection_after_abortConnection(loops: Any, kind: type) -> None:
    """
    An abort, then loseConnection in the same pass (which Twisted lets
    through: the abort's connectionLost is a call later): still the abort's
    end -- ConnectionAborted once, a reset -- not a clean close in the pass.
    """
    def script(p: Probe, data: bytes) -> None:
        p.transport.abortConnection()  # type: ignore[union-attr]
        p.lose()

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert p.reasons == [error.ConnectionAborted]
    assert c.reset and bytes(c.data) == b""


@pytest.mark.parametrize("kind", KINDS)
def test_half_close_then_close(loops: Any, kind: type) -> None:
    """
    loseWriteConnection with nothing to send: the client sees EOF while the
    connection stays open for what it still sends; loseConnection later
    (in a pass of its own) closes it.
    """
    def script(p: Probe, data: bytes) -> None:
        if data.startswith(b"QUIT"):
            direct(p, b"221 half\r\n")
            p.transport.loseWriteConnection()  # type: ignore[union-attr]
        elif data.startswith(b"MORE"):
            p.lose()

    loop = listening(loops, kind, script, HalfProbe, connect=1)
    (p,), (c,) = loop.conns, loop.clients
    c.send(b"QUIT\r\n")
    loop.pump(lambda: c.eof)
    assert bytes(c.data) == b"221 half\r\n" and not c.reset
    assert isinstance(p, HalfProbe) and p.write_ended and p.lost_pass is None
    assert loop.spy.asked_to_write(p.fd)  # Twisted's way: the half-close waits for a write event on both
    c.send(b"MORE\r\n")
    loop.pump(lambda: p.lost_pass is not None)
    assert p.reasons == [error.ConnectionDone]
    assert p.closed_in_its_pass  # (after the half-close Twisted closes at once)


@pytest.mark.parametrize("kind", KINDS)
def test_half_close_and_close_in_one_pass(loops: Any, kind: type) -> None:
    def script(p: Probe, data: bytes) -> None:
        direct(p, b"221 both\r\n")
        p.transport.loseWriteConnection()  # type: ignore[union-attr]
        p.lose()

    loop = run(loops, kind, script, cls=HalfProbe)
    (p,), (c,) = loop.conns, loop.clients
    assert bytes(c.data) == b"221 both\r\n" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]
    assert p.closed_in_its_pass is loop.ours


@pytest.mark.parametrize("kind", KINDS)
def test_client_half_close_answered_then_closed(loops: Any, kind: type) -> None:
    """The client's FIN (readConnectionLost), answered and closed in the next pass: 221, then EOF."""
    loop = listening(loops, kind, lambda p, data: None, HalfProbe, connect=1)
    (p,), (c,) = loop.conns, loop.clients
    assert isinstance(p, HalfProbe)
    c.sock.shutdown(socket.SHUT_WR)
    loop.pump(lambda: p.read_ended)
    direct(p, b"221 bye\r\n")
    loop.passes += 1  # (a timer's pass, say)
    p.lose()
    loop.pump(loop.finished)
    assert bytes(c.data) == b"221 bye\r\n" and c.eof and not c.reset
    assert p.reasons == [error.ConnectionDone]


@implementer(IPushProducer)
class PushProducer:
    def __init__(self) -> None:
        self.calls: List[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


@implementer(IPullProducer)
class PullProducer(PushProducer):
    pass


@pytest.mark.parametrize("kind", KINDS)
def test_a_streaming_producer_left_registered(loops: Any, kind: type) -> None:
    """Twisted closes at the next write event anyway, stopping the producer; so does ours (its way)."""
    producer = PushProducer()

    def script(p: Probe, data: bytes) -> None:
        p.transport.registerProducer(producer, True)  # type: ignore[union-attr]
        p.lose()

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert c.eof and not c.reset and p.reasons == [error.ConnectionDone]
    assert producer.calls == ["stop"]
    assert not p.closed_in_its_pass and p.asked_to_write


@pytest.mark.parametrize("kind", KINDS)
def test_a_producer_unregistered_after_loseConnection(loops: Any, kind: type) -> None:
    """What the SMTP protocol does (unregister, lose): nothing holds the close back then."""
    producer = PushProducer()

    def script(p: Probe, data: bytes) -> None:
        t: Any = p.transport
        t.registerProducer(producer, True)
        direct(p, b"221 bye\r\n")
        p.lose()
        t.unregisterProducer()

    loop = run(loops, kind, script)
    (p,), (c,) = loop.conns, loop.clients
    assert bytes(c.data) == b"221 bye\r\n" and c.eof and p.reasons == [error.ConnectionDone]
    assert producer.calls == []
    assert p.closed_in_its_pass is loop.ours and p.asked_to_write is not loop.ours


@pytest.mark.parametrize("kind", KINDS)
def test_a_pull_producer_holds_the_close_until_unregistered(loops: Any, kind: type) -> None:
    producer = PullProducer()

    def script(p: Probe, data: bytes) -> None:
        p.transport.registerProducer(producer, False)  # type: ignore[union-attr]
        p.lose()

    loop = listening(loops, kind, script, connect=1)
    (p,), (c,) = loop.conns, loop.clients
    c.send(b"QUIT\r\n")
    assert not loop.pump(lambda: p.lost_pass is not None, passes=20, must=False)
    assert not c.eof and producer.calls[:2] == ["resume", "resume"]  # (asked for more by the write event)
    p.transport.unregisterProducer()  # type: ignore[union-attr]
    loop.pump(loop.finished)
    assert p.reasons == [error.ConnectionDone] and c.eof and not c.reset


# -- failures, nesting -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_connectionLost_is_logged_and_the_others_still_close(loops: Any, kind: type) -> None:
    def script(p: Probe, data: bytes) -> None:
        if p is loop.conns[0]:
            p.raise_on_lost = RuntimeError("connectionLost failed")
        p.lose()

    loop = listening(loops, kind, script)
    for c in loop.connect(2):
        c.send(b"QUIT\r\n")
    failures: List[Any] = []

    def observer(event: Any) -> None:
        fault = event.get("log_failure") or event.get("failure")
        if fault is not None:
            failures.append((fault.type, event.get("log_system")))

    globalLogPublisher.addObserver(observer)
    try:
        loop.pump(loop.finished)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len({p.lose_pass for p in loop.conns}) == 1
    assert [p.reasons for p in loop.conns] == [[error.ConnectionDone]] * 2
    assert all(c.eof and not c.reset for c in loop.clients)
    assert failures == [(RuntimeError, loop.conns[0].transport.logstr)]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupt_in_connectionLost_leaves_no_connection_behind(loops: Any, kind: type) -> None:
    """
    KeyboardInterrupt escapes the pass (as from Twisted's), and whatever
    else was closing in it still closes: in the passes that follow, with
    nothing else happening.
    """
    def script(p: Probe, data: bytes) -> None:
        if not any(q.raise_on_lost for q in loop.conns):
            p.raise_on_lost = KeyboardInterrupt()
        p.lose()

    loop = listening(loops, kind, script)
    for c in loop.connect(2):
        c.send(b"QUIT\r\n")
    with pytest.raises(KeyboardInterrupt):
        for _ in range(PASSES):
            loop.step()
    assert len({p.lose_pass for p in loop.conns}) == 1  # (both closing in the pass the interrupt left)
    loop.pump(loop.finished)
    assert [p.reasons for p in loop.conns] == [[error.ConnectionDone]] * 2
    assert all(c.eof and not c.reset for c in loop.clients)


@pytest.mark.parametrize("kind", KINDS)
def test_a_nested_pass_closes_what_was_closing(loops: Any, kind: type) -> None:
    """
    A handler that closes a connection and then runs passes itself
    (C{reactor.iterate()}) until it is gone: those passes close it, as on
    Twisted's reactor, rather than the outer pass after they gave up.
    """
    nested: List[bool] = []

    def script(p: Probe, data: bytes) -> None:
        p.lose()
        for _ in range(20):
            if p.lost_pass is not None:
                break
            loop.r.doPoll(0.01)
        nested.append(p.lost_pass is not None)

    loop = listening(loops, kind, script)
    (c,) = loop.connect()
    c.send(b"QUIT\r\n")
    loop.pump(loop.finished)
    assert nested == [True]
    assert loop.conns[0].reasons == [error.ConnectionDone] and c.eof and not c.reset


# -- the real server ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["plain", "our-layer", "twisted-layer"])
def test_smtplib_quit_gets_221_then_eof(loops: Any, monkeypatch: pytest.MonkeyPatch, tls: str) -> None:
    """
    C{SMTPServer} on an C{SMTPEPollReactor}: smtplib's EHLO, QUIT (after
    STARTTLS on either TLS layer) gets 221, then EOF; the server's
    connection is gone. In plain text nothing ever asked epoll for writability.
    """
    monkeypatch.setattr(_tlslayer, "ENABLED", tls != "twisted-layer")
    loop = loops(SMTPEPollReactor)
    monkeypatch.setattr(tls_protocols, "_get_default_clock", lambda: loop.r)  # (not the global reactor)
    options: Any = {"tls": mx_config()} if tls != "plain" else {"hide_starttls": True}
    server = SMTPServer(reactor=loop.r, name="mx.test", disable_reverse_lookup=True, **options)
    ports: List[Any] = []
    server.listen("tcp:0:interface=127.0.0.1").addCallback(ports.append)
    (port,) = ports
    loop.ports.append(port)
    seen: List[Any] = []

    def client() -> None:
        try:
            s = smtplib.SMTP("127.0.0.1", port.getHost().port, timeout=5)
            try:
                s.ehlo("client.test")
                if tls != "plain":
                    ctx = client_context()
                    assert s.starttls(context=ctx)[0] == 220
                    s.ehlo("client.test")
                seen.append(s.docmd("QUIT"))
                assert s.sock is not None
                seen.append(s.sock.recv(100))
            finally:
                s.close()
        except BaseException as e:  # (reported by the main thread)
            seen.append(e)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        loop.pump(lambda: not thread.is_alive() and not server._connections, passes=2000)
    finally:
        thread.join(5)
    assert len(seen) == 2 and seen[0][0] == 221 and seen[1] == b"", seen
    if tls != "twisted-layer":  # (Twisted's TLS layer queues every record in the transport)
        assert not any(events & select.EPOLLOUT for _, _, events in loop.spy.changes)


def test_behind_the_proxy_wrapper(loops: Any) -> None:
    """Through our PROXY wrapper (C{ProxyProtocolWrapper} on a C{tcp.Server}): QUIT, 221, EOF, no write event."""
    loop = loops(SMTPEPollReactor)
    server = SMTPServer(reactor=loop.r, name="mx.test", disable_reverse_lookup=True, hide_starttls=True)
    factory = ProxyWrappingFactory(server, trusted="127.0.0.0/8", reactor=loop.r)
    loop.ports.append(loop.r.listenTCP(0, factory, interface="127.0.0.1"))
    loop.address = ("127.0.0.1", loop.ports[0].getHost().port)
    sock = socket.create_connection(loop.address, timeout=5)
    c = Client(sock)
    loop.clients.append(c)
    c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
    loop.pump(lambda: c.data.endswith(b"\r\n"))
    assert c.data.startswith(b"220 ")
    c.send(b"QUIT\r\n")
    loop.pump(lambda: c.eof and not server._connections)
    assert c.data.split(b"\r\n")[-2].startswith(b"221 ") and not c.reset
    assert not any(events & select.EPOLLOUT for _, _, events in loop.spy.changes)


# -- what the close relies on --------------------------------------------------------------


def _changed(*args: Any, **kw: Any) -> Any:  # what a changed Twisted might have instead
    return None


@pytest.mark.parametrize("where, name", [(EPollReactor, "addWriter"), (EPollReactor, "removeWriter"),
                                         (FileDescriptor, "loseConnection"), (FileDescriptor, "doWrite"),
                                         (FileDescriptor, "_postLoseConnection"),
                                         (tcp._AbortingMixin, "abortConnection")])
def test_the_digest_follows_what_the_close_relies_on(monkeypatch: pytest.MonkeyPatch, where: Any, name: str) -> None:
    """A Twisted that changed any of it is another digest: the daemon then falls back to Twisted's reactor."""
    before = _reactor._twisted_digest()
    assert before == _reactor.CHECKED_TWISTED
    monkeypatch.setattr(where, name, _changed)
    assert _reactor._twisted_digest() not in (before, None)

