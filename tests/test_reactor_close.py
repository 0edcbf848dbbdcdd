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

Aborts, half-closes, producers, failures and nested passes are in
C{tests.test_reactor_close_edges}; the harness is C{tests._close_harness}.

To see these tests fail, make C{SMTPEPollReactor.addWriter} always call
C{EPollReactor.addWriter}: every test that expects the close in its pass
without a write registration on ours fails (and nothing else).
"""

from __future__ import annotations

import select
import smtplib
import socket
import threading
from pathlib import Path
from typing import Any, List

import pytest

if not hasattr(select, "epoll"):  # pragma: no cover - the reactor is Linux's
    pytest.skip("no epoll here", allow_module_level=True)

from twisted.internet import error, tcp  # noqa: E402
from twisted.internet.abstract import FileDescriptor  # noqa: E402
from twisted.internet.epollreactor import EPollReactor  # noqa: E402
from twisted.protocols import tls as tls_protocols  # noqa: E402

from tests._close_harness import BIG, KINDS, Client, Probe, direct, loops, run  # noqa: E402,F401  (loops: a fixture)
from tests._tls import client_context, mx_config  # noqa: E402
from txsmtpsrv import SMTPServer, _reactor, _tlslayer  # noqa: E402
from txsmtpsrv._proxy import ProxyWrappingFactory  # noqa: E402
from txsmtpsrv._reactor import SMTPEPollReactor  # noqa: E402
from txsmtpsrv._sendnow import HeldReplyWriter, reply_writer  # noqa: E402


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
    assert before in _reactor.CHECKED_TWISTED
    monkeypatch.setattr(where, name, _changed)
    assert _reactor._twisted_digest() not in (before, None)
