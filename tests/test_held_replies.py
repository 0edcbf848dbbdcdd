# -*- test-case-name: tests.test_held_replies -*-
"""
Replies held to the end of the reactor pass on the daemon's reactor
(L{txsmtpsrv._reactor.SMTPEPollReactor.held_replies}, L{txsmtpsrv._sendnow}).

Why it matters: the bytes on the wire must be exactly what the writes were,
in their order, whatever the writer is asked meanwhile (stop before STARTTLS
or a close, a refused or partial send, a closed socket, a nested pass), and
a held reply must not wait past the end of its pass.

First the writer and the reactor's part with fakes, then a real
C{SMTPEPollReactor} in a process of its own serving C{smtplib} clients.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from txsmtpsrv._sendnow import HeldReplyWriter, ReplyWriter, reply_writer

from tests._memory import FakeSocket
from tests._support import stop_process

select = pytest.importorskip("select")
if not hasattr(select, "epoll"):  # pragma: no cover - the reactor is Linux's
    pytest.skip("no epoll here", allow_module_level=True)

from txsmtpsrv._reactor import SMTPEPollReactor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class Reactor:
    """What the writer looks for on its transport's reactor."""

    def __init__(self) -> None:
        self.held_replies: Dict[Any, bytes] = {}

    def send_held(self) -> None:
        held, self.held_replies = self.held_replies, {}
        for w, data in held.items():
            w.send_held(data if type(data) is bytes else b"".join(data))  # as SMTPEPollReactor._send_held


def held_writer(sock: Any) -> tuple[ReplyWriter, StringTransport, Reactor]:
    """A writer for a client on this host, in a pass of the daemon's reactor (its held_replies a dict)."""
    transport = StringTransport()
    reactor = Reactor()
    transport.reactor = reactor  # type: ignore[attr-defined]  # as tcp.Connection has it
    return HeldReplyWriter(transport, sock), transport, reactor


def test_writes_wait_for_the_reactor_then_leave_in_one_send() -> None:
    sock = FakeSocket()
    w, t, r = held_writer(sock)
    w.write(b"250 a\r\n")
    w.write(b"250 b\r\n")
    assert sock.sent == [] and r.held_replies == {w: [b"250 a\r\n", b"250 b\r\n"]}
    r.send_held()
    assert sock.sent == [b"250 a\r\n250 b\r\n"] and t.value() == b"" and w.direct


def test_outside_a_pass_of_several_events_it_sends_at_once() -> None:
    """held_replies None (a pass of one event, a timer, a thread): at once."""
    sock = FakeSocket()
    w, t, r = held_writer(sock)
    r.held_replies = None  # type: ignore[assignment]
    w.write(b"250 a\r\n")
    assert sock.sent == [b"250 a\r\n"]
    assert w.stop() is True


class FakeTCP(StringTransport):
    """What reply_writer asks of a transport, with the socket eligible() would find."""

    def __init__(self, peer: Any, reactor: Any) -> None:
        super().__init__(peerAddress=peer)
        self.reactor = reactor


@pytest.mark.parametrize("peer, held", [
    (IPv4Address("TCP", "127.0.0.1", 5000), True),
    (IPv4Address("TCP", "127.8.9.10", 5000), True),
    (IPv6Address("TCP", "::1", 5000), True),
    (IPv6Address("TCP", "::ffff:127.0.0.1", 5000), True),
    (UNIXAddress(b"/run/lmtp.sock"), True),
    (IPv4Address("TCP", "192.0.2.7", 5000), False),
    (IPv6Address("TCP", "2001:db8::7", 5000), False),
    (IPv6Address("TCP", "::ffff:192.0.2.7", 5000), False),
])
def test_only_clients_on_this_host_on_the_daemons_reactor_are_held(monkeypatch: Any, peer: Any, held: bool) -> None:
    """A send to a client elsewhere wakes nobody here: its replies leave at once, as before."""
    from txsmtpsrv import _sendnow

    monkeypatch.setattr(_sendnow, "eligible", lambda transport: FakeSocket())
    assert type(reply_writer(FakeTCP(peer, SMTPEPollReactor.__new__(SMTPEPollReactor)))) is (
        HeldReplyWriter if held else ReplyWriter)
    assert type(reply_writer(FakeTCP(peer, object()))) is ReplyWriter  # Twisted's own reactors


@pytest.mark.parametrize("proxy, held", [("127.0.0.1", True), ("192.0.2.9", False)], ids=["local", "elsewhere"])
def test_behind_our_proxy_wrapper_the_proxys_own_address_decides(monkeypatch: Any, proxy: str, held: bool) -> None:
    """The process a send wakes is the proxy (HAProxy on this host), whatever client its header names."""
    from txsmtpsrv import _sendnow
    from txsmtpsrv._proxy import ProxyProtocolWrapper, ProxyWrappingFactory

    monkeypatch.setattr(_sendnow, "eligible", lambda transport: FakeSocket())
    wrapper = ProxyProtocolWrapper(ProxyWrappingFactory(None, trusted="0.0.0.0/0"))  # type: ignore[arg-type]
    wrapper.transport = FakeTCP(IPv4Address("TCP", proxy, 5000), SMTPEPollReactor.__new__(SMTPEPollReactor))
    wrapper._peer = IPv4Address("TCP", "198.51.100.20", 40000)  # what the PROXY header said
    assert wrapper.getPeer().host == "198.51.100.20"
    assert type(reply_writer(wrapper)) is (HeldReplyWriter if held else ReplyWriter)


def test_stop_sends_what_is_held_first() -> None:
    """Before STARTTLS or a close: the held reply leaves, then the transport has the connection."""
    sock = FakeSocket()
    w, t, r = held_writer(sock)
    w.write(b"220 go ahead\r\n")
    w.stop()
    assert sock.sent == [b"220 go ahead\r\n"] and r.held_replies == {} and not w.direct
    w.write(b"after\r\n")
    assert t.value() == b"after\r\n"
    r.send_held()
    assert sock.sent == [b"220 go ahead\r\n"]


@pytest.mark.parametrize("room, direct", [(1 << 20, True), (5, False)], ids=["sent whole", "partly queued"])
def test_stop_says_whether_everything_went_out_directly(room: int, direct: bool) -> None:
    sock = FakeSocket(room=room)
    w, t, r = held_writer(sock)
    w.write(b"220 2.0.0 Ready to start TLS\r\n")
    assert w.stop() is direct
    assert b"".join(sock.sent) + t.value() == b"220 2.0.0 Ready to start TLS\r\n"


@pytest.mark.parametrize("room, raw", [(1 << 20, True), (5, False)], ids=["sent whole", "partly queued"])
def test_starttls_after_a_held_220_sends_ciphertext_directly_only_when_nothing_is_queued(
        monkeypatch: Any, room: int, raw: bool) -> None:
    """
    The 220 held till STARTTLS's upgrade: if sending it then fell back on the
    transport, the TLS layer must not send on the socket directly (its
    ServerHello would overtake the queued end of the 220). Found in review.
    """
    from txsmtpsrv import _tlslayer

    given: List[Any] = []
    monkeypatch.setattr(_tlslayer, "ENABLED", True)
    monkeypatch.setattr(_tlslayer, "eligible", lambda transport, creator: True)
    monkeypatch.setattr(_tlslayer, "direct_socket", lambda transport: "the socket")
    monkeypatch.setattr(_tlslayer, "start_tls", lambda transport, creator, protocol, sock: given.append(sock))
    w, t, r = held_writer(FakeSocket(room=room))
    w.write(b"220 2.0.0 Ready to start TLS\r\n")
    _tlslayer.upgrade(t, None, None, w)
    assert given == ["the socket" if raw else None]


def test_a_partial_send_of_held_bytes_keeps_their_order() -> None:
    sock = FakeSocket(room=5)
    w, t, r = held_writer(sock)
    w.write(b"250 first\r\n")
    w.write(b"250 second\r\n")
    r.send_held()
    w.write(b"250 third\r\n")
    assert b"".join(sock.sent) + t.value() == b"250 first\r\n250 second\r\n250 third\r\n"
    assert not w.direct and r.held_replies == {}


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EPIPE, errno.EBADF])
def test_a_refused_send_of_held_bytes_goes_to_the_transport(code: int) -> None:
    """A full buffer, a reset or an already closed socket: the transport gets the bytes (or drops them, closed)."""
    sock = FakeSocket(error=OSError(code, os.strerror(code)))
    w, t, r = held_writer(sock)
    w.write(b"250 ok\r\n")
    r.send_held()
    assert t.value() == b"250 ok\r\n" and not w.direct


@pytest.fixture
def epoll_reactor() -> Iterator[SMTPEPollReactor]:
    """An unused reactor of its own (not the global one), closed after the test."""
    reactor = SMTPEPollReactor()
    yield reactor
    reactor._poller.close()
    reactor.waker.connectionLost(None)


class Recorder:
    """A writer as the reactor sees one: what it was asked to send (joined, as HeldReplyWriter joins it)."""

    def __init__(self, sent: List[bytes]) -> None:
        self.sent = sent

    def send_held(self, data: Any) -> None:
        self.sent.append(data if type(data) is bytes else b"".join(data))


class Broken:
    def send_held(self, data: bytes) -> None:
        raise RuntimeError("a bug")


class Readable:
    """A selectable with a byte to read; its doRead writes a reply as a connection would (C{write})."""

    def __init__(self, reactor: SMTPEPollReactor, write: Any) -> None:
        self.reactor = reactor
        self.ours, self.theirs = socket.socketpair()
        self.theirs.send(b"x")
        self.write = write
        self.seen: List[Any] = []

    def fileno(self) -> int:
        return self.ours.fileno()

    def logPrefix(self) -> str:
        return "readable"

    def doRead(self) -> None:
        self.ours.recv(1)
        self.seen.append(self.reactor.held_replies)
        self.write(self.reactor.held_replies)

    def connectionLost(self, reason: Any) -> None:
        pass

    def close(self) -> None:
        self.reactor.removeReader(self)
        self.ours.close()
        self.theirs.close()


def hold_or_send(sent: List[bytes], data: bytes, writer: Any = None) -> Any:
    """What ReplyWriter.write does with the reactor's held_replies (None: send at once)."""
    def write(held: Any) -> None:
        if held is None:
            sent.append(b"at once " + data)
        else:
            held[writer or Recorder(sent)] = data
    return write


def test_a_pass_of_several_events_sends_at_its_end(epoll_reactor: SMTPEPollReactor) -> None:
    """Two connections read in one pass: both replies are held during the pass, then sent, nothing left held."""
    sent: List[bytes] = []
    readers = [Readable(epoll_reactor, hold_or_send(sent, b"250 %d" % i)) for i in range(2)]
    try:
        for r in readers:
            epoll_reactor.addReader(r)
        epoll_reactor.doPoll(1)
        assert [r.seen[0] is not None for r in readers] == [True, True]
        assert sorted(sent) == [b"250 0", b"250 1"] and epoll_reactor.held_replies is None
    finally:
        for r in readers:
            r.close()


def test_a_pass_of_one_event_sends_at_once(epoll_reactor: SMTPEPollReactor) -> None:
    """Nothing to send together with: no holding (and nothing held outside a pass: timers, threads)."""
    sent: List[bytes] = []
    assert epoll_reactor.held_replies is None
    reader = Readable(epoll_reactor, hold_or_send(sent, b"250 ok"))
    try:
        epoll_reactor.addReader(reader)
        epoll_reactor.doPoll(1)
        assert reader.seen == [None] and sent == [b"at once 250 ok"]
    finally:
        reader.close()


def test_a_nested_pass_leaves_the_sending_to_the_outer_one(epoll_reactor: SMTPEPollReactor) -> None:
    """
    A pass run from inside a pass (C{reactor.iterate()} in a handler) writes
    into the outer pass's dict and sends nothing: the outer one sends it all,
    in order (a fresh dict would lose what the outer pass held, or reorder it).
    """
    sent: List[bytes] = []
    outer: Dict[Any, Any] = {}
    epoll_reactor.held_replies = outer
    readers = [Readable(epoll_reactor, hold_or_send(sent, b"250 %d" % i)) for i in range(2)]
    try:
        for r in readers:
            epoll_reactor.addReader(r)
        epoll_reactor.doPoll(1)
        assert epoll_reactor.held_replies is outer and len(outer) == 2 and sent == []
    finally:
        epoll_reactor.held_replies = None
        for r in readers:
            r.close()


class Interrupting(Readable):
    """A selectable whose logPrefix raises KeyboardInterrupt (which escapes the pass)."""

    def logPrefix(self) -> str:
        raise KeyboardInterrupt


def test_what_a_pass_held_is_sent_when_an_interrupt_escapes_it(epoll_reactor: SMTPEPollReactor) -> None:
    sent: List[bytes] = []
    first = Readable(epoll_reactor, hold_or_send(sent, b"250 ok"))
    epoll_reactor.addReader(first)
    second = Interrupting(epoll_reactor, hold_or_send(sent, b"never"))  # (ready after the first)
    epoll_reactor.addReader(second)
    try:
        with pytest.raises(KeyboardInterrupt):
            epoll_reactor.doPoll(1)
        assert sent == [b"250 ok"] and epoll_reactor.held_replies is None
    finally:
        first.close()
        second.close()


def test_an_interrupt_while_sending_still_sends_the_others(epoll_reactor: SMTPEPollReactor) -> None:
    sent: List[bytes] = []

    class Interrupted:
        def send_held(self, data: bytes) -> None:
            raise KeyboardInterrupt

    epoll_reactor.held_replies = {Interrupted(): b"lost", Recorder(sent): [b"250 ", b"ok"]}
    with pytest.raises(KeyboardInterrupt):
        epoll_reactor._send_held()
    assert sent == [b"250 ok"] and epoll_reactor.held_replies is None


def test_a_failing_writer_is_logged_and_the_others_still_sent(epoll_reactor: SMTPEPollReactor) -> None:
    sent: List[bytes] = []
    readers = [Readable(epoll_reactor, hold_or_send(sent, b"lost", Broken())),
               Readable(epoll_reactor, hold_or_send(sent, b"250 ok"))]
    try:
        for r in readers:
            epoll_reactor.addReader(r)
        with capturedLogs() as events:
            epoll_reactor.doPoll(1)
        assert sent == [b"250 ok"] and epoll_reactor.held_replies is None
        assert [e["log_failure"].type for e in events if e.get("log_failure")] == [RuntimeError]
    finally:
        for r in readers:
            r.close()


SERVE = """
import os
import sys
from twisted.application.reactors import installReactor
reactor = installReactor("smtpsrv-epoll")
from txsmtpsrv import SMTPServer

held = [0]
send_held = reactor._send_held
def counting():
    held[0] += len(reactor.held_replies or ())
    send_held()
    with open(sys.argv[1] + ".new", "w") as f:
        f.write(str(held[0]))
    os.replace(sys.argv[1] + ".new", sys.argv[1])  # (the test may read it any time)
reactor._send_held = counting

class Hooks:
    def on_rcpt_to(self, session, address):
        # an answer given later, from a timer: it must not wait for another event
        from twisted.internet.task import deferLater
        return deferLater(reactor, 0.05, lambda: None)
    def on_data(self, session, stream):
        return stream.collect(lambda chunk: None)

server = SMTPServer(Hooks(), name="held.test")
def listening(port):
    print(port.getHost().port, type(reactor).__name__, flush=True)
server.listen("tcp:0:interface=127.0.0.1").addCallback(listening)
reactor.run()
"""


def test_real_clients_on_the_daemons_reactor(tmp_path: Path) -> None:
    """
    smtplib clients, one after another and several at once, pipelining
    (MAIL, RCPT, DATA in one write: the replies of one read held together),
    with a RCPT hook answering from a timer: every reply arrives, in order,
    and some were held (the server counts what its passes sent together).
    """
    import smtplib
    import threading

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    counted = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(counted)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 30)[0], "the server did not start in 30 s"
        port, kind = proc.stdout.readline().split()
        assert kind == "SMTPEPollReactor"
        errors: List[BaseException] = []

        def session() -> None:
            try:
                with smtplib.SMTP("127.0.0.1", int(port), timeout=10) as client:
                    for _ in range(5):
                        assert client.sendmail("a@x.test", ["b@y.test", "c@y.test"], b"Subject: s\r\n\r\nbody\r\n") == {}
                    assert client.noop()[0] == 250
            except BaseException as e:  # (re-raised in the test's thread)
                errors.append(e)

        session()
        threads = [threading.Thread(target=session) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [] and not any(t.is_alive() for t in threads)
        assert int(counted.read_text()) > 0  # replies of several connections went out together
    finally:
        stop_process(proc, 10)
