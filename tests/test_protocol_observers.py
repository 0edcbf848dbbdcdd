# -*- test-case-name: tests.test_protocol_observers -*-
"""
Tests for L{txsmtpsrv._protocol}: what watches the dialogue without taking
part, in memory through L{txsmtpsrv.testing}: the server's observers (their
arguments, order, failures, unsubscribing) and the session and addresses as
hooks see them.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from txsmtpsrv import Address
from txsmtpsrv.testing import TestClient, make_server
from tests._memory import Rejector, codes, ehlo


# -- observers ----------------------------------------------------------------------------------


def test_observers_called_with_the_right_arguments():
    """Each observer event is called with its documented arguments."""
    server, _ = make_server()
    seen: list = []
    for event in ("connect", "disconnect", "command", "helo", "mail", "rcpt", "message"):
        server.observe(event, lambda *args, event=event: seen.append((event,) + args))
    client = TestClient(server)
    session = client.protocol.session
    client.sendmail("a@x.test", ["b@y.test"], b"12345")
    client.disconnect()
    assert seen[0] == ("connect", session)
    commands = [s[3] for s in seen if s[0] == "command"]
    assert commands == ["client.test", "FROM:<a@x.test>", "TO:<b@y.test>", ""]
    assert all(s[1] is session for s in seen)
    assert ("helo", session, "client.test") in seen
    assert ("mail", session, Address("a@x.test")) in seen
    assert ("rcpt", session, Address("b@y.test")) in seen
    message = [s for s in seen if s[0] == "message"]
    assert len(message) == 1
    _, msession, envelope, size = message[0]
    assert msession is session and size == 7  # b"12345\r\n"
    assert envelope.mail_from == Address("a@x.test") and envelope.rcpt_to == [Address("b@y.test")]
    assert seen[-1] == ("disconnect", session)
    order = [s[0] for s in seen]
    assert order == ["connect", "command", "helo", "command", "mail", "command", "rcpt", "command", "message",
                     "disconnect"]


def test_command_observer_gets_the_verb():
    """The command observer gets the upper-case verb and the argument."""
    server, _ = make_server()
    seen: list = []
    server.observe("command", lambda session, verb, arg: seen.append((verb, arg)))
    client = TestClient(server)
    client.command("ehlo client.test")
    client.command("NOOP")
    assert seen == [("EHLO", "client.test"), ("NOOP", "")]


def test_observers_not_called_on_rejection():
    """mail/rcpt/message observers are not called for rejected steps."""
    server, _ = make_server(Rejector())
    seen: list = []
    for event in ("rcpt", "message"):
        server.observe(event, lambda *args, event=event: seen.append(event))
    client = TestClient(server)
    client.sendmail("a@x.test", ["no@y.test", "reply@y.test"], b"x")
    assert seen == ["rcpt"]


def test_raising_observer_does_not_disturb_dialogue():
    """An observer that raises is logged and the client sees nothing unusual."""
    server, _ = make_server()

    def bad(*args):
        raise RuntimeError("observer bug")

    for event in ("connect", "command", "helo", "mail", "rcpt", "message", "disconnect"):
        server.observe(event, bad)
    with capturedLogs() as events:
        client = TestClient(server)
        replies = client.sendmail("a@x.test", ["b@y.test"], b"x")
        client.disconnect()
    assert client.greeting.code == 220
    assert codes(replies)[-1] == (250, "2.0.0")
    assert sum(1 for e in events if e.get("log_failure") is not None and e["log_failure"].check(RuntimeError)) == 10


def test_observer_failing_deferred_is_logged():
    """An observer returning a failing Deferred is logged, not left unhandled."""
    server, _ = make_server()
    d: Deferred = Deferred()
    server.observe("connect", lambda s: d)
    client = TestClient(server)
    with capturedLogs() as events:
        d.errback(RuntimeError("late"))
    assert client.greeting.code == 220
    assert any(e.get("log_failure") is not None for e in events)


def test_observe_unknown_event():
    """observe() with an unknown event is ValueError."""
    server, _ = make_server()
    with pytest.raises(ValueError, match="bogus"):
        server.observe("bogus", print)


def test_observe_unsubscribe():
    """The function observe() returns removes the observer."""
    server, _ = make_server()
    seen: list = []
    stop = server.observe("command", lambda *a: seen.append(a[2]))
    client = TestClient(server)
    client.command("NOOP first")
    stop()
    client.command("NOOP second")
    assert seen == ["first"]


# -- session and address ---------------------------------------------------------------------------


def test_session_fields():
    """The session carries ids, addresses, ports and the client host name."""
    server, _ = make_server()
    a = TestClient(server, peer=("198.51.100.7", 5555), host=("203.0.113.1", 587))
    b = TestClient(server)
    s = a.protocol.session
    assert s.id != b.protocol.session.id and s.id
    assert (s.remote_address, s.remote_port, s.local_address, s.local_port) == ("198.51.100.7", 5555,
                                                                                "203.0.113.1", 587)
    assert s.client_hostname == "[198.51.100.7]"
    assert (s.host_name_appears_as, s.opening_command, s.transaction) == ("", "", 0)
    assert s.secure is False and s.user is None


def test_session_ipv6_peer():
    """An IPv6 peer's address is recorded in the session."""
    server, _ = make_server()
    client = TestClient(server, peer=("2001:db8::5", 1234), host=("2001:db8::1", 25))
    s = client.protocol.session
    assert (s.remote_address, s.remote_port, s.local_address) == ("2001:db8::5", 1234, "2001:db8::1")
    assert s.client_hostname == "[IPv6:2001:db8::5]"
    assert client.greeting.code == 220


def test_session_tracks_helo_and_transactions():
    """HELO/EHLO set host_name_appears_as and opening_command; each accepted MAIL counts a transaction."""
    server, _ = make_server()
    client = TestClient(server)
    s = client.protocol.session
    client.command("HELO first.test")
    assert (s.host_name_appears_as, s.opening_command, s.transmission_type) == ("first.test", "HELO", "SMTP")
    client.command("EHLO second.test")
    assert (s.host_name_appears_as, s.opening_command, s.transmission_type) == ("second.test", "EHLO", "ESMTP")
    client.command("MAIL FROM:<a@x.test>")
    assert s.transaction == 1
    client.command("RSET")
    client.command("MAIL FROM:<a b>")
    assert s.transaction == 1
    client.command("MAIL FROM:<a@x.test> SMTPUTF8")
    assert s.transaction == 2
    assert s.transmission_type == "UTF8SMTP"
    client.command("RSET")
    assert s.transmission_type == "ESMTP"


def test_address_parts():
    """Address splits at the last @ and knows whether it needs SMTPUTF8."""
    a = Address('"odd@local"@example.test', {"SIZE": "1"})
    assert (a.local_part, a.domain, a.params, a.utf8) == ('"odd@local"', "example.test", {"SIZE": "1"}, False)
    assert str(a) == '"odd@local"@example.test'
    assert (Address("").local_part, Address("").domain) == ("", "")
    assert (Address("postmaster").local_part, Address("postmaster").domain) == ("postmaster", "")
    assert Address("jörg@x.test").utf8
    assert Address("a@x.test", {"A": "1"}) == Address("a@x.test", {"A": "1"})


def test_command_observer_never_sees_auth_initial_response():
    """The command observer sees only the mechanism of AUTH, never the initial response."""
    import base64

    class H:
        def on_auth(self, session, credentials):
            return "user"

    server, _ = make_server(H(), allow_insecure_auth=True)
    seen: list = []
    server.observe("command", lambda session, verb, arg: seen.append(arg))
    client = TestClient(server)
    ehlo(client)
    secret = base64.b64encode(b"\0user\0hunter2").decode()
    client.command(f"AUTH PLAIN {secret}")
    assert secret not in " ".join(seen)
