# -*- test-case-name: tests.test_reactor_close_edges -*-
"""
The close at the end of a pass on the C{smtpsrv-epoll} reactor, at its
edges: aborts before and after C{loseConnection}, half-closes, producers
(push and pull), a failing or interrupted C{connectionLost}, nested passes.
Each runs on both reactors, as in C{tests.test_reactor_close}, and must end
as it ends on Twisted's own C{EPollReactor}.
"""

from __future__ import annotations

import select
import socket
from typing import Any, List

import pytest

if not hasattr(select, "epoll"):  # pragma: no cover - the reactor is Linux's
    pytest.skip("no epoll here", allow_module_level=True)

from twisted.internet import error  # noqa: E402
from twisted.internet.interfaces import IPullProducer, IPushProducer  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402
from zope.interface import implementer  # noqa: E402

from tests._close_harness import (KINDS, PASSES, HalfProbe, Probe, direct, listening,  # noqa: E402
                                  loops, run)  # noqa: F401  (loops: a fixture)


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


@pytest.mark.parametrize("kind", KINDS)
def test_a_nested_pass_sends_held_replies_before_its_closes(loops: Any, kind: type) -> None:
    """
    As at the end of a pass: a reply held in the outer pass (a writer not
    stopped before loseConnection) goes before the nested pass closes its
    connection, not after, on a closed socket.
    """
    from txsmtpsrv._sendnow import reply_writer

    def script(p: Probe, data: bytes) -> None:
        reply_writer(p.transport).write(b"221 bye\r\n")
        p.lose()
        for _ in range(20):
            if p.lost_pass is not None:
                break
            loop.r.doPoll(0.01)

    loop = listening(loops, kind, script)
    for c in loop.connect(2):
        c.send(b"QUIT\r\n")
    loop.pump(loop.finished)
    assert [bytes(c.data) for c in loop.clients] == [b"221 bye\r\n"] * 2
    assert all(c.eof and not c.reset for c in loop.clients)
    assert [p.reasons for p in loop.conns] == [[error.ConnectionDone]] * 2
