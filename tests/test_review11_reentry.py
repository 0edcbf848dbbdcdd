"""
Review of issue 11: observers run synchronously inside the dialogue (the
connection passes the server's notify to it). An observer that closes the
server (a test sink that stops after its first message, an operator's
"drain now" on some event) re-enters the dialogue while it is in the middle
of a command: the dialogue must not undo the close and go on reading.
"""

from __future__ import annotations

from typing import Any, List

from txsmtpsrv.testing import TestClient, make_server, parse_replies


class Recorder:
    def __init__(self) -> None:
        self.mail: List[str] = []

    def on_mail_from(self, session: Any, address: Any) -> None:
        self.mail.append(address.address)


def test_close_from_message_observer_stops_reading():
    """server.close() from a "message" observer: 421 once, no later command runs."""
    hooks = Recorder()
    server, _ = make_server(hooks)
    server.observe("message", lambda *a: server.close())
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\n"
                b"MAIL FROM:<after@x.test>\r\nRCPT TO:<b@y.test>\r\nNOOP\r\n")
    replies, rest = parse_replies(client.transport.value())
    assert [r.code for r in replies] == [250, 250, 354, 250, 421] and rest == b""
    assert hooks.mail == ["a@x.test"]  # the pipelined MAIL after the 421 never ran
    assert client.protocol.core.finished


def test_close_from_command_observer():
    """server.close() from a "command" observer while idle: 421 once, the command is not run, no crash."""
    hooks = Recorder()
    server, _ = make_server(hooks)
    fired: List[str] = []

    def on_command(session: Any, verb: str, arg: str) -> None:
        if verb == "MAIL" and not fired:
            fired.append(verb)
            server.close()

    server.observe("command", on_command)
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\nNOOP\r\n")
    replies, rest = parse_replies(client.transport.value())
    assert [r.code for r in replies] == [421] and rest == b""
    assert hooks.mail == []
    assert client.transport.disconnecting


def test_close_from_connect_observer():
    """server.close() from a "connect" observer: 421 only (no 220 after it), and nothing read afterwards."""
    hooks = Recorder()
    server, _ = make_server(hooks)
    server.observe("connect", lambda *a: server.close())
    client = TestClient(server, greeting=False)
    replies, rest = parse_replies(client.transport.value())
    assert [r.code for r in replies] == [421] and rest == b""
    assert client.protocol.core.finished
    client.transport.clear()
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")  # already in flight
    assert hooks.mail == [] and client.transport.value() == b""


def test_close_from_tls_observer_asks_no_hook():
    """server.close() from a "tls" observer: 421, and on_secure is not asked for a closed session."""
    asked: List[Any] = []

    class Hooks:
        def on_secure(self, session: Any) -> None:
            asked.append(session)

    server, _ = make_server(Hooks())
    server.observe("tls", lambda *a: server.close())
    client = TestClient(server, tls="starttls")
    client.ehlo()
    assert client.starttls().code == 220
    replies, _ = parse_replies(client.transport.value())
    assert [r.code for r in replies] == [421]
    assert asked == [] and client.protocol.core.finished


def test_force_close_from_reply_observer_at_354():
    """
    force_close() from a "reply" observer while DATA queues its 354: the
    handler then still set its next phase (DATA), which used to revive the
    dialogue: the body and the next command were read after the 421.
    """
    hooks = Recorder()
    server, _ = make_server(hooks)
    client = TestClient(server)
    client.ehlo()

    def on_reply(session: Any, verb: str, code: int, enhanced: Any, text: str) -> None:
        if code == 354:
            client.protocol.force_close()

    server.observe("reply", on_reply)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<c@x.test>\r\n")
    replies, rest = parse_replies(client.transport.value())
    assert [r.code for r in replies] == [250, 250, 421] and rest == b""
    assert client.protocol.core.finished and hooks.mail == ["a@x.test"]
