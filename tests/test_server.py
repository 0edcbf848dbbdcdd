"""
Tests for L{txsmtpsrv.SMTPServer} and L{txsmtpsrv.ServerOptions}: option
validation, graceful close and listening on endpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock

from tests._memory import Collect, Pending
from txsmtpsrv import OBSERVER_EVENTS, ServerOptions, SMTPServer
from txsmtpsrv.testing import TestClient, make_server


def results(d: Deferred) -> List[Any]:
    """What d has fired with so far (empty while pending)."""
    out: List[Any] = []
    d.addBoth(out.append)
    return out


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"disabled_commands": {"FOO"}},
    {"name": ""},
    {"name": "mx test"},
    {"banner": "two\r\nlines"},
    {"banner": "x\ny"},
    {"size": -1},
    {"size": 1.5},
    {"size": True},
    {"max_command_length": 511},
    {"max_recipients": 0},
    {"max_unrecognized_commands": -1},
    {"min_data_rate": "fast"},
    {"max_clients": 0},
    {"max_clients": 1.5},
    {"socket_timeout": 0},
    {"close_timeout": -1},
    {"hook_timeout": 0},
    {"hook_timeout": "10"},
    {"bare_line_endings": "fix"},
    {"helo_response": "{nosuchfield}"},
    {"helo_response": "{0}"},
    {"helo_response": "{name"},
])
def test_invalid_options(kwargs):
    """Each invalid option value is a ValueError at construction."""
    with pytest.raises(ValueError):
        SMTPServer(None, reactor=MemoryReactorClock(), **kwargs)


@pytest.mark.parametrize("wrong, right", [
    ("maxClients", "max_clients"),
    ("hideSize", "hide_size"),
    ("socketTimeout", "socket_timeout"),
    ("closeTimeout", "close_timeout"),
    ("disabledCommands", "disabled_commands"),
])
def test_camel_case_option_names_the_snake_case(wrong, right):
    """A camelCase option (Node smtp-server spelling) is a TypeError naming the snake_case option."""
    with pytest.raises(TypeError, match=f"'{wrong}'.*'{right}'"):
        SMTPServer(None, reactor=MemoryReactorClock(), **{wrong: 1})


def test_unknown_option_without_hint():
    """A wholly unknown option is a TypeError."""
    with pytest.raises(TypeError, match="frobnicate"):
        SMTPServer(None, reactor=MemoryReactorClock(), frobnicate=1)


def test_options_object_and_overrides():
    """An options object can be passed whole, with keywords overriding it."""
    base = ServerOptions(name="base.test", size=1000)
    server = SMTPServer(None, base, reactor=MemoryReactorClock())
    assert server.options is base
    server = SMTPServer(None, base, reactor=MemoryReactorClock(), size=2000)
    assert (server.options.name, server.options.size) == ("base.test", 2000)


def test_command_sets_are_normalised():
    """disabled_commands and *_params accept strings or iterables, any case."""
    options = ServerOptions(name="n", disabled_commands="vrfy, expn", mail_params=["envid"], rcpt_params="x-a x-b")
    assert options.disabled_commands == frozenset({"VRFY", "EXPN"})
    assert options.mail_params == frozenset({"ENVID"})
    assert options.rcpt_params == frozenset({"X-A", "X-B"})


def test_options_are_frozen():
    """ServerOptions cannot be changed after construction."""
    options = ServerOptions(name="n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.size = 1  # type: ignore[misc]


def test_hooks_must_be_callable():
    """A hooks attribute that is not callable is a TypeError."""
    class H:
        on_mail_from = "nope"

    with pytest.raises(TypeError, match="on_mail_from"):
        SMTPServer(H(), reactor=MemoryReactorClock())


def test_observer_events_listed():
    """OBSERVER_EVENTS names exactly the events observe() accepts."""
    server, _ = make_server()
    for event in OBSERVER_EVENTS:
        server.observe(event, print)()
    assert set(OBSERVER_EVENTS) == {"connect", "disconnect", "command", "helo", "mail", "rcpt", "message",
                                    "reply", "auth", "tls", "hook", "refused"}


def test_observer_removing_itself_during_its_event_does_not_skip_the_next():
    """
    Every observer registered when an event starts hears it, even if one of them
    removes itself (or adds another) meanwhile: the event goes to a snapshot.
    """
    server, _ = make_server()
    seen: List[str] = []

    def once(session: Any, verb: str, arg: str) -> None:
        seen.append("once " + verb)
        remove_once()
        server.observe("command", lambda *a: seen.append("late"))

    remove_once = server.observe("command", once)
    server.observe("command", lambda session, verb, arg: seen.append("always " + verb))
    client = TestClient(server)
    client.command("NOOP")
    assert seen == ["once NOOP", "always NOOP"]  # the live list skipped "always"; "late" waits
    client.command("RSET")
    assert seen[2:] == ["always RSET", "late"]


def test_removing_an_observer_twice_is_an_error():
    """The remover keeps list.remove's contract: a second call raises ValueError."""
    server, _ = make_server()
    remove = server.observe("connect", print)
    remove()
    with pytest.raises(ValueError):
        remove()
    assert print not in server._observers["connect"]


# -- close() ---------------------------------------------------------------------------


def test_close_with_no_clients_fires_at_once():
    """close() with no clients and no ports fires at once."""
    server, _ = make_server()
    assert results(server.close()) == [None]


def test_close_idle_clients_get_421_at_once():
    """Idle clients get 421 4.3.2 at once and are closed; close() fires when all are gone."""
    server, _ = make_server()
    a, b = TestClient(server), TestClient(server)
    b.command("EHLO c.test")
    fired = results(server.close())
    for client in (a, b):
        replies = client.replies()
        assert [(r.code, r.enhanced, r.text) for r in replies] == [(421, "4.3.2", "mx.test Service shutting down")]
        assert client.closed
    assert fired == []
    a.disconnect()
    assert fired == []
    b.disconnect()
    assert fired == [None]


def test_close_refuses_new_clients():
    """A client connecting while the server closes gets 421 4.3.2."""
    server, _ = make_server()
    TestClient(server)
    server.close()
    late = TestClient(server)
    assert (late.greeting.code, late.greeting.enhanced) == (421, "4.3.2")
    assert late.closed


def test_close_lets_transaction_finish():
    """A client mid-transaction finishes its message and then gets 421 4.3.2."""
    hooks = Collect()
    bodies = hooks.bodies
    server, _ = make_server(hooks)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
    client.replies()
    fired = results(server.close())
    assert client.read() == b"" and not client.closed
    client.send(b"RCPT TO:<c@y.test>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n")
    assert client.codes() == [(250, "2.1.5"), (354, None), (250, "2.0.0"), (421, "4.3.2")]
    assert bodies == [b"hello\r\n"]
    assert client.closed and fired == []
    client.disconnect()
    assert fired == [None]


def test_close_rset_ends_transaction():
    """A client mid-transaction that sends RSET gets 250 then 421 4.3.2."""
    server, _ = make_server()
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    client.replies()
    server.close()
    client.send(b"RSET\r\n")
    assert client.codes() == [(250, "2.0.0"), (421, "4.3.2")]
    assert client.closed


def test_close_mid_data():
    """A client in the middle of DATA when close() is called finishes the message first."""
    server, _ = make_server()
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhalf")
    client.replies()
    server.close()
    assert client.read() == b""
    client.send(b" done\r\n.\r\n")
    assert client.codes() == [(250, "2.0.0"), (421, "4.3.2")]


def test_close_timeout_drops_the_rest():
    """After close_timeout the clients still busy get 421 4.3.2 and are dropped; close() fires when they are gone."""
    server, clock = make_server(close_timeout=5)
    idle, busy = TestClient(server), TestClient(server)
    busy.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    busy.replies()
    fired = results(server.close())
    idle.replies()
    idle.disconnect()
    clock.advance(4.9)
    assert busy.read() == b"" and not busy.closed
    clock.advance(0.1)
    assert busy.codes() == [(421, "4.3.2")]
    assert busy.closed and fired == []
    busy.disconnect()
    assert fired == [None]
    assert server.connections == 0


def test_close_aborts_clients_that_never_go():
    """A client that does not go after the forced 421 is aborted a little later."""
    server, clock = make_server(close_timeout=5)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    server.close()
    clock.advance(5)
    assert client.closed and not client.transport.disconnected
    clock.advance(2)
    assert client.transport.disconnected  # abortConnection


def test_close_while_hook_pending_waits():
    """A client whose hook is pending when close() is called is not sent 421 in the middle of the hook."""
    hooks = Pending("on_rcpt_to")
    gate = hooks.deferreds
    server, _ = make_server(hooks)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
    client.replies()
    server.close()
    assert client.read() == b""
    gate[0].callback(None)
    assert client.codes() == [(250, "2.1.5")]
    assert not client.closed


def test_close_idle_after_pending_helo_hook():
    """A client that was only waiting for its EHLO hook gets 421 4.3.2 once the hook answers."""
    hooks = Pending("on_helo")
    gate = hooks.deferreds
    server, _ = make_server(hooks)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\n")
    server.close()
    gate[0].callback(None)
    assert [r.code for r in client.replies()] == [250, 421]
    assert client.closed


def test_close_twice():
    """close() called twice returns Deferreds that both fire when the server is closed."""
    server, _ = make_server()
    client = TestClient(server)
    first, second = results(server.close()), results(server.close())
    assert first == second == []
    client.disconnect()
    assert first == second == [None]


# -- listen() ------------------------------------------------------------------------------


def test_listen_with_endpoint_string():
    """listen() with an endpoint string listens on the server's reactor and close() stops the port."""
    reactor = MemoryReactorClock()
    server = SMTPServer(None, reactor=reactor, name="mx.test")
    ports = results(server.listen("tcp:2525:interface=127.0.0.1"))
    assert len(ports) == 1 and IListeningPort.providedBy(ports[0])
    port_number, factory, _, interface = reactor.tcpServers[0]
    assert (port_number, interface, factory) == (2525, "127.0.0.1", server)
    stopped: list = []
    ports[0].stopListening = lambda: stopped.append(True)
    assert results(server.close()) == [None]
    assert stopped == [True]


def test_listen_with_endpoint_object():
    """listen() with an endpoint object works and close() waits for a Deferred stopListening."""
    reactor = MemoryReactorClock()
    server = SMTPServer(None, reactor=reactor, name="mx.test")
    ports = results(server.listen(TCP4ServerEndpoint(reactor, 0)))
    assert reactor.tcpServers[0][1] is server
    stopping: Deferred = Deferred()
    ports[0].stopListening = lambda: stopping
    fired = results(server.close())
    assert fired == []
    stopping.callback(None)
    assert fired == [None]


def test_server_is_a_factory_for_endpoints():
    """SMTPServer builds working protocols for endpoint.listen(server) too."""
    reactor = MemoryReactorClock()
    server = SMTPServer(None, reactor=reactor, name="mx.test", disable_reverse_lookup=True)
    TCP4ServerEndpoint(reactor, 25).listen(server)
    factory = reactor.tcpServers[0][1]
    client = TestClient(factory)
    assert client.greeting.code == 220
    assert server.connections == 1


def test_listen_failure_propagates():
    """A listen failure fails the Deferred listen() returns."""
    class Broken:
        def listen(self, factory):
            from twisted.internet.defer import fail
            return fail(OSError("address in use"))

    server, _ = make_server()
    out = results(server.listen(Broken()))
    assert out[0].check(OSError)


def test_listened_port_is_recorded():
    """Ports from listen() are the ones close() stops."""
    server, _ = make_server()

    class Port:
        stopped = False

        def stopListening(self):
            Port.stopped = True

    class Endpoint:
        def listen(self, factory):
            return succeed(Port())

    server.listen(Endpoint())
    server.close()
    assert Port.stopped
