"""
The connections' shared timer (L{txsmtpsrv._deadlines}) and what an idle
connection holds (issue 13 part 2: idle memory).

Exact instants on a C{Clock}: an entry runs at the instant its own
C{callLater(delay)} would have, with one reactor call for all of them.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any, List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from txsmtpsrv._deadlines import _SLACK, Deadline, Deadlines
from txsmtpsrv.testing import TestClient, make_server


class Owner:
    """Records when it was woken; may do something then (re-arm, cancel another, raise)."""

    def __init__(self, clock: Clock, name: str = "", then: Any = None) -> None:
        self.clock = clock
        self.name = name
        self.woken: List[float] = []
        self.then = then

    def deadline_reached(self) -> None:
        self.woken.append(self.clock.seconds())
        if self.then is not None:
            self.then(self)


def pending_calls(clock: Clock) -> List[float]:
    return [c.getTime() for c in clock.getDelayedCalls() if c.active()]


def rearm(d: Deadlines, delay: float, times: int) -> Any:
    """An L{Owner}'s C{then}: call it again C{delay} later, until it has been woken C{times} times."""
    return lambda owner: d.call_later(delay, owner) if len(owner.woken) < times else None


# -- the timer on its own ----------------------------------------------------------


def test_exact_instant_and_one_reactor_call() -> None:
    clock = Clock()
    d = Deadlines(clock)
    a = Owner(clock)
    entry = d.call_later(5, a)
    assert entry.active() and entry.getTime() == 5 and len(d) == 1
    assert pending_calls(clock) == [5]
    clock.advance(4.999)
    assert a.woken == []
    clock.advance(0.001)
    assert a.woken == [5] and not entry.active() and len(d) == 0
    assert pending_calls(clock) == []  # nothing left: no reactor call


def test_same_instants_as_call_later_for_many_owners() -> None:
    """Owners made at different times with different delays wake when their own callLater would."""
    clock = Clock()
    d = Deadlines(clock)
    owners: List[Tuple[Owner, float]] = []
    for i in range(200):
        clock.advance(0.37)
        delay = 80 + (i * 7919) % 97 / 4  # all due after the last is made (advance jumps)
        owner = Owner(clock)
        d.call_later(delay, owner)
        owners.append((owner, clock.seconds() + delay))
        assert len(pending_calls(clock)) == 1  # one reactor call, whatever the number
    expected = sorted(when for _, when in owners)
    while len(d):
        assert pending_calls(clock) == [min(w for o, w in owners if not o.woken)]
        clock.advance(pending_calls(clock)[0] - clock.seconds())
    for owner, when in owners:
        assert owner.woken == [when]
    assert sorted(w for o, _ in owners for w in o.woken) == expected
    assert pending_calls(clock) == []


def test_cancel_never_runs_and_lets_the_owner_go() -> None:
    clock = Clock()
    d = Deadlines(clock)
    a, b = Owner(clock, "a"), Owner(clock, "b")
    ea, eb = d.call_later(5, a), d.call_later(10, b)
    ref = weakref.ref(b)
    d.cancel(eb)
    d.cancel(eb)  # twice: nothing
    assert not eb.active() and len(d) == 1
    del b
    gc.collect()
    assert ref() is None  # the heap keeps no cancelled owner alive
    d.cancel(ea)
    assert pending_calls(clock) == [] and len(d) == 0
    clock.advance(20)
    assert a.woken == []


def test_cancelling_the_earliest_keeps_the_rest_exact() -> None:
    clock = Clock()
    d = Deadlines(clock)
    a, b = Owner(clock), Owner(clock)
    ea = d.call_later(5, a)
    d.call_later(8, b)
    d.cancel(ea)
    clock.advance(5)  # the shared call may fire for nothing
    assert a.woken == [] and b.woken == []
    assert pending_calls(clock) == [8]
    clock.advance(3)
    assert b.woken == [8]


def test_moving_earlier_moves_the_reactor_call() -> None:
    """What the connection does for a hook's deadline: cancel, then a new, earlier entry."""
    clock = Clock()
    d = Deadlines(clock)
    a = Owner(clock)
    entry = d.call_later(300, a)
    clock.advance(1)
    d.cancel(entry)
    d.call_later(4, a)
    assert pending_calls(clock) == [5]
    clock.advance(4)
    assert a.woken == [5]


def test_rearming_from_the_callback() -> None:
    """The connection re-arms for the client's next deadline from deadline_reached."""
    clock = Clock()
    d = Deadlines(clock)
    a = Owner(clock, then=rearm(d, 3, 3))
    d.call_later(2, a)
    for _ in range(100):
        clock.advance(1)
    assert a.woken == [2, 5, 8]
    assert pending_calls(clock) == [] and len(d) == 0


def test_rearming_later_keeps_an_earlier_entry_exact() -> None:
    """An owner re-arming past another pending entry must not delay that one."""
    clock = Clock()
    d = Deadlines(clock)
    a = Owner(clock, "a", then=rearm(d, 15, 2))
    b = Owner(clock, "b")
    d.call_later(5, a)
    d.call_later(10, b)
    for _ in range(30):
        clock.advance(1)
    assert a.woken == [5, 20] and b.woken == [10]


def test_rearming_earlier_from_the_callback() -> None:
    """An owner re-arming before the next pending entry moves the reactor call earlier."""
    clock = Clock()
    d = Deadlines(clock)
    a = Owner(clock, "a", then=rearm(d, 1, 2))
    b = Owner(clock, "b")
    d.call_later(5, a)
    d.call_later(10, b)
    clock.advance(5)
    assert pending_calls(clock) == [6]
    for _ in range(10):
        clock.advance(1)
    assert a.woken == [5, 6] and b.woken == [10]


def test_due_together_run_together_and_may_cancel_each_other() -> None:
    clock = Clock()
    d = Deadlines(clock)
    entries: List[Deadline] = []
    victims = [Owner(clock, f"v{i}") for i in range(3)]

    def cancel_victims(_: Owner) -> None:
        for entry in entries:
            d.cancel(entry)

    killer = Owner(clock, "k", then=cancel_victims)
    # The killer runs first or later: either way no victim runs after it.
    d.call_later(5, killer)
    entries.extend(d.call_later(5, v) for v in victims)
    clock.advance(5)
    assert killer.woken == [5]
    ran = [v for v in victims if v.woken]
    assert all(v.woken == [5] for v in ran)
    assert len(d) == 0 and pending_calls(clock) == []


def test_a_failing_owner_is_logged_and_the_others_run() -> None:
    clock = Clock()
    d = Deadlines(clock)
    with capturedLogs() as events:
        bad = Owner(clock, then=lambda o: 1 / 0)
        good = Owner(clock)
        d.call_later(1, bad)
        d.call_later(1, good)
        d.call_later(2, good)
        clock.advance(1)
        clock.advance(1)
    assert bad.woken == [1] and good.woken == [1, 2]
    assert any(e.get("log_failure") is not None and e["log_failure"].check(ZeroDivisionError) for e in events)


def test_the_heap_sheds_cancelled_entries() -> None:
    """Churn: entries of closed connections do not pile up (nor do their owners stay alive)."""
    clock = Clock()
    d = Deadlines(clock)
    keep = [d.call_later(300, Owner(clock)) for _ in range(10)]
    for _ in range(5000):
        d.cancel(d.call_later(300, Owner(clock)))
        assert len(d._heap) <= 2 * len(d) + _SLACK + 1
    assert len(d) == 10
    clock.advance(300)
    assert all(not e.active() for e in keep)


# -- the connections ---------------------------------------------------------------


def test_many_connections_one_reactor_call_exact_timeouts() -> None:
    """Idle timeouts at socket_timeout after each client's last command; one reactor call for all."""
    server, clock = make_server(socket_timeout=60)
    clients: List[Tuple[TestClient, float]] = []
    for i in range(30):
        c = TestClient(server)
        c.ehlo()
        clients.append((c, clock.seconds() + 60))
        clock.advance(1.5)
    assert len(pending_calls(clock)) == 1
    assert len(server._context.deadlines) == 30
    for c, deadline in clients:
        clock.advance(deadline - clock.seconds() - 0.001)
        assert not c.closed
        clock.advance(0.001)
        assert c.closed and c.replies()[-1].code == 421
        c.disconnect()  # the 421 went out and the connection closed (else its Linger deadline stays)
    assert pending_calls(clock) == [] and len(server._context.deadlines) == 0


def test_a_command_buys_a_whole_timeout_again() -> None:
    server, clock = make_server(socket_timeout=60)
    c = TestClient(server)
    c.ehlo()
    clock.advance(50)
    c.send(b"NOOP\r\n")
    clock.advance(59.999)  # the timer woke at 60, found the new deadline and slept again
    assert not c.closed
    assert pending_calls(clock) == [110]
    clock.advance(0.001)
    assert c.closed


def test_closing_a_connection_cancels_its_deadline() -> None:
    server, clock = make_server(socket_timeout=60)
    a, b = TestClient(server), TestClient(server)
    assert len(server._context.deadlines) == 2
    a.disconnect()
    assert len(server._context.deadlines) == 1
    b.send(b"QUIT\r\n")
    assert b.closed
    assert len(server._context.deadlines) == 1  # its close's deadline (Linger), until the close completes
    b.disconnect()
    assert len(server._context.deadlines) == 0 and pending_calls(clock) == []


def test_a_close_moves_the_entry_without_a_new_reactor_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """QUIT's close deadline (Linger) replaces the connection's entry: one reactor call per connection, as before."""
    server, clock = make_server(socket_timeout=60)
    made: List[float] = []
    real = clock.callLater
    monkeypatch.setattr(clock, "callLater", lambda delay, *a, **kw: (made.append(delay), real(delay, *a, **kw))[1])
    for _ in range(5):
        c = TestClient(server)
        c.send(b"QUIT\r\n")
        assert c.closed
        c.disconnect()
    assert made == [60] * 5 and pending_calls(clock) == []


# -- what an idle connection holds ---------------------------------------------------

#: Bytes an idle connection past EHLO allocates in txsmtpsrv and in
#: Twisted's timer code, measured in memory below: 1,479 on the branch that
#: made this test (main before it: 2,328 by the same measure). The bound has
#: ~10 % margin; it fails if per-connection state grows back (a DelayedCall
#: per connection is ~450 bytes, an instance dict ~60, a reply list or a
#: recipients' list kept while idle 56 each).
IDLE_BYTES_BOUND = 1650


class _Sink:
    def on_data(self, session: Any, stream: Any) -> Any:
        return stream.collect(lambda chunk: None)


def idle_bytes_per_connection(count: int = 400) -> float:
    """
    Bytes allocated by txsmtpsrv's own lines and Twisted's timer code
    (tracemalloc) per connection past EHLO and left idle, with info logging filtered out as in the bench's sink;
    the test transports are made before tracing starts and their own
    allocations (Twisted's) are not counted.
    """
    server, clock = make_server(_Sink(), size=0, socket_timeout=300)
    transports = [StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000 + i),
                                  hostAddress=IPv4Address("TCP", "127.0.0.1", 25)) for i in range(count + 20)]
    ehlo = b"EHLO client.example\r\n"
    protos = []

    def connect(transport: StringTransport) -> None:
        proto = server.buildProtocol(None)
        proto.makeConnection(transport)
        proto.dataReceived(ehlo)
        protos.append(proto)

    for t in transports[:20]:  # warm: first-connection allocations (caches, the dialogue class)
        connect(t)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for t in transports[20:]:
            connect(t)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert all(not t.disconnecting for t in transports) and len(server._context.deadlines) == count + 20
    # Ours, and the timers we ask Twisted for (a DelayedCall per connection would show here).
    ours = [tracemalloc.Filter(True, pattern) for pattern in
            ("*/txsmtpsrv/*", "*/twisted/internet/base.py", "*/twisted/internet/task.py")]
    stats = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    return sum(stat.size_diff for stat in stats) / count


@pytest.fixture
def info_filtered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Log observers that drop info (as the bench's sink configures Twisted's logging)."""
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

    from txsmtpsrv._logging import SessionLogger
    from txsmtpsrv._oplog import SessionLog
    from txsmtpsrv._protocol import SMTPServerProtocol

    observer = FilteringLogObserver(lambda event: None, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])
    monkeypatch.setattr(SMTPServerProtocol, "log", SessionLogger("txsmtpsrv._protocol", observer=observer))
    monkeypatch.setattr(SessionLog, "log", SessionLogger("txsmtpsrv._oplog", observer=observer))


def test_idle_connection_memory_stays_small(info_filtered: None) -> None:
    per_connection = idle_bytes_per_connection()
    assert per_connection < IDLE_BYTES_BOUND, f"{per_connection:.0f} bytes per idle connection"


def test_a_failing_connection_timer_is_logged_with_its_session_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure line of a connection's timer carries the session id, as every session line does."""
    server, clock = make_server()
    client = TestClient(server)
    protocol = client.protocol
    with capturedLogs() as events:
        with monkeypatch.context() as patched:
            patched.setattr(type(protocol), "deadline_reached", lambda self: 1 / 0)
            protocol.context.deadlines.call_later(1, protocol)
            clock.advance(1)
    [event] = [e for e in events if e.get("log_failure") is not None and e["log_failure"].check(ZeroDivisionError)]
    assert event["session_id"] == str(protocol.session.id)
    assert str(protocol.session.id) in event["log_system"]
    client.disconnect()
