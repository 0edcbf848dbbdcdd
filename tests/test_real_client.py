# -*- test-case-name: tests.test_real_client -*-
"""
Knowing the real client, at the SMTP level and in memory: reverse DNS before
the greeting, C{ignored_hosts}, Postfix's XCLIENT and XFORWARD, and the PROXY
v1/v2 wrapper in front of L{txsmtpsrv.SMTPServer}.

Everything runs on a L{Clock} and L{StringTransport}s (through
L{txsmtpsrv.testing}); reverse lookups are answered by L{FakeResolver}.
What is checked is what a client sees on the wire and what the hooks see in
the session.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from typing import Any, Dict, List

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from txsmtpsrv._proxy import PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID, V2_SIGNATURE, ProxyInfo, ProxyWrappingFactory
from txsmtpsrv.testing import FakeResolver, TestClient, make_server, parse_replies

XCLIENT_EXT = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"
XFORWARD_EXT = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
BODY = b"Subject: t\r\n\r\nhello\r\n"


# ---------------------------------------------------------------------------
# helpers


class Recorder:
    """Hooks that snapshot what they see of the session and accept everything."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []

    def _snap(self, hook: str, s: Any) -> None:
        self.seen.append((hook, {
            "remote_address": s.remote_address, "remote_port": s.remote_port,
            "local_address": s.local_address, "local_port": s.local_port,
            "client_hostname": s.client_hostname, "helo": s.host_name_appears_as,
            "user": s.user, "proxy": s.proxy, "xforward": dict(s.xforward), "xclient": dict(s.xclient),
        }))

    def on_connect(self, session: Any) -> None:
        self._snap("connect", session)

    def on_helo(self, session: Any, hostname: str) -> None:
        self._snap("helo", session)

    def on_mail_from(self, session: Any, address: Any) -> None:
        self._snap("mail", session)

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.content()
        self._snap("data", session)

    def on_close(self, session: Any) -> None:
        self._snap("close", session)

    def get(self, hook: str) -> List[Dict[str, Any]]:
        """The snapshots taken by C{hook}, in order."""
        return [snap for name, snap in self.seen if name == hook]


def ehlo_lines(client: TestClient, name: str = "client.test") -> List[str]:
    """EHLO that must succeed; its reply lines."""
    reply = client.command(f"EHLO {name}")
    assert reply.code == 250, reply
    return list(reply.lines)


def transaction(client: TestClient) -> None:
    """MAIL, RCPT, DATA, all accepted (EHLO must have been sent)."""
    for line in ("MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>"):
        reply = client.command(line)
        assert reply.code == 250, reply
    reply = client.command("DATA")
    assert reply.code == 354, reply
    client.send(BODY + b".\r\n")
    (reply,) = client.replies()
    assert reply.code == 250, reply


def conn_events(events: List[dict]) -> List[str]:
    """The connection-open/close log formats among C{events}."""
    return [e["log_format"] for e in events
            if e.get("log_format", "").startswith(("connection from", "connection closed"))]


def tlv(kind: int, value: bytes) -> bytes:
    """One PROXY v2 TLV."""
    return bytes([kind]) + struct.pack("!H", len(value)) + value


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


# ---------------------------------------------------------------------------
# XCLIENT


def forwarding_client(option: str, hooks: Any = None, peer: str = "192.0.2.10", **options: Any) -> TestClient:
    """A greeted client on a server with C{option} on, trusting 192.0.2.0/24 unless told otherwise."""
    options.setdefault(option, True)
    options.setdefault("xclient_trusted", ["192.0.2.0/24"])
    server, _ = make_server(hooks, **options)
    client = TestClient(server, peer=(peer, 40000))
    assert client.greeting.code == 220
    return client


xclient_client = functools.partial(forwarding_client, "use_xclient")
xforward_client = functools.partial(forwarding_client, "use_xforward")


def test_xclient_off_by_default():
    """XCLIENT is off by default (502 5.5.1) even from a trusted (loopback) peer, and not advertised."""
    server, _ = make_server(None)
    client = TestClient(server, peer=("127.0.0.1", 40000))
    assert not any(line.startswith("XCLIENT") for line in ehlo_lines(client))
    reply = client.command("XCLIENT ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (502, "5.5.1")
    assert client.protocol.session.remote_address == "127.0.0.1"


def test_xclient_untrusted_peer():
    """XCLIENT on, peer not in xclient_trusted: not advertised, 550 5.7.0, session unchanged."""
    client = xclient_client(peer="198.51.100.7")
    assert not any(line.startswith("XCLIENT") for line in ehlo_lines(client))
    reply = client.command("XCLIENT ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (550, "5.7.0")
    assert client.protocol.session.remote_address == "198.51.100.7"


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "192.0.2.10"])
@pytest.mark.parametrize("command", ["XCLIENT ADDR=203.0.113.9 LOGIN=admin", "XFORWARD ADDR=203.0.113.9"])
def test_x_commands_trust_nobody_by_default(peer, command):
    """Issue 10: without xclient_trusted no peer, not even loopback, sees or may use XCLIENT/XFORWARD."""
    server, _ = make_server(None, use_xclient=True, use_xforward=True)
    client = TestClient(server, peer=(peer, 40000))
    lines = ehlo_lines(client)
    assert not any(line.startswith(("XCLIENT", "XFORWARD")) for line in lines)
    reply = client.command(command)
    assert (reply.code, reply.enhanced) == (550, "5.7.0")
    s = client.protocol.session
    assert s.user is None and s.remote_address == peer and s.xforward == {}


def test_x_commands_without_trusted_networks_warn():
    """Turning XCLIENT on without naming networks logs why every peer will be refused."""
    with capturedLogs() as events:
        make_server(None, use_xclient=True)
    assert any("xclient_trusted names no network" in e.get("log_format", "") for e in events)
    with capturedLogs() as events:
        make_server(None, use_xclient=True, xclient_trusted="10.0.0.0/8")
    assert not any("xclient_trusted" in e.get("log_format", "") for e in events)


def test_xclient_trusted_loopback_named():
    """Naming loopback trusts it, including a dual-stack listener's ::ffff:127.0.0.1 peer."""
    server, _ = make_server(None, use_xclient=True, xclient_trusted="127.0.0.0/8, ::1")
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        client = TestClient(server, peer=(peer, 40000))
        assert XCLIENT_EXT in ehlo_lines(client)
        assert client.command("XCLIENT ADDR=203.0.113.9").code == 220


def test_xclient_advertised_to_trusted_peer():
    """A trusted peer sees XCLIENT with its attribute list in EHLO (and not XFORWARD unless enabled)."""
    lines = ehlo_lines(xclient_client())
    assert XCLIENT_EXT in lines
    assert not any(line.startswith("XFORWARD") for line in lines)


def test_xclient_updates_session_and_restarts():
    """XCLIENT sets address, port, name, HELO, login and destination; replies with a fresh 220; EHLO needed again."""
    hooks = Recorder()
    client = xclient_client(hooks)
    ehlo_lines(client)
    reply = client.command("XCLIENT ADDR=203.0.113.9 PORT=51234 NAME=real.example.test HELO=real-helo.test "
                           "LOGIN=alice DESTADDR=198.51.100.25 DESTPORT=587")
    assert reply.code == 220
    assert reply.text == "mx.test ESMTP"
    s = client.protocol.session
    assert (s.remote_address, s.remote_port) == ("203.0.113.9", 51234)
    assert (s.local_address, s.local_port) == ("198.51.100.25", 587)
    assert s.client_hostname == "real.example.test"
    assert s.host_name_appears_as == "real-helo.test"
    assert s.user == "alice"
    assert s.opening_command == ""
    assert s.xclient["ADDR"] == "203.0.113.9" and s.xclient["LOGIN"] == "alice"
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced) == (503, "5.5.1")
    assert ehlo_lines(client)[0] == "mx.test Nice to meet you, real.example.test"
    transaction(client)
    for hook in ("helo", "mail", "data"):
        snap = hooks.get(hook)[-1]
        assert (snap["remote_address"], snap["remote_port"]) == ("203.0.113.9", 51234), hook
        assert snap["client_hostname"] == "real.example.test", hook


def test_xclient_addr_only_gives_literal():
    """XCLIENT ADDR alone: the client_hostname becomes the new address literal (no stale PTR name)."""
    client = xclient_client(resolver=FakeResolver({"192.0.2.10": "proxy.example.test"}),
                            disable_reverse_lookup=False)
    assert client.protocol.session.client_hostname == "proxy.example.test"
    assert client.command("XCLIENT ADDR=203.0.113.9").code == 220
    s = client.protocol.session
    assert s.client_hostname == "[203.0.113.9]"
    assert s.remote_port == 40000  # not given: unchanged


@pytest.mark.parametrize("special", ["[UNAVAILABLE]", "[TEMPUNAVAIL]"])
def test_xclient_unavailable_name(special):
    """NAME=[UNAVAILABLE] or [TEMPUNAVAIL]: client_hostname is the address literal."""
    client = xclient_client()
    assert client.command(f"XCLIENT ADDR=203.0.113.9 NAME={special}").code == 220
    s = client.protocol.session
    assert s.client_hostname == "[203.0.113.9]"
    assert s.xclient["NAME"] == special


def test_xclient_ipv6_addr():
    """XCLIENT ADDR=IPV6:... sets an IPv6 remote address shown as [IPv6:...]."""
    client = xclient_client()
    assert client.command("XCLIENT ADDR=IPV6:2001:DB8::9 NAME=[UNAVAILABLE]").code == 220
    s = client.protocol.session
    assert s.remote_address == "2001:db8::9"
    assert s.client_hostname == "[IPv6:2001:db8::9]"


@pytest.mark.parametrize("args", ["FOO=bar", "ADDR=999.1.1.1", "PORT=70000", "NAME=bad_name!", "", "ADDR",
                                  "PROTO=LMTP", "HELO=[TEMPUNAVAIL]"])
def test_xclient_bad_attribute(args):
    """A bad XCLIENT attribute or value gets 501 5.5.4 and changes nothing."""
    client = xclient_client()
    reply = client.command(f"XCLIENT {args}".rstrip())
    assert (reply.code, reply.enhanced) == (501, "5.5.4")
    s = client.protocol.session
    assert (s.remote_address, s.client_hostname, s.xclient) == ("192.0.2.10", "[192.0.2.10]", {})
    assert client.command("XCLIENT ADDR=203.0.113.9").code == 220  # still trusted after the error


def test_xclient_during_transaction():
    """XCLIENT inside a mail transaction: 503 5.5.1; the transaction goes on."""
    client = xclient_client()
    ehlo_lines(client)
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    reply = client.command("XCLIENT ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (503, "5.5.1")
    assert client.protocol.session.remote_address == "192.0.2.10"
    assert client.command("RCPT TO:<b@y.test>").code == 250


def test_xclient_client_is_no_longer_trusted():
    """After XCLIENT the new client is not trusted: a second XCLIENT gets 550, EHLO hides XCLIENT."""
    client = xclient_client(use_xforward=True)
    assert client.command("XCLIENT ADDR=203.0.113.9").code == 220
    lines = ehlo_lines(client)
    assert not any(line.startswith(("XCLIENT", "XFORWARD")) for line in lines)
    reply = client.command("XCLIENT ADDR=192.0.2.99")
    assert (reply.code, reply.enhanced) == (550, "5.7.0")
    reply = client.command("XFORWARD ADDR=192.0.2.99")
    assert (reply.code, reply.enhanced) == (550, "5.7.0")
    assert client.protocol.session.remote_address == "203.0.113.9"


def test_xclient_login_satisfies_required_auth():
    """XCLIENT LOGIN=user counts as authenticated: MAIL works on a server that requires AUTH."""
    class AuthHooks(Recorder):
        def on_auth(self, session: Any, credentials: Any) -> None:
            return None  # nobody can log in with AUTH itself

    hooks = AuthHooks()
    client = xclient_client(hooks)
    ehlo_lines(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced) == (530, "5.7.0")
    assert client.command("XCLIENT LOGIN=alice").code == 220
    ehlo_lines(client)
    transaction(client)
    assert hooks.get("data")[0]["user"] == "alice"
    assert hooks.get("data")[0]["remote_address"] == "192.0.2.10"


# ---------------------------------------------------------------------------
# XFORWARD


def test_xforward_off_by_default():
    """XFORWARD is off by default: 502 5.5.1, not advertised."""
    server, _ = make_server(None)
    client = TestClient(server, peer=("127.0.0.1", 40000))
    assert not any(line.startswith("XFORWARD") for line in ehlo_lines(client))
    reply = client.command("XFORWARD ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (502, "5.5.1")


def test_xforward_untrusted_peer():
    """XFORWARD on, untrusted peer: not advertised, 550 5.7.0, nothing recorded."""
    client = xforward_client(peer="198.51.100.7")
    assert not any(line.startswith("XFORWARD") for line in ehlo_lines(client))
    reply = client.command("XFORWARD ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (550, "5.7.0")
    assert client.protocol.session.xforward == {}


def test_xforward_recorded_for_one_transaction():
    """
    XFORWARD attributes reach on_data in session.xforward, ADDR/NAME also in remote_address and
    client_hostname (issue 10); all of it ends with the transaction.
    """
    hooks = Recorder()
    client = xforward_client(hooks)
    lines = ehlo_lines(client)
    assert XFORWARD_EXT in lines and not any(line.startswith("XCLIENT") for line in lines)
    reply = client.command("XFORWARD ADDR=203.0.113.9 PORT=51234 NAME=orig.example.test")
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    reply = client.command("XFORWARD HELO=orig-helo.test PROTO=ESMTP SOURCE=remote IDENT=q123 "
                           "NAME=[UNAVAILABLE]")
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    transaction(client)
    (snap,) = hooks.get("data")
    assert snap["xforward"] == {"ADDR": "203.0.113.9", "PORT": "51234", "NAME": "[UNAVAILABLE]",
                                "HELO": "orig-helo.test", "PROTO": "ESMTP", "SOURCE": "REMOTE", "IDENT": "q123"}
    # The second XFORWARD's NAME=[UNAVAILABLE] overrides the first: the address literal stands in.
    assert (snap["remote_address"], snap["client_hostname"]) == ("203.0.113.9", "[203.0.113.9]")
    assert hooks.get("mail")[-1]["remote_address"] == "203.0.113.9"
    s = client.protocol.session
    assert s.xforward == {}
    assert (s.remote_address, s.client_hostname) == ("192.0.2.10", "[192.0.2.10]")
    transaction(client)
    assert hooks.get("data")[1]["xforward"] == {}
    assert hooks.get("data")[1]["remote_address"] == "192.0.2.10"


def test_xforward_name_and_addr():
    """XFORWARD NAME and ADDR become client_hostname and remote_address; RSET gives the proxy's back."""
    client = xforward_client()
    ehlo_lines(client)
    assert client.command("XFORWARD ADDR=IPV6:2001:db8::9 NAME=orig.example.test").code == 250
    s = client.protocol.session
    assert (s.remote_address, s.client_hostname) == ("2001:db8::9", "orig.example.test")
    assert client.command("XFORWARD PROTO=SMTP").code == 250  # ADDR/NAME not given: kept
    assert (s.remote_address, s.client_hostname) == ("2001:db8::9", "orig.example.test")
    assert client.command("RSET").code == 250
    assert (s.remote_address, s.client_hostname) == ("192.0.2.10", "[192.0.2.10]")


def test_xforward_cleared_by_rset():
    """RSET of a transaction also ends what XFORWARD described."""
    client = xforward_client()
    ehlo_lines(client)
    assert client.command("XFORWARD ADDR=203.0.113.9").code == 250
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    assert client.protocol.session.xforward == {"ADDR": "203.0.113.9"}
    assert client.command("RSET").code == 250
    assert client.protocol.session.xforward == {}


def test_xforward_restored_by_ehlo_and_undone_before_xclient():
    """
    EHLO ends the transaction XFORWARD described (the proxy's identity is
    back, on a session that already keeps other per-connection extras); an
    XCLIENT after XFORWARD sets its own client, not one restored over it.
    """
    client = xforward_client(use_xclient=True)
    s = client.protocol.session
    s.user = "proxy-user"  # the session's extras exist before XFORWARD
    assert client.command("XFORWARD ADDR=203.0.113.9 NAME=orig.example.test").code == 250
    assert (s.remote_address, s.client_hostname) == ("203.0.113.9", "orig.example.test")
    ehlo_lines(client)
    assert (s.remote_address, s.client_hostname, s.xforward) == ("192.0.2.10", "[192.0.2.10]", {})
    assert s.user == "proxy-user"
    assert client.command("XFORWARD ADDR=203.0.113.9").code == 250
    assert client.command("XCLIENT ADDR=198.51.100.20 NAME=real.example.test").code == 220
    assert (s.remote_address, s.client_hostname, s.xforward) == ("198.51.100.20", "real.example.test", {})
    ehlo_lines(client)
    assert client.command("RSET").code == 250
    assert (s.remote_address, s.client_hostname) == ("198.51.100.20", "real.example.test")


def test_session_xforward_begin_and_end():
    """Session's XFORWARD API: the first begin saves the identity, end restores it once; end alone is a no-op."""
    from txsmtpsrv._session import Session

    s = Session("id", "192.0.2.1", 25, "192.0.2.10", 40000)
    s._end_xforward()
    assert s._extra is None  # nothing made for a session that never forwarded
    s._begin_xforward("203.0.113.9", "[203.0.113.9]", {"ADDR": "203.0.113.9"})
    s._begin_xforward("203.0.113.9", "orig.example.test", {"NAME": "orig.example.test"})
    assert s.xforward == {"ADDR": "203.0.113.9", "NAME": "orig.example.test"}
    s._end_xforward()
    assert (s.remote_address, s.client_hostname, s.xforward) == ("192.0.2.10", "[192.0.2.10]", {})
    s.remote_address = "192.0.2.11"
    s._end_xforward()
    assert s.remote_address == "192.0.2.11"  # restored once, not again


@pytest.mark.parametrize("args", ["LOGIN=alice", "ADDR=not-an-ip", "SOURCE=elsewhere", "PORT=65536", ""])
def test_xforward_bad_attribute(args):
    """A bad XFORWARD attribute or value gets 501 5.5.4 and records nothing."""
    client = xforward_client()
    reply = client.command(f"XFORWARD {args}".rstrip())
    assert (reply.code, reply.enhanced) == (501, "5.5.4")
    assert client.protocol.session.xforward == {}


def test_xforward_during_transaction():
    """XFORWARD inside a mail transaction: 503 5.5.1."""
    client = xforward_client()
    ehlo_lines(client)
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    reply = client.command("XFORWARD ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (503, "5.5.1")
    assert client.protocol.session.xforward == {}


def test_xforward_keeps_trust():
    """Unlike XCLIENT, XFORWARD does not change who the client is: it may be sent again."""
    client = xforward_client(use_xclient=True)
    assert client.command("XFORWARD ADDR=203.0.113.9").code == 250
    assert client.command("XFORWARD ADDR=203.0.113.10").code == 250
    assert client.protocol.session.xforward == {"ADDR": "203.0.113.10"}
    assert XCLIENT_EXT in ehlo_lines(client)


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
