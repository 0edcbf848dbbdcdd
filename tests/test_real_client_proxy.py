# -*- test-case-name: tests.test_real_client_proxy -*-
"""
Knowing the real client behind a load balancer, at the SMTP level and in
memory: the PROXY v1/v2 wrapper in front of L{txsmtpsrv.SMTPServer} (no
greeting before the header, the proxied address in the session and in
reverse DNS, ignored_hosts and XCLIENT trust, the wrapper refusing a peer
or a header, a client leaving early).

Everything runs on a L{Clock} and L{StringTransport}s (through
L{txsmtpsrv.testing}); reverse lookups are answered by L{FakeResolver}.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, List

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from txsmtpsrv._proxy import PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID, V2_SIGNATURE, ProxyInfo, ProxyWrappingFactory
from txsmtpsrv.testing import FakeResolver, make_server, parse_replies
from tests._proxy import tlv
from tests._real_client import BODY, Recorder, conn_events


# ---------------------------------------------------------------------------
# helpers


def v2_header(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"", command: int = 1) -> bytes:
    """A PROXY v2 header (AF_INET or AF_INET6, STREAM) with optional TLVs."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 1 if a.version == 4 else 2
    body = a.packed + b.packed + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, (family << 4) | 1]) + struct.pack("!H", len(body)) + body


V1_HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n"


class ProxiedConnection:
    """One connection through L{ProxyWrappingFactory} into an SMTP server, in memory."""

    def __init__(self, hooks: Any = None, peer: str = "10.0.0.5", trusted: Any = ("10.0.0.0/8",),
                 resolver: Any = None, **options: Any) -> None:
        self.server, self.clock = make_server(hooks, resolver=resolver, **options)
        self.factory = ProxyWrappingFactory(self.server, trusted=trusted, reactor=self.clock, timeout=5)
        cls = IPv6Address if ":" in peer else IPv4Address
        host = "fd00::1" if cls is IPv6Address else "10.0.0.1"
        self.transport = StringTransport(hostAddress=cls("TCP", host, 2525), peerAddress=cls("TCP", peer, 34567))
        self.wrapper = self.factory.buildProtocol(self.transport.getPeer())
        self.wrapper.makeConnection(self.transport)
        self._pending = b""

    def send(self, data: bytes) -> None:
        """Bytes from the proxy."""
        self.wrapper.dataReceived(data)

    def replies(self) -> list:
        """Complete replies written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        replies, self._pending = parse_replies(self._pending + data)
        return replies

    def command(self, line: str) -> Any:
        """One command, one reply."""
        self.send(line.encode() + b"\r\n")
        (reply,) = self.replies()
        return reply

    @property
    def smtp(self) -> Any:
        """The SMTP protocol behind the wrapper (None before the header)."""
        return self.wrapper.wrappedProtocol


# ---------------------------------------------------------------------------
# PROXY wrapper in front of the SMTP server


def test_proxy_no_greeting_before_header():
    """Behind the wrapper the server does not greet (or run on_connect) before the PROXY header."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks)
    assert conn.transport.value() == b""
    assert conn.smtp is None and hooks.get("connect") == [] and conn.server.connections == 0
    conn.send(V1_HEADER[:20])
    assert conn.transport.value() == b"" and hooks.get("connect") == []


def test_proxy_v1_header_gives_real_client():
    """After a v1 header: greeting, the proxied address and port in the session, on_connect sees them."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks)
    conn.send(V1_HEADER)
    (greeting,) = conn.replies()
    assert greeting.code == 220
    s = conn.smtp.session
    assert (s.remote_address, s.remote_port) == ("203.0.113.7", 40000)
    assert (s.local_address, s.local_port) == ("192.0.2.1", 25)
    assert s.client_hostname == "[203.0.113.7]"
    assert isinstance(s.proxy, ProxyInfo)
    assert (s.proxy.version, s.proxy.command, s.proxy.family) == (1, "PROXY", "INET")
    assert (s.proxy.proxy_address, s.proxy.proxy_port) == ("10.0.0.5", 34567)
    snap = hooks.get("connect")[0]
    assert (snap["remote_address"], snap["remote_port"]) == ("203.0.113.7", 40000)
    assert snap["proxy"] is s.proxy
    assert ehlo_lines_proxied(conn)[0] == "mx.test Nice to meet you, [203.0.113.7]"
    transaction_proxied(conn)
    assert hooks.get("data")[0]["remote_address"] == "203.0.113.7"


def ehlo_lines_proxied(conn: ProxiedConnection) -> List[str]:
    """EHLO through the wrapper; its lines."""
    reply = conn.command("EHLO client.test")
    assert reply.code == 250, reply
    return list(reply.lines)


def transaction_proxied(conn: ProxiedConnection) -> None:
    """One accepted message through the wrapper, pipelined."""
    conn.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + BODY + b".\r\n")
    assert [r.code for r in conn.replies()] == [250, 250, 354, 250]


def test_proxy_header_and_commands_in_one_packet():
    """Header, EHLO and QUIT in one read: greeting then replies, in order."""
    conn = ProxiedConnection()
    conn.send(V1_HEADER + b"EHLO client.test\r\nQUIT\r\n")
    assert [r.code for r in conn.replies()] == [220, 250, 221]
    assert conn.transport.disconnecting


def test_proxy_v2_with_tlvs():
    """A v2 header: session.proxy is the v2 ProxyInfo with its TLVs; IPv6 client shown as [IPv6:...]."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks)
    conn.send(v2_header("2001:db8::7", "2001:db8::25", 41000, 25,
                        tlv(PP2_TYPE_UNIQUE_ID, b"conn-42") + tlv(PP2_TYPE_AUTHORITY, b"mx.example.test")))
    (greeting,) = conn.replies()
    assert greeting.code == 220
    s = conn.smtp.session
    assert (s.remote_address, s.remote_port) == ("2001:db8::7", 41000)
    assert s.client_hostname == "[IPv6:2001:db8::7]"
    assert (s.proxy.version, s.proxy.family) == (2, "INET6")
    assert s.proxy.unique_id == b"conn-42"
    assert s.proxy.authority == "mx.example.test"
    assert hooks.get("connect")[0]["proxy"].unique_id == b"conn-42"


def test_proxy_v2_local_keeps_real_peer():
    """A v2 LOCAL header (health check): greeting, the session has the real socket peer."""
    conn = ProxiedConnection()
    conn.send(v2_header("0.0.0.0", "0.0.0.0", 0, 0, command=0))
    assert [r.code for r in conn.replies()] == [220]
    s = conn.smtp.session
    assert s.remote_address == "10.0.0.5"
    assert s.proxy.command == "LOCAL"


def test_proxy_unknown_keeps_real_peer():
    """PROXY UNKNOWN: greeting, the session has the real socket peer and proxy.proxied is False."""
    conn = ProxiedConnection()
    conn.send(b"PROXY UNKNOWN\r\n")
    assert [r.code for r in conn.replies()] == [220]
    s = conn.smtp.session
    assert s.remote_address == "10.0.0.5"
    assert s.proxy.version == 1 and not s.proxy.proxied


def test_proxy_untrusted_peer_closed_without_greeting():
    """A peer outside the wrapper's trusted list is closed: no greeting, no hooks, no SMTP connection."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks, peer="198.51.100.50")
    assert conn.transport.disconnecting
    conn.send(V1_HEADER + b"EHLO x\r\n")
    assert conn.transport.value() == b""
    assert hooks.seen == [] and conn.server.connections == 0


def test_proxy_malformed_header_closed():
    """A trusted peer sending SMTP instead of a header is closed without a greeting."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks)
    conn.send(b"EHLO client.test\r\n")
    assert conn.transport.disconnecting and conn.transport.value() == b""
    assert hooks.seen == []


def test_proxy_header_timeout():
    """No header within the wrapper's timeout: closed, never greeted."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks)
    conn.clock.advance(5)
    assert conn.transport.disconnecting and conn.transport.value() == b""
    assert hooks.seen == []


def test_proxy_reverse_dns_uses_proxied_address():
    """The PTR query is for the proxied client, not the proxy."""
    hooks = Recorder()
    resolver = FakeResolver({"203.0.113.7": "real.example.test", "10.0.0.5": "proxy.example.test"})
    conn = ProxiedConnection(hooks, resolver=resolver)
    conn.send(V1_HEADER)
    assert [r.code for r in conn.replies()] == [220]
    assert resolver.queries == ["7.113.0.203.in-addr.arpa"]
    assert conn.smtp.session.client_hostname == "real.example.test"
    assert hooks.get("connect")[0]["client_hostname"] == "real.example.test"


def test_proxy_hanging_resolver_bounded():
    """Behind the wrapper too, a hanging resolver delays the greeting by exactly reverse_lookup_timeout."""
    conn = ProxiedConnection(resolver=FakeResolver(hang=True))
    conn.send(V1_HEADER)
    conn.clock.advance(1.25)
    assert conn.replies() == []
    conn.clock.advance(0.25)
    assert [r.code for r in conn.replies()] == [220]
    assert conn.smtp.session.client_hostname == "[203.0.113.7]"


@pytest.mark.parametrize("ignored, quiet", [
    (("203.0.113.0/24",), True),  # the proxied client is ignored
    (("10.0.0.0/8",), False),  # the proxy's own address does not silence its clients
])
def test_proxy_ignored_hosts_use_proxied_address(ignored, quiet):
    """ignored_hosts is matched against the proxied client address."""
    with capturedLogs() as events:
        conn = ProxiedConnection(ignored_hosts=ignored)
        conn.send(V1_HEADER + b"QUIT\r\n")
        conn.wrapper.connectionLost(None)
    assert bool(conn_events(events)) is not quiet
    if not quiet:
        assert len(conn_events(events)) == 2


def test_proxy_xclient_trust_uses_proxied_address():
    """xclient_trusted is matched against the proxied client: the proxy's trust is not inherited."""
    conn = ProxiedConnection(use_xclient=True, xclient_trusted=["10.0.0.0/8"])
    conn.send(V1_HEADER)
    conn.replies()
    assert not any(line.startswith("XCLIENT") for line in ehlo_lines_proxied(conn))
    reply = conn.command("XCLIENT ADDR=192.0.2.99")
    assert (reply.code, reply.enhanced) == (550, "5.7.0")
    assert conn.smtp.session.remote_address == "203.0.113.7"


def test_proxy_then_xclient_from_trusted_proxied_client():
    """A proxied client that is itself trusted for XCLIENT (a content filter behind HAProxy) can use it."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks, use_xclient=True, xclient_trusted=["203.0.113.0/24"])
    conn.send(V1_HEADER)
    conn.replies()
    assert conn.command("XCLIENT ADDR=198.51.100.77 NAME=[UNAVAILABLE]").code == 220
    s = conn.smtp.session
    assert s.remote_address == "198.51.100.77" and s.proxy.source_address == "203.0.113.7"
    ehlo_lines_proxied(conn)
    transaction_proxied(conn)
    assert hooks.get("mail")[0]["remote_address"] == "198.51.100.77"


def test_proxy_disconnect_before_header():
    """The proxy leaving before the header: no SMTP protocol is built, no on_close."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks)
    conn.send(V1_HEADER[:10])
    conn.wrapper.connectionLost(None)
    conn.clock.advance(10)
    assert hooks.seen == [] and conn.server.connections == 0
    assert conn.clock.getDelayedCalls() == []


def test_proxy_disconnect_during_lookup():
    """The client leaving during the reverse lookup behind the wrapper: no greeting, one on_close."""
    hooks = Recorder()
    conn = ProxiedConnection(hooks, resolver=FakeResolver(hang=True))
    conn.send(V1_HEADER)
    conn.wrapper.connectionLost(None)
    conn.clock.advance(10)
    assert conn.transport.value() == b""
    assert [name for name, _ in hooks.seen] == ["close"]
    assert conn.server.connections == 0
