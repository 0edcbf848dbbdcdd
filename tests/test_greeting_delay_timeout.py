# -*- test-case-name: tests.test_greeting_delay_timeout -*-
"""
With a greeting delay, reading goes on before the 220 (early talkers are
caught), so a slow C{on_connect} or reverse lookup does not hold reading.
The client is still never timed out while the greeting waits on the
server's own work, and it gets a whole C{socket_timeout} from the 220, as
after any reply it has to answer. In memory, on a fake clock.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import capturedLogs

from txsmtpsrv import Reply
from txsmtpsrv.testing import FakeResolver, TestClient, make_server

TIMEOUT = 30.0
EPSILON = 0.25  # (exact in binary: the fake clock's sums land on the instant)


class SlowConnect:
    """on_connect answers when the test fires its Deferred."""

    def __init__(self) -> None:
        self.gate: Deferred[Any] = Deferred()
        self.failures: List[Any] = []
        self.gate.addErrback(self.failures.append)

    def on_connect(self, session: Any) -> Any:
        return self.gate


def slow_connect() -> Tuple[SlowConnect, Any, TestClient]:
    """A client greeted after a delay of 1 s and a slow on_connect (not answered yet)."""
    hooks = SlowConnect()
    server, clock = make_server(hooks, greeting_delay=1.0, socket_timeout=TIMEOUT)
    return hooks, clock, TestClient(server, greeting=False)


def assert_whole_timeout_after_greeting(client: TestClient, clock: Any) -> None:
    """The 220 was just read: the client has socket_timeout to speak, and no more."""
    clock.advance(TIMEOUT - EPSILON)
    assert client.replies() == [] and not client.closed
    clock.advance(EPSILON)
    assert client.codes() == [(421, "4.4.2")] and client.closed


def test_slow_on_connect_does_not_time_the_client_out() -> None:
    hooks, clock, client = slow_connect()
    clock.advance(TIMEOUT + 10)  # past the client's first timeout: on_connect is ours to wait for
    assert client.replies() == [] and not client.closed
    hooks.gate.callback(None)
    assert [r.code for r in client.replies()] == [220]
    assert_whole_timeout_after_greeting(client, clock)


def test_after_a_slow_on_connect_the_client_may_talk_until_its_timeout() -> None:
    hooks, clock, client = slow_connect()
    clock.advance(TIMEOUT - 5)
    hooks.gate.callback(None)
    assert [r.code for r in client.replies()] == [220]
    clock.advance(TIMEOUT - EPSILON)  # well past connect + socket_timeout
    assert client.command("EHLO c.test").code == 250
    assert client.command("QUIT").code == 221 and client.closed


def test_greeting_after_the_delay_gives_a_whole_timeout() -> None:
    """No slow hook: the delay alone is not taken from the client's timeout either."""
    server, clock = make_server(greeting_delay=5.0, socket_timeout=TIMEOUT)
    client = TestClient(server, greeting=False)
    clock.advance(5.0)
    assert [r.code for r in client.replies()] == [220]
    assert_whole_timeout_after_greeting(client, clock)


class GatedResolver(FakeResolver):
    """A PTR lookup that answers (NXDOMAIN) when the test fires C{gate}."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Deferred[Any] = Deferred()

    def lookupPointer(self, name: Any, timeout: Any = None) -> "Deferred[Any]":
        self.queries.append(name)
        return self.gate


def slow_lookup() -> Tuple[GatedResolver, Any, TestClient]:
    """A client greeted after a delay of 1 s and a slow reverse lookup (not answered yet)."""
    resolver = GatedResolver()
    server, clock = make_server(greeting_delay=1.0, socket_timeout=TIMEOUT, resolver=resolver,
                                reverse_lookup_timeout=TIMEOUT * 3)
    return resolver, clock, TestClient(server, ("203.0.113.5", 1), greeting=False)


def test_slow_reverse_lookup_does_not_time_the_client_out() -> None:
    from twisted.names import error

    resolver, clock, client = slow_lookup()
    clock.advance(TIMEOUT + 10)
    assert client.replies() == [] and not client.closed
    resolver.gate.errback(error.DNSNameError("5.113.0.203.in-addr.arpa"))
    assert [r.code for r in client.replies()] == [220]
    assert client.session.client_hostname == "[203.0.113.5]"
    assert_whole_timeout_after_greeting(client, clock)


def test_reverse_lookup_timing_out_after_socket_timeout() -> None:
    """The lookup's own limit (longer than socket_timeout here) ends the wait, not the client's."""
    server, clock = make_server(greeting_delay=1.0, socket_timeout=TIMEOUT, resolver=FakeResolver(hang=True),
                                reverse_lookup_timeout=TIMEOUT + 15)
    client = TestClient(server, ("203.0.113.5", 1), greeting=False)
    clock.advance(TIMEOUT + 15 - EPSILON)
    assert client.replies() == [] and not client.closed
    clock.advance(EPSILON)
    assert [r.code for r in client.replies()] == [220]
    assert_whole_timeout_after_greeting(client, clock)


def test_early_talker_during_a_slow_on_connect_is_refused() -> None:
    hooks, clock, client = slow_connect()
    clock.advance(TIMEOUT + 10)
    client.send(b"EHLO spam\r\n")
    assert client.codes() == [(554, "5.7.1"), (503, "5.5.1")] and not client.closed
    assert [f.type for f in hooks.failures] == [CancelledError]  # nothing waits for on_connect now
    # A whole socket_timeout from the refusal to QUIT.
    clock.advance(TIMEOUT - EPSILON)
    assert client.replies() == [] and not client.closed
    assert client.command("QUIT").code == 221 and client.closed


def test_early_talker_during_a_slow_reverse_lookup_is_refused() -> None:
    resolver, clock, client = slow_lookup()
    clock.advance(TIMEOUT + 10)
    client.send(b"EHLO spam\r\n")
    assert client.codes() == [(554, "5.7.1"), (503, "5.5.1")] and not client.closed
    clock.advance(TIMEOUT - EPSILON)
    assert client.replies() == [] and not client.closed
    clock.advance(EPSILON)
    assert client.codes() == [(421, "4.4.2")] and client.closed


def test_on_connect_past_hook_timeout_still_ends_the_wait() -> None:
    """The wait stays bounded: hook_timeout (ours), not socket_timeout, ends a hung on_connect."""
    class Hung:
        def on_connect(self, session: Any) -> Any:
            return Deferred()

    server, clock = make_server(Hung(), greeting_delay=1.0, socket_timeout=TIMEOUT, hook_timeout=TIMEOUT * 2)
    client = TestClient(server, greeting=False)
    clock.advance(1.0)  # on_connect is asked once the delay is over
    clock.advance(TIMEOUT * 2 - EPSILON)
    assert client.replies() == [] and not client.closed
    clock.advance(EPSILON)
    assert client.codes() == [(421, "4.3.0")] and client.closed


class _BreaksOnce:
    """The dialogue's options, except that the first read of C{name} raises: a bug of ours, injected
    (through the options, not by patching a module: the mypyc build binds a module's own calls)."""

    def __init__(self, options: Any) -> None:
        self._options = options
        self.broken = False

    def __getattr__(self, attr: str) -> Any:
        if attr == "name" and not self.broken:
            self.broken = True
            raise TypeError("sabotaged")
        return getattr(self._options, attr)


def test_greeting_that_never_comes_still_times_the_client_out() -> None:
    """Only our pending work spares the client: a bug answered 451 instead of the 220 leaves the usual timeout."""
    class Custom:
        def on_connect(self, session: Any) -> Any:
            return Reply(220, "welcome")  # at once: _connect_done runs in the delay's answer

    server, clock = make_server(Custom(), greeting_delay=1.0, socket_timeout=TIMEOUT)
    client = TestClient(server, greeting=False)
    options = client.protocol.core.options = _BreaksOnce(client.protocol.core.options)
    with capturedLogs():
        clock.advance(1.0)
    assert options.broken and client.codes() == [(451, "4.3.0")] and not client.closed
    clock.advance(TIMEOUT - 1.0)  # the deadline of the connection: nothing of ours is pending
    assert client.codes() == [(421, "4.4.2")] and client.closed


def test_shutdown_during_the_wait_closes_at_once() -> None:
    """Nothing holds reading before the 220: a graceful close does not wait for on_connect."""
    hooks, clock, client = slow_connect()
    clock.advance(TIMEOUT + 10)
    client.server.close()
    assert client.codes() == [(421, "4.3.2")] and client.closed
    assert [f.type for f in hooks.failures] == [CancelledError]


def test_slow_lookup_then_hung_on_connect_is_bounded_by_their_limits() -> None:
    class Hung:
        def on_connect(self, session: Any) -> Any:
            return Deferred()

    server, clock = make_server(Hung(), greeting_delay=1.0, socket_timeout=TIMEOUT, hook_timeout=TIMEOUT * 2,
                                resolver=FakeResolver(hang=True), reverse_lookup_timeout=TIMEOUT + 5)
    client = TestClient(server, ("203.0.113.5", 1), greeting=False)
    clock.advance(1.0)
    clock.advance(TIMEOUT + 4)  # the lookup gives up: on_connect is asked
    clock.advance(TIMEOUT * 2 - EPSILON)
    assert client.replies() == [] and not client.closed
    clock.advance(EPSILON)
    assert client.codes() == [(421, "4.3.0")] and client.closed
