"""
Tests for the limits that protect the server: max_clients, socket_timeout,
min_data_rate, hook waits, line length and unrecognized commands.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import Deferred

from txsmtpsrv.testing import TestClient, make_server



# -- max_clients ------------------------------------------------------------------


def test_max_clients_refuses_extra_client():
    """The client over max_clients gets 421 4.7.0 and is closed; the others are served."""
    server, _ = make_server(max_clients=2)
    a, b = TestClient(server), TestClient(server)
    assert a.greeting.code == 220 and b.greeting.code == 220
    c = TestClient(server)
    assert (c.greeting.code, c.greeting.enhanced) == (421, "4.7.0")
    assert c.greeting.text.startswith("mx.test ")
    assert c.closed
    assert server.connections == 2
    assert a.command("NOOP").code == 250


def test_max_clients_frees_slot_on_disconnect():
    """A slot freed by a disconnect is given to the next client."""
    server, _ = make_server(max_clients=1)
    a = TestClient(server)
    assert TestClient(server).greeting.code == 421
    a.disconnect()
    assert server.connections == 0
    assert TestClient(server).greeting.code == 220


def test_max_clients_reply_without_enhanced_codes():
    """With hide_enhancedstatuscodes the 421 to an extra client has no enhanced code."""
    server, _ = make_server(max_clients=1, hide_enhancedstatuscodes=True)
    TestClient(server)
    extra = TestClient(server, greeting=False)
    assert extra.read() == b"421 mx.test Too many connected clients, try again in a moment\r\n"


# -- socket_timeout ------------------------------------------------------------------


def test_idle_timeout():
    """An idle client gets 421 4.4.2 after socket_timeout and is closed."""
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    clock.advance(29.9)
    assert client.read() == b"" and not client.closed
    clock.advance(0.1)
    assert client.codes() == [(421, "4.4.2")]
    assert client.closed


def test_activity_resets_timeout():
    """Each command gives the client a fresh socket_timeout."""
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    for _ in range(5):
        clock.advance(20)
        assert client.command("NOOP").code == 250
    clock.advance(29)
    assert not client.closed
    clock.advance(1)
    assert client.closed


def test_timeout_during_data():
    """A client that stops sending mid-DATA times out; the reader is told and nothing is accepted."""
    failures: List[Any] = []

    class H:
        async def on_data(self, session, stream):
            try:
                await stream.content()
            except Exception as e:
                failures.append(e)
                raise

    server, clock = make_server(H(), socket_timeout=30)
    messages: list = []
    server.observe("message", lambda *a: messages.append(a))
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\npartial\r\n")
    client.replies()
    clock.advance(30)
    assert client.codes() == [(421, "4.4.2")]
    assert client.closed and len(failures) == 1 and messages == []


def test_trickling_client_is_bounded():
    """A client trickling one byte every 50 s cannot keep a connection past the per-command bound."""
    server, clock = make_server(socket_timeout=60, min_data_rate=500)
    client = TestClient(server)
    line = b"MAIL FROM:<someone@example.test>\r\n"
    start = clock.seconds()
    for byte in line:
        if client.closed:
            break
        client.send(bytes([byte]))
        clock.advance(50)
    assert client.closed
    assert clock.seconds() - start <= 60 + 50
    assert (421, "4.4.2") in client.codes()


def test_trickling_during_data_is_bounded():
    """Trickling a message body one byte every 50 s is cut off too."""
    server, clock = make_server(socket_timeout=60, min_data_rate=500)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    client.replies()
    sent = 0
    while not client.closed and sent < 100:
        client.send(b"x")
        sent += 1
        clock.advance(50)
    assert client.closed and sent <= 3
    assert client.codes() == [(421, "4.4.2")]


def test_min_data_rate_zero_disables_byte_bound():
    """With min_data_rate=0 a command finished within socket_timeout of its first byte is answered."""
    server, clock = make_server(socket_timeout=60, min_data_rate=0)
    client = TestClient(server)
    client.send(b"NO")
    clock.advance(59)
    client.send(b"OP\r\n")
    assert client.codes() == [(250, "2.0.0")]


def test_slow_hook_never_times_client_out():
    """Waiting on a slow hook never times the client out; the clock starts again when it answers."""
    gate: List[Deferred] = []

    class H:
        def on_mail_from(self, session, address):
            gate.append(Deferred())
            return gate[-1]

    server, clock = make_server(H(), socket_timeout=30, hook_timeout=10_000)
    client = TestClient(server)
    client.command("EHLO c.test")
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    for _ in range(20):
        clock.advance(100)
    assert not client.closed and client.read() == b""
    gate[0].callback(None)
    assert client.codes() == [(250, "2.1.0")]
    clock.advance(29)
    assert not client.closed
    clock.advance(1)
    assert client.codes() == [(421, "4.4.2")]


def test_slow_reader_never_times_client_out():
    """A body reader holding the stream paused never times the client out."""
    gates: List[Deferred] = []

    class H:
        async def on_data(self, session, stream):
            await stream.collect(lambda chunk: gates.append(Deferred()) or gates[-1])

    server, clock = make_server(H(), socket_timeout=30, hook_timeout=10_000)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nbody\r\n.\r\n")
    client.replies()
    clock.advance(1000)
    assert not client.closed
    while gates and not gates[-1].called:
        gates[-1].callback(None)
    assert client.codes() == [(250, "2.0.0")]


# -- line length ----------------------------------------------------------------------


def test_line_too_long_then_next_command():
    """A line over max_command_length is 500 5.5.2 and the next pipelined command is still answered."""
    server, _ = make_server(max_command_length=1000)
    client = TestClient(server)
    client.send(b"NOOP " + b"x" * 2000 + b"\r\nHELP\r\n")
    assert client.codes() == [(500, "5.5.2"), (214, "2.0.0")]


def test_line_too_long_in_several_reads():
    """A long line arriving in several reads is answered once with 500 5.5.2; the next command still works."""
    server, _ = make_server(max_command_length=1000)
    client = TestClient(server)
    client.send(b"MAIL FROM:<" + b"a" * 600)
    assert client.read() == b""
    client.send(b"a" * 600)
    client.send(b"a" * 600)
    client.send(b"@x.test>\r\nNOOP\r\n")
    assert client.codes() == [(500, "5.5.2"), (250, "2.0.0")]


def test_line_at_limit_accepted():
    """A command of max_command_length octets including CRLF is accepted."""
    server, _ = make_server(max_command_length=600)
    client = TestClient(server)
    line = b"NOOP " + b"x" * (600 - 7) + b"\r\n"
    assert len(line) == 600
    client.send(line)
    assert client.codes() == [(250, "2.0.0")]


def test_default_line_limit():
    """The default limit accepts a 4000-octet command line."""
    server, _ = make_server()
    client = TestClient(server)
    client.send(b"NOOP " + b"x" * 4000 + b"\r\n")
    assert client.codes() == [(250, "2.0.0")]


# -- unrecognized commands ---------------------------------------------------------------


def test_max_unrecognized_commands():
    """After max_unrecognized_commands bad commands the client gets 421 4.7.0 and is closed."""
    server, _ = make_server(max_unrecognized_commands=3)
    client = TestClient(server)
    client.send(b"FOO\r\n\r\nBAR\r\nNOOP\r\n")
    assert client.codes() == [(500, "5.5.2"), (500, "5.5.2"), (500, "5.5.2"), (421, "4.7.0")]
    assert client.closed


def test_long_lines_count_as_unrecognized():
    """Over-long lines count towards max_unrecognized_commands."""
    server, _ = make_server(max_unrecognized_commands=2, max_command_length=512)
    client = TestClient(server)
    client.send(b"x" * 600 + b"\r\n" + b"y" * 600 + b"\r\nNOOP\r\n")
    assert client.codes() == [(500, "5.5.2"), (500, "5.5.2"), (421, "4.7.0")]
    assert client.closed


def test_unrecognized_limit_zero_is_unlimited():
    """max_unrecognized_commands=0 never closes for bad commands."""
    server, _ = make_server(max_unrecognized_commands=0)
    client = TestClient(server)
    client.send(b"FOO\r\n" * 50 + b"NOOP\r\n")
    replies = client.replies()
    assert len(replies) == 51 and replies[-1].code == 250 and not client.closed


@pytest.mark.parametrize("last", [b"QUIT\r\n", b"FOO\r\nFOO\r\n"])
def test_no_timeout_reply_after_closing_reply(last):
    """Once the server has sent its closing reply, the idle timer writes nothing more."""
    server, clock = make_server(socket_timeout=30, max_unrecognized_commands=2)
    client = TestClient(server)
    client.send(last)
    client.read()
    assert client.closed
    clock.advance(31)
    assert client.read() == b""
