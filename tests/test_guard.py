"""
The abuse limits in the dialogue, in memory with a Clock: per-address
connection limits at the greeting, greeting delay and early talkers,
HTTP and TLS on the SMTP port, junk commands, AUTH failure limits and the
tarpit. Over real sockets: tests/test_guard_loopback.py.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv import SMTPError
from txsmtpsrv.testing import FakeResolver, TestClient, make_server

from tests._memory import Collect

PASSWORD = "tiger"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str = "alice", password: str = PASSWORD) -> str:
    return "AUTH PLAIN " + b64(f"\0{user}\0{password}")


class Auth:
    def __init__(self) -> None:
        self.checked: list = []

    def on_auth(self, session, credentials):
        self.checked.append(credentials.username)
        if credentials.password == PASSWORD:
            return credentials.username
        raise SMTPError(535, "Authentication credentials invalid", "5.7.8")


def peer(n: int) -> tuple:
    return (f"198.51.100.{n}", 40000 + n)


# -- per-address concurrency and rate ------------------------------------------------------------


def test_max_clients_per_ip_refuses_at_greeting():
    server, clock = make_server(max_clients_per_ip=2)
    a1, a2 = TestClient(server, peer(1)), TestClient(server, peer(1))
    assert a1.greeting.code == a2.greeting.code == 220
    a3 = TestClient(server, peer(1))
    assert (a3.greeting.code, a3.greeting.enhanced) == (421, "4.7.0")
    assert "too many connections from your address" in a3.greeting.text
    assert a3.closed
    b = TestClient(server, peer(2))  # another address is not affected
    assert b.greeting.code == 220
    a3.disconnect()  # the refused one was never counted: its end frees nothing
    assert TestClient(server, peer(1)).greeting.code == 421
    a1.disconnect()
    assert TestClient(server, peer(1)).greeting.code == 220


def test_per_ip_ipv6_prefix_and_mapped():
    server, _ = make_server(max_clients_per_ip=1)
    assert TestClient(server, ("2001:db8::1", 1)).greeting.code == 220
    assert TestClient(server, ("2001:db8::2", 1)).greeting.code == 421  # same /64
    assert TestClient(server, ("2001:db8:0:1::2", 1)).greeting.code == 220
    assert TestClient(server, ("192.0.2.7", 1)).greeting.code == 220
    assert TestClient(server, ("::ffff:192.0.2.7", 1)).greeting.code == 421
    server48, _ = make_server(max_clients_per_ip=1, ipv6_prefix=48)
    assert TestClient(server48, ("2001:db8:0:1::2", 1)).greeting.code == 220
    assert TestClient(server48, ("2001:db8:0:2::2", 1)).greeting.code == 421


def test_max_connect_rate():
    server, clock = make_server(max_connect_rate=3)
    for _ in range(3):
        c = TestClient(server, peer(1))
        assert c.greeting.code == 220
        c.disconnect()
    c = TestClient(server, peer(1))
    assert (c.greeting.code, c.greeting.enhanced) == (421, "4.7.0")
    assert "per minute" in c.greeting.text
    assert TestClient(server, peer(2)).greeting.code == 220
    clock.advance(60)
    assert TestClient(server, peer(1)).greeting.code == 220


def test_refusals_seen_by_observers_and_logged_once_a_minute():
    """50 refused connections from one address: 50 "refused" events, one log line, nothing else logged."""
    from twisted.logger import capturedLogs

    server, clock = make_server(max_clients_per_ip=1)
    seen: list = []
    server.observe("refused", lambda reason, address, session: seen.append((reason, address, session)))
    TestClient(server, peer(1))
    with capturedLogs() as events:
        for _ in range(50):
            TestClient(server, peer(1)).disconnect()
    assert seen == [("max_clients_per_ip", "198.51.100.1", None)] * 50
    lines = [e["log_format"].format(**e) for e in events]
    assert lines == ["refused connection from 198.51.100.1: max_clients_per_ip"]
    clock.advance(60)
    with capturedLogs() as events:
        TestClient(server, peer(1)).disconnect()
    assert [e["log_format"].format(**e) for e in events] == [
        "refused connection from 198.51.100.1: max_clients_per_ip (49 more in the last minute)"]


def test_refusal_reasons():
    """Each limit that closes a connection names itself to the "refused" observers (log, metrics)."""
    server, clock = make_server(greeting_delay=0.1, max_junk_commands=1)
    seen: list = []
    server.observe("refused", lambda reason, address, session: seen.append(reason))
    early = TestClient(server, peer(1))
    early.send(b"EHLO x\r\n")
    tls = TestClient(server, peer(2))
    tls.send(b"\x16\x03\x01\x00\x05")
    http = TestClient(server, peer(3))
    clock.advance(0.1)
    http.send(b"GET / HTTP/1.1\r\n")
    junk = TestClient(server, peer(4))
    clock.advance(0.1)
    junk.send(b"NOOP\r\nNOOP\r\n")
    assert seen == ["early_talker", "tls_on_plaintext_port", "http_request", "junk_commands"]


def test_limits_off_by_default():
    server, _ = make_server()
    clients = [TestClient(server, peer(1)) for _ in range(200)]
    assert all(c.greeting.code == 220 for c in clients)
    assert server._context.guard.sizes["open"] == 0


def test_unix_socket_clients_not_limited():
    from twisted.internet.address import UNIXAddress
    server, _ = make_server(max_clients_per_ip=1, max_connect_rate=1)
    clients = [TestClient(server, UNIXAddress(b"/run/smtp.sock")) for _ in range(5)]
    assert [c.greeting.code for c in clients] == [220] * 5


def test_xclient_counts_the_real_client():
    """A trusted proxy is not limited itself; after XCLIENT the real client's address is."""
    server, _ = make_server(max_clients_per_ip=1, use_xclient=True, xclient_trusted=["192.0.2.200"])
    proxy = [TestClient(server, ("192.0.2.200", 1000 + i)) for i in range(3)]
    assert [p.greeting.code for p in proxy] == [220] * 3
    proxy[0].command("EHLO proxy")
    assert proxy[0].command("XCLIENT ADDR=203.0.113.9").code == 220
    proxy[1].command("EHLO proxy")
    refused = proxy[1].command("XCLIENT ADDR=203.0.113.9")
    assert (refused.code, refused.enhanced) == (421, "4.7.0") and proxy[1].closed
    proxy[2].command("EHLO proxy")
    assert proxy[2].command("XCLIENT ADDR=203.0.113.10").code == 220
    proxy[0].disconnect()
    assert server._context.guard.connections.open_connections("203.0.113.9") == 0


# -- connection_limit_exceptions (health checks) -----------------------------------------------------


def test_connection_limit_exceptions_neither_limited_nor_counted():
    """
    A monitoring probe's network is exempt from both per-address connection
    limits and leaves no count behind; neighbours outside it (the same IPv6
    /64 too) are limited as before.
    """
    server, clock = make_server(max_clients_per_ip=1, max_connect_rate=2,
                                connection_limit_exceptions="198.51.100.0/30, 2001:db8::1/128")
    probes = [TestClient(server, peer(1)) for _ in range(10)]  # held open, and 10 a minute
    probes += [TestClient(server, ("::ffff:198.51.100.2", 1)), TestClient(server, ("2001:db8::1", 1)),
               TestClient(server, ("2001:db8::1", 2))]
    assert [p.greeting.code for p in probes] == [220] * 13
    guard = server._context.guard
    assert guard.sizes["open"] == guard.sizes["rate"] == 0
    assert TestClient(server, ("2001:db8::2", 1)).greeting.code == 220  # its /64 was not charged by ::1
    assert TestClient(server, ("2001:db8::3", 1)).greeting.code == 421
    assert TestClient(server, peer(5)).greeting.code == 220  # 198.51.100.5: outside the /30
    refused = TestClient(server, peer(5))
    assert (refused.greeting.code, refused.greeting.enhanced) == (421, "4.7.0")
    for p in probes:
        p.disconnect()
    assert guard.sizes["open"] == 2  # 2001:db8::/64 and 198.51.100.5, nothing of the probes


def test_connection_limit_exceptions_waive_nothing_else():
    """max_clients and the per-address AUTH failure limit still apply to an exempt client."""
    hooks = Auth()
    server, _ = make_server(hooks, max_clients=3, max_clients_per_ip=1, allow_insecure_auth=True,
                            max_auth_failures_per_ip=2, connection_limit_exceptions=["198.51.100.1"])
    clients = [TestClient(server, peer(1)) for _ in range(3)]
    over = TestClient(server, peer(1))
    assert [c.greeting.code for c in clients] == [220] * 3
    assert over.greeting.code == 421 and "Too many connected clients" in over.greeting.text
    clients[0].command("EHLO x")
    assert [clients[0].command(plain(password="guess")).code for _ in range(2)] == [535, 535]
    clients[1].command("EHLO x")
    assert clients[1].command(plain()).code == 454  # the address is over its AUTH failures


def test_connection_limit_exceptions_apply_to_the_xclient_client():
    """After XCLIENT the real client's address is the one looked up in the exceptions."""
    server, _ = make_server(max_clients_per_ip=1, use_xclient=True, xclient_trusted=["192.0.2.200"],
                            connection_limit_exceptions=["203.0.113.9"])
    for i in range(3):
        proxy = TestClient(server, ("192.0.2.200", 1000 + i))
        proxy.command("EHLO proxy")
        assert proxy.command("XCLIENT ADDR=203.0.113.9").code == 220
    proxy = TestClient(server, ("192.0.2.200", 2000))
    proxy.command("EHLO proxy")
    proxy.command("XCLIENT ADDR=203.0.113.10")
    proxy = TestClient(server, ("192.0.2.200", 2001))
    proxy.command("EHLO proxy")
    assert proxy.command("XCLIENT ADDR=203.0.113.10").code == 421


def test_connection_limit_exceptions_in_ipv4_mapped_spelling():
    """An exemption written as an IPv4-mapped network covers its clients on IPv4 and dual-stack listeners."""
    server, _ = make_server(max_clients_per_ip=1, connection_limit_exceptions="::ffff:198.51.100.0/126")
    probes = [TestClient(server, (address, 1)) for address in ("198.51.100.1", "::ffff:198.51.100.1") * 2]
    assert [p.greeting.code for p in probes] == [220] * 4
    assert [TestClient(server, peer(5)).greeting.code for _ in range(2)] == [220, 421]


@pytest.mark.parametrize("value", ["10.0.0.300/8", "health-checker", "10.0.0.0/33", ["127.0.0.1", "::1/129"]])
def test_connection_limit_exceptions_bad_network(value):
    """A bad network is a ValueError naming the option and the value at construction."""
    with pytest.raises(ValueError, match=r"^connection_limit_exceptions: .*(300|health|33|129)"):
        make_server(connection_limit_exceptions=value)


def test_flood_tables_stay_bounded():
    """10,000 connections from 10,000 addresses: open-connection keys follow live connections; the rate table is capped."""
    server, clock = make_server(max_clients_per_ip=5, max_connect_rate=100)
    guard = server._context.guard
    guard.connections._rate.max_entries = 1000  # a small cap, to see it hold
    for i in range(10_000):
        c = TestClient(server, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1))
        assert c.greeting.code == 220
        c.disconnect()
    assert guard.sizes["open"] == 0
    assert guard.sizes["rate"] == 1000
    assert server.connections == 0


# -- greeting delay and early talkers ---------------------------------------------------------------


def test_greeting_delay_holds_greeting():
    server, clock = make_server(greeting_delay=0.5)
    c = TestClient(server, peer(1))
    assert c.greeting is None
    clock.advance(0.49)
    assert c.replies() == []
    clock.advance(0.01)
    assert c.replies()[0].code == 220
    assert c.command("EHLO x").code == 250


def test_early_talker_554_then_only_quit():  # (more in test_greeting_refused.py)
    server, clock = make_server(greeting_delay=0.5)
    c = TestClient(server, peer(1))
    clock.advance(0.2)
    c.send(b"EHLO spam\r\n")
    assert [(x.code, x.enhanced) for x in c.replies()] == [(554, "5.7.1"), (503, "5.5.1")] and not c.closed
    assert c.command("QUIT").code == 221 and c.closed  # RFC 5321 3.1: the 554 is at once, the close at QUIT
    c.disconnect()
    assert server.connections == 0
    clock.advance(1)
    assert c.replies() == []  # no late greeting


def test_early_talker_during_reverse_lookup():
    """The delay runs alongside the reverse lookup; talking during either is early."""
    resolver = FakeResolver(hang=True)
    server, clock = make_server(greeting_delay=0.1, resolver=resolver, reverse_lookup_timeout=1.5)
    c = TestClient(server, ("203.0.113.5", 1))
    clock.advance(0.5)  # the delay is over, the lookup is not
    c.send(b"EHLO x\r\n")
    assert [x.code for x in c.replies()] == [554, 503] and not c.closed
    assert c.command("QUIT").code == 221 and c.closed


def test_greeting_delay_overlaps_reverse_lookup():
    resolver = FakeResolver({"203.0.113.5": "mail.example"})
    server, clock = make_server(greeting_delay=0.3, resolver=resolver)
    c = TestClient(server, ("203.0.113.5", 1))
    assert c.greeting is None
    clock.advance(0.3)
    assert c.replies()[0].code == 220
    assert c.protocol.session.client_hostname == "mail.example"


def test_no_delay_no_early_talker_check():
    """Library default: no delay, and a client may pipeline its first command (sinks, tests)."""
    server, _ = make_server()
    c = TestClient(server, peer(1), greeting=False)
    c.send(b"EHLO x\r\n")
    assert [x.code for x in c.replies()] == [220, 250]


def test_greeting_delay_with_on_connect():
    class Hooks:
        def on_connect(self, session):
            return None

    server, clock = make_server(Hooks(), greeting_delay=0.2)
    c = TestClient(server, peer(1))
    assert c.greeting is None
    clock.advance(0.2)
    assert c.replies()[0].code == 220


# -- other protocols ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"CONNECT mx:25 HTTP/1.1",
                                  b"OPTIONS * HTTP/1.1"])
def test_http_request_line_421_and_close(line):
    server, _ = make_server()
    c = TestClient(server, peer(1))
    c.send(line + b"\r\nHost: mx\r\n\r\n")
    assert [(x.code, x.enhanced) for x in c.replies()] == [(421, "4.7.0")]
    assert c.closed


def test_http_later_in_session_too():
    server, _ = make_server()
    c = TestClient(server, peer(1))
    c.command("EHLO x")
    assert c.command("GET / HTTP/1.1").code == 421 and c.closed


def test_get_without_http_version_is_just_unrecognized():
    server, _ = make_server()
    c = TestClient(server, peer(1))
    assert c.command("GET /").code == 500 and not c.closed


def test_tls_client_hello_plain_close():
    server, _ = make_server()
    c = TestClient(server, peer(1))
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
    assert c.read() == b""  # nothing: a reply would be garbage to a TLS stack
    assert c.closed


def test_tls_client_hello_split_bytes():
    server, _ = make_server()
    c = TestClient(server, peer(1))
    c.send(b"\x16")
    assert not c.closed
    c.send(b"\x03")
    assert not c.closed
    c.send(b"\x03\x00\x10")
    assert c.closed and c.read() == b""


def test_tls_hello_beats_greeting_delay():
    server, clock = make_server(greeting_delay=0.5)
    c = TestClient(server, peer(1))
    c.send(b"\x16\x03\x01\x00\x05hello")
    assert c.read() == b"" and c.closed


def test_binary_after_first_line_is_not_sniffed():
    server, _ = make_server()
    c = TestClient(server, peer(1))
    c.command("EHLO x")
    c.send(b"\x16\x03\x01\r\n")
    assert c.replies()[0].code == 500 and not c.closed


# -- junk commands -----------------------------------------------------------------------------------


def test_junk_commands_limit():
    server, _ = make_server(max_junk_commands=5)
    c = TestClient(server, peer(1))
    c.command("EHLO x")
    for verb in ("NOOP", "RSET", "VRFY a", "HELP", "EXPN a"):
        assert c.command(verb).code < 400 or verb.startswith("EXPN")
    r = c.command("NOOP")
    assert (r.code, r.enhanced) == (421, "4.7.0") and c.closed


def test_junk_default_100_and_delivery_resets():
    collect = Collect()
    server, _ = make_server(collect)
    c = TestClient(server, peer(1))
    c.command("EHLO x")
    for _ in range(100):
        assert c.command("NOOP").code == 250
    assert c.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nhi\r\n", ehlo=None)[-1].code == 250
    for _ in range(100):
        assert c.command("NOOP").code == 250  # the message reset the count
    assert c.command("NOOP").code == 421


def test_junk_idle_holder_is_closed():
    """A NOOP every 59 s no longer holds a slot forever: at most max_junk_commands of them."""
    server, clock = make_server()
    c = TestClient(server, peer(1))
    for i in range(101):
        clock.advance(59)
        r = c.command("NOOP")
    assert r.code == 421 and c.closed


# -- AUTH failure limits and the tarpit ------------------------------------------------------------


def auth_client(server, n=1):
    c = TestClient(server, peer(n))
    c.command("EHLO x")
    return c


def test_auth_failures_per_ip_across_connections():
    hooks = Auth()
    server, clock = make_server(hooks, allow_insecure_auth=True, max_auth_failures_per_ip=3,
                                auth_failure_window=300)
    for i in range(3):
        c = auth_client(server)
        assert c.command(plain(password="guess")).code == 535
        c.disconnect()
    c = auth_client(server)
    r = c.command(plain())  # even the right password: not checked
    assert (r.code, r.enhanced) == (454, "4.7.0")
    assert len(hooks.checked) == 3
    other = auth_client(server, 2)
    assert other.command(plain()).code == 235  # another address is not affected
    clock.advance(300)  # the window from the first failure is over
    assert auth_client(server).command(plain()).code == 235


def test_auth_refused_before_exchange():
    """Past the limit, AUTH LOGIN gets 454 at once: no challenge to answer."""
    server, clock = make_server(Auth(), allow_insecure_auth=True, max_auth_failures_per_ip=1)
    c = auth_client(server)
    c.command(plain(password="x"))
    r = c.command("AUTH LOGIN")
    assert r.code == 454


def test_auth_refusals_count_toward_max_auth_failures():
    """454 after 454 is no endless loop: the refusals count toward the per-connection limit."""
    server, _ = make_server(Auth(), allow_insecure_auth=True, max_auth_failures_per_ip=1, max_auth_failures=3)
    c = auth_client(server)
    assert c.command(plain(password="x")).code == 535
    assert c.command(plain()).code == 454
    c.send(plain() + "\r\n")
    assert c.codes() == [(454, "4.7.0"), (421, "4.7.0")] and c.closed


def test_auth_failures_per_user():
    hooks = Auth()
    server, _ = make_server(hooks, allow_insecure_auth=True, max_auth_failures_per_user=2)
    for n in (1, 2):
        assert auth_client(server, n).command(plain("bob", "x")).code == 535
    assert auth_client(server, 3).command(plain("bob", PASSWORD)).code == 454
    assert auth_client(server, 3).command(plain("alice", PASSWORD)).code == 235


def test_tarpit_delays_failure_only_on_that_connection():
    hooks = Auth()
    server, clock = make_server(hooks, allow_insecure_auth=True, auth_failure_delay=1, auth_failure_max_delay=4,
                                max_auth_failures=0)
    c = auth_client(server)
    other = auth_client(server, 2)
    expected = [1, 2, 4, 4]
    for delay in expected:
        c.send(plain(password="x") + "\r\n")
        assert c.replies() == []
        assert other.command("NOOP").code == 250  # the reactor is not blocked: others are served
        clock.advance(delay - 0.01)
        assert c.replies() == []
        clock.advance(0.01)
        assert [x.code for x in c.replies()] == [535]
    # Reconnecting does not reset it: the count is per address.
    c2 = auth_client(server)
    c2.send(plain(password="x") + "\r\n")
    clock.advance(3.99)
    assert c2.replies() == []
    clock.advance(0.01)
    assert c2.replies()[0].code == 535
    # Success is not delayed.
    assert c2.command(plain()).code == 235


def test_tarpit_connection_dropped_while_waiting():
    server, clock = make_server(Auth(), allow_insecure_auth=True, auth_failure_delay=2)
    c = auth_client(server)
    c.send(plain(password="x") + "\r\n")
    c.disconnect()
    clock.advance(5)  # the timer was cancelled: nothing written, nothing raised
    assert c.read() == b""
    assert [d for d in clock.getDelayedCalls() if d.getTime() < 3] == []  # the tarpit timer is gone


def test_tarpit_then_per_connection_limit():
    server, clock = make_server(Auth(), allow_insecure_auth=True, auth_failure_delay=1, max_auth_failures=2)
    c = auth_client(server)
    c.send(plain(password="x") + "\r\n")
    clock.advance(1)
    assert c.codes() == [(535, "5.7.8")]
    c.send(plain(password="x") + "\r\n")
    clock.advance(2)
    assert c.codes() == [(535, "5.7.8"), (421, "4.7.0")] and c.closed


def test_auth_tables_bounded_under_rotation():
    server, _ = make_server(Auth(), allow_insecure_auth=True, max_auth_failures_per_ip=3, max_auth_failures_per_user=3)
    guard = server._context.guard
    guard.auth._addresses.max_entries = guard.auth._users.max_entries = 200
    for i in range(2000):
        c = TestClient(server, (f"10.0.{i >> 8}.{i & 255}", 1))
        c.command("EHLO x")
        assert c.command(plain(f"user{i}", "x")).code == 535
        c.disconnect()
    assert guard.sizes["auth_addresses"] == 200 and guard.sizes["auth_users"] == 200


def test_per_ip_limit_counts_the_proxy_header_client():
    """Behind the PROXY protocol the limit applies to the client the header names, not to the proxy."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from txsmtpsrv import ProxyWrappingFactory

    server, clock = make_server(max_clients_per_ip=1)
    factory = ProxyWrappingFactory(server, trusted=["10.0.0.0/8"], reactor=clock)

    def via_proxy(source: str, port: int) -> bytes:
        peer = IPv4Address("TCP", "10.0.0.1", port)
        wrapper = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.2", 25), peerAddress=peer)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(f"PROXY TCP4 {source} 192.0.2.25 {port} 25\r\n".encode())
        return transport.value()

    assert via_proxy("203.0.113.1", 1001).startswith(b"220 ")
    assert via_proxy("203.0.113.1", 1002).startswith(b"421 4.7.0 ")  # same client behind the proxy
    assert via_proxy("203.0.113.2", 1003).startswith(b"220 ")  # another client through the same proxy


def test_connection_limit_exceptions_behind_the_proxy_header():
    """
    Behind PROXY the exemption is looked up for the client the header names:
    exempting the proxy exempts none of its clients, only its own connections
    (v2 LOCAL: a balancer's health check); exempting a client exempts it.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from txsmtpsrv import ProxyWrappingFactory

    local = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"  # v2, LOCAL, UNSPEC, no addresses

    def via_proxy(factory: Any, header: bytes, port: int) -> bytes:
        peer = IPv4Address("TCP", "10.0.0.1", port)
        wrapper = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.2", 25), peerAddress=peer)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(header)
        return transport.value()[:4]

    def proxied(source: str, port: int) -> bytes:
        return f"PROXY TCP4 {source} 192.0.2.25 {port} 25\r\n".encode()

    server, clock = make_server(max_clients_per_ip=1, connection_limit_exceptions="10.0.0.1")
    factory = ProxyWrappingFactory(server, trusted=["10.0.0.0/8"], reactor=clock)
    assert [via_proxy(factory, proxied("203.0.113.2", 1000 + i), 1000 + i) for i in range(2)] == [b"220 ", b"421 "]
    assert [via_proxy(factory, local, 2000 + i) for i in range(3)] == [b"220 "] * 3

    server, clock = make_server(max_clients_per_ip=1, connection_limit_exceptions="203.0.113.1")
    factory = ProxyWrappingFactory(server, trusted=["10.0.0.0/8"], reactor=clock)
    assert [via_proxy(factory, proxied("203.0.113.1", 1000 + i), 1000 + i) for i in range(3)] == [b"220 "] * 3
    assert [via_proxy(factory, proxied("203.0.113.2", 2000 + i), 2000 + i) for i in range(2)] == [b"220 ", b"421 "]
    assert [via_proxy(factory, local, 3000 + i) for i in range(2)] == [b"220 ", b"421 "]  # the proxy is not exempt


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["open", "close", "wait"]), st.integers(0, 3), st.floats(0, 30)),
                max_size=60))
def test_connection_limits_model(ops):
    """Random connects, disconnects and waits from 4 addresses against a model of both limits."""
    server, clock = make_server(max_clients_per_ip=2, max_connect_rate=4)
    open_: dict = {i: [] for i in range(4)}
    window: dict = {}
    for op, i, dt in ops:
        if op == "wait":
            clock.advance(dt)
            continue
        if op == "close":
            if open_[i]:
                open_[i].pop().disconnect()
            continue
        now = clock.seconds()
        start, count = window.get(i, (None, 0))
        if start is None or now >= start + 60:
            start, count = now, 0
        count += 1
        window[i] = (start, count)
        c = TestClient(server, peer(i))
        admitted = count <= 4 and len(open_[i]) < 2
        assert (c.greeting.code == 220) == admitted, (op, i, count, len(open_[i]))
        if admitted:
            open_[i].append(c)
        else:
            c.disconnect()
    guard = server._context.guard
    for i in range(4):
        assert guard.connections.open_connections(f"198.51.100.{i}") == len(open_[i])
