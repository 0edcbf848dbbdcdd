# -*- test-case-name: tests.test_real_client_peer -*-
"""
Knowing the real client from the socket's peer address, at the SMTP level and
in memory: the reverse DNS lookup before the greeting (PTR names, address
literals, a hanging resolver bounded by reverse_lookup_timeout, loopback,
IPv4-mapped peers, a client leaving mid-lookup) and C{ignored_hosts}.

Everything runs on a L{Clock} and L{StringTransport}s (through
L{txsmtpsrv.testing}); reverse lookups are answered by L{FakeResolver}.
The XCLIENT/XFORWARD and PROXY ways of naming the client are in
C{test_real_client_forwarding.py} and C{test_real_client_proxy.py}.
"""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs

from txsmtpsrv.testing import FakeResolver, TestClient, make_server
from tests._real_client import Recorder, conn_events, ehlo_lines, transaction


# ---------------------------------------------------------------------------
# reverse DNS


def test_ptr_name_becomes_client_hostname():
    """A PTR answer is the session's client_hostname, seen by on_connect and in the EHLO reply."""
    hooks = Recorder()
    resolver = FakeResolver({"192.0.2.10": "client.example.test"})
    server, _ = make_server(hooks, resolver=resolver)
    client = TestClient(server)
    assert client.greeting is not None and client.greeting.code == 220
    assert resolver.queries == ["10.2.0.192.in-addr.arpa"]
    assert hooks.get("connect")[0]["client_hostname"] == "client.example.test"
    assert ehlo_lines(client)[0] == "mx.test Nice to meet you, client.example.test"


def test_nxdomain_gives_address_literal():
    """NXDOMAIN leaves client_hostname as the address literal [ip]."""
    hooks = Recorder()
    resolver = FakeResolver({})
    server, _ = make_server(hooks, resolver=resolver)
    client = TestClient(server)
    assert client.greeting.code == 220
    assert resolver.queries == ["10.2.0.192.in-addr.arpa"]
    assert hooks.get("connect")[0]["client_hostname"] == "[192.0.2.10]"
    assert ehlo_lines(client)[0] == "mx.test Nice to meet you, [192.0.2.10]"


def test_ipv6_nxdomain_gives_ipv6_literal():
    """An IPv6 client without PTR is shown as [IPv6:addr] (compressed)."""
    hooks = Recorder()
    resolver = FakeResolver({})
    server, _ = make_server(hooks, resolver=resolver)
    client = TestClient(server, peer=("2001:db8:0:0::5", 40000))
    assert client.greeting.code == 220
    assert len(resolver.queries) == 1 and resolver.queries[0].endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert hooks.get("connect")[0]["client_hostname"] == "[IPv6:2001:db8::5]"
    assert ehlo_lines(client)[0] == "mx.test Nice to meet you, [IPv6:2001:db8::5]"


def test_ipv6_ptr_name():
    """An IPv6 client with a PTR record gets its name."""
    hooks = Recorder()
    server, _ = make_server(hooks, resolver=FakeResolver({"2001:db8::5": "six.example.test"}))
    client = TestClient(server, peer=("2001:db8::5", 40000))
    assert client.greeting.code == 220
    assert hooks.get("connect")[0]["client_hostname"] == "six.example.test"


def test_hanging_resolver_greets_at_default_timeout():
    """A resolver that never answers: the greeting comes exactly at 1.5 s on the clock, with [ip]."""
    hooks = Recorder()
    resolver = FakeResolver(hang=True)
    server, clock = make_server(hooks, resolver=resolver)
    client = TestClient(server, greeting=False)
    assert client.replies() == []
    clock.advance(1.25)
    assert client.replies() == [] and hooks.get("connect") == []
    clock.advance(0.25)  # now exactly 1.5 s
    (greeting,) = client.replies()
    assert greeting.code == 220
    assert hooks.get("connect")[0]["client_hostname"] == "[192.0.2.10]"
    assert ehlo_lines(client)[0] == "mx.test Nice to meet you, [192.0.2.10]"


def test_hanging_resolver_custom_timeout():
    """reverse_lookup_timeout caps the wait: greeting exactly at 0.5 s, never later."""
    server, clock = make_server(Recorder(), resolver=FakeResolver(hang=True), reverse_lookup_timeout=0.5)
    client = TestClient(server, greeting=False)
    clock.advance(0.25)
    assert client.replies() == []
    clock.advance(0.25)
    assert [r.code for r in client.replies()] == [220]
    clock.advance(10)
    assert client.replies() == []  # nothing more arrives (no second greeting)


def test_disable_reverse_lookup():
    """disable_reverse_lookup=True: no PTR query at all, greeting at once, [ip]."""
    hooks = Recorder()
    resolver = FakeResolver({"192.0.2.10": "client.example.test"}, hang=True)
    server, _ = make_server(hooks, resolver=resolver, disable_reverse_lookup=True)
    client = TestClient(server)
    assert client.greeting is not None and client.greeting.code == 220
    assert resolver.queries == []
    assert hooks.get("connect")[0]["client_hostname"] == "[192.0.2.10]"


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.3.4.5", "::1"])
def test_loopback_is_localhost_without_query(peer):
    """Loopback peers are 'localhost' at once; no PTR query is made."""
    hooks = Recorder()
    resolver = FakeResolver(hang=True)
    server, _ = make_server(hooks, resolver=resolver)
    client = TestClient(server, peer=(peer, 40000))
    assert client.greeting is not None and client.greeting.code == 220
    assert resolver.queries == []
    assert hooks.get("connect")[0]["client_hostname"] == "localhost"


def test_ipv4_mapped_loopback_is_localhost_without_query():
    """A dual-stack listener's ::ffff:127.0.0.1 peer is loopback too: 'localhost', no query."""
    hooks = Recorder()
    resolver = FakeResolver(hang=True)
    server, _ = make_server(hooks, resolver=resolver)
    client = TestClient(server, peer=("::ffff:127.0.0.1", 40000))
    assert resolver.queries == []
    assert client.greeting is not None and client.greeting.code == 220
    assert hooks.get("connect")[0]["client_hostname"] == "localhost"


def test_ipv4_mapped_peer_is_shown_as_ipv4():
    """A dual-stack listener's ::ffff:a.b.c.d peer is looked up and shown as IPv4."""
    hooks = Recorder()
    resolver = FakeResolver({})
    server, _ = make_server(hooks, resolver=resolver)
    TestClient(server, peer=("::ffff:192.0.2.10", 40000))
    assert resolver.queries == ["10.2.0.192.in-addr.arpa"]
    assert hooks.get("connect")[0]["client_hostname"] == "[192.0.2.10]"


def test_disconnect_during_lookup():
    """A client leaving during the reverse lookup: no crash, no greeting, no on_connect, one on_close."""
    hooks = Recorder()
    server, clock = make_server(hooks, resolver=FakeResolver(hang=True))
    with capturedLogs() as events:
        client = TestClient(server, greeting=False)
        client.disconnect()
        clock.advance(10)
    assert client.transport.value() == b""
    assert hooks.get("connect") == []
    assert len(hooks.get("close")) == 1
    assert server.connections == 0
    assert [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)
            or "log_failure" in e] == []
    assert clock.getDelayedCalls() == []


# ---------------------------------------------------------------------------
# ignored_hosts


@pytest.mark.parametrize("ignored, peer, quiet", [
    (("192.0.2.0/24",), "192.0.2.10", True),
    (("192.0.2.10",), "192.0.2.10", True),
    (("192.0.2.0/24",), "198.51.100.7", False),
    (("2001:db8::/32",), "2001:db8::5", True),
    ((), "192.0.2.10", False),
])
def test_ignored_hosts_silence_connection_logs(ignored, peer, quiet):
    """Connections from ignored_hosts log no 'connection from'/'connection closed'; others log both."""
    server, _ = make_server(None, ignored_hosts=ignored)
    with capturedLogs() as events:
        client = TestClient(server, peer=(peer, 40000))
        assert client.greeting.code == 220
        client.command("QUIT")
        client.disconnect()
    found = conn_events(events)
    if quiet:
        assert found == []
    else:
        assert [f.split(" {")[0].split(":")[0] for f in found] == ["connection from", "connection closed"]


def test_ignored_hosts_still_serves_mail():
    """An ignored (health-check) host is only unlogged: it is still served normally."""
    hooks = Recorder()
    server, _ = make_server(hooks, ignored_hosts="192.0.2.0/24")
    client = TestClient(server)
    ehlo_lines(client)
    transaction(client)
    assert len(hooks.get("data")) == 1


def test_ignored_hosts_match_ipv4_mapped_peer():
    """A ::ffff:192.0.2.10 peer (dual-stack listener) matches ignored_hosts 192.0.2.0/24."""
    server, _ = make_server(None, ignored_hosts=["192.0.2.0/24"])
    with capturedLogs() as events:
        client = TestClient(server, peer=("::ffff:192.0.2.10", 40000))
        client.disconnect()
    assert conn_events(events) == []
