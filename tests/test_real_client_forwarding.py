# -*- test-case-name: tests.test_real_client_forwarding -*-
"""
Knowing the real client from what a trusted peer says, at the SMTP level and
in memory: Postfix's XCLIENT (the session becomes the named client) and
XFORWARD (attributes for one transaction), who may use them
(C{xclient_trusted}), what hooks then see, and bad attributes.

Everything runs on a L{Clock} and L{StringTransport}s (through
L{txsmtpsrv.testing}).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from twisted.logger import capturedLogs

from txsmtpsrv.testing import FakeResolver, TestClient, make_server
from tests._real_client import Recorder, ehlo_lines, transaction

XCLIENT_EXT = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"
XFORWARD_EXT = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"


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
