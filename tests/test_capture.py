# -*- test-case-name: tests.test_capture -*-
"""
What ThreadedServer captures, tested in memory: its hooks wrapper behind a
TestClient on a fake clock, so every case is deterministic and needs no
thread (the threaded plumbing is tests/test_threaded.py and the user
project of tests/test_pytest_plugin.py).
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txsmtpsrv import Reply, ServerOptions, SMTPError, TLSConfig
from txsmtpsrv._capture import CapturingHooks, Mailbox
from txsmtpsrv.testing import CapturedMessage, MessagesNotReceived, TestClient, ThreadedServer, make_server

BODY = b"From: a@x.test\r\nSubject: Hello\r\n\r\nline one\r\n.leading dot\r\n"


def open_data(client: TestClient) -> None:
    """Everything up to the 354, so that the test sends the body itself, in pieces."""
    client.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert client.replies()[-1].code == 354


def capture(hooks: Any = None, **options: Any) -> tuple[TestClient, Mailbox]:
    mailbox = Mailbox()
    server, _ = make_server(CapturingHooks(hooks, mailbox), **options)
    return TestClient(server), mailbox


def test_captures_envelope_body_parsed_message_and_session():
    client, mailbox = capture()
    replies = client.sendmail("a@x.test", ["b@y.test", "c@y.test"], BODY, mail_params="BODY=8BITMIME")
    assert replies[-1].code == 250
    [m] = mailbox.messages
    assert isinstance(m, CapturedMessage)
    assert (m.mail_from, m.rcpt_to, m.body) == ("a@x.test", ("b@y.test", "c@y.test"), BODY)
    assert m.envelope.body_type == "8BITMIME" and m.envelope.mail_from.address == "a@x.test"
    assert m.message["Subject"] == "Hello"
    assert m.message.get_content() == "line one\n.leading dot\n"
    assert (m.peer, m.helo, m.secure, m.tls, m.user, m.lmtp) == (("192.0.2.10", 40000), "client.test",
                                                                 False, None, None, False)
    assert m.session_id == client.session.id
    assert str(m) == "<a@x.test> -> <b@y.test>, <c@y.test> (58 bytes, subject 'Hello')"


def test_envelope_is_a_copy():
    """The session's envelope is reset for the next transaction; the captured copy is not."""
    client, mailbox = capture()
    client.sendmail("a@x.test", ["b@y.test"], BODY)
    client.sendmail("c@x.test", ["d@y.test"], BODY, ehlo=None)
    assert [m.envelope.mail_from.address for m in mailbox.messages] == ["a@x.test", "c@x.test"]
    assert [[r.address for r in m.envelope.rcpt_to] for m in mailbox.messages] == [["b@y.test"], ["d@y.test"]]


def test_rejected_by_a_hook_not_captured():
    class Hooks:
        def on_data(self, session: Any, stream: Any) -> None:
            raise SMTPError(554, "Spam", "5.7.1")

    client, mailbox = capture(Hooks())
    assert client.sendmail("a@x.test", ["b@y.test"], BODY)[-1].code == 554
    assert mailbox.messages == []


def test_user_on_data_reads_a_tee_and_chooses_the_reply():
    """The user's on_data reads the whole body itself; its Reply goes out; the copy is identical."""
    seen: List[bytes] = []

    class Hooks:
        async def on_data(self, session: Any, stream: Any) -> Reply:
            seen.append(await stream.content())
            return Reply(250, "Queued as 42", "2.0.0")

    client, mailbox = capture(Hooks())
    final = client.sendmail("a@x.test", ["b@y.test"], BODY)[-1]
    assert (final.code, final.text) == (250, "Queued as 42")
    assert seen == [BODY] and mailbox.messages[0].body == BODY


def test_user_on_data_backpressure_kept():
    """A user reader that pauses (a pending Deferred per chunk) holds the body; capture waits for it."""
    gates: List[Deferred[None]] = []
    chunks: List[bytes] = []

    class Hooks:
        def on_data(self, session: Any, stream: Any) -> Deferred[None]:
            def slow(chunk: bytes) -> Deferred[None]:
                chunks.append(chunk)
                gates.append(Deferred())
                return gates[-1]
            return stream.collect(slow)

    client, mailbox = capture(Hooks())
    open_data(client)
    client.send(BODY[:20])
    client.send(BODY[20:].replace(b"\r\n.", b"\r\n..") + b".\r\n")
    assert mailbox.messages == [] and len(gates) == 1  # the reader holds the rest back
    for _ in range(10):
        if gates[-1].called:
            break
        gates[-1].callback(None)
    assert b"".join(chunks) == BODY
    assert client.replies()[-1].code == 250
    assert mailbox.messages[0].body == BODY


def test_user_on_data_that_does_not_read_still_captured():
    """A hook that returns at once (body discarded for it) still gets the message captured."""
    class Hooks:
        def on_data(self, session: Any, stream: Any) -> None:
            return None

    client, mailbox = capture(Hooks())
    assert client.sendmail("a@x.test", ["b@y.test"], BODY)[-1].code == 250
    assert mailbox.messages[0].body == BODY


def test_lmtp_captures_only_accepted_recipients():
    class Hooks:
        async def on_data(self, session: Any, stream: Any) -> List[Any]:
            await stream.content()
            return [None, SMTPError(452, "Full", "4.2.2"), Reply(550, "No", "5.1.1")]

    client, mailbox = capture(Hooks(), lmtp=True)
    replies = client.sendmail("a@x.test", ["a@y.test", "b@y.test", "c@y.test"], BODY)
    assert [r.code for _, r in replies.recipients] == [250, 452, 550]
    [m] = mailbox.messages
    assert m.rcpt_to == ("a@y.test",) and m.lmtp


def test_lmtp_all_rejected_not_captured():
    class Hooks:
        async def on_data(self, session: Any, stream: Any) -> List[Any]:
            await stream.content()
            return [SMTPError(452, "Full", "4.2.2")]

    client, mailbox = capture(Hooks(), lmtp=True)
    client.sendmail("a@x.test", ["a@y.test"], BODY)
    assert mailbox.messages == []


@pytest.mark.parametrize("user_on_data", [False, True])
def test_too_large_not_captured(user_on_data: bool):
    class Hooks:
        async def on_data(self, session: Any, stream: Any) -> None:
            await stream.content()

    client, mailbox = capture(Hooks() if user_on_data else None, size=10)
    assert client.sendmail("a@x.test", ["b@y.test"], BODY)[-1].code == 552
    assert mailbox.messages == []


def test_client_vanishing_mid_body_not_captured():
    client, mailbox = capture()
    open_data(client)
    client.send(b"Subject: cut\r\n")
    client.disconnect()
    assert mailbox.messages == []


def test_other_hooks_are_the_users():
    """on_rcpt_to and on_auth of the user's object run as usual; unknown attributes stay absent."""
    class Hooks:
        def on_rcpt_to(self, session: Any, address: Any) -> None:
            raise SMTPError(550, "No", "5.1.1")

    hooks = CapturingHooks(Hooks(), Mailbox())
    assert hooks.on_rcpt_to.__func__ is Hooks.on_rcpt_to  # type: ignore[attr-defined]
    assert not hasattr(hooks, "on_auth") and not hasattr(CapturingHooks(None, Mailbox()), "on_helo")
    client = TestClient(make_server(hooks)[0])
    assert client.sendmail("a@x.test", ["b@y.test"], BODY)[2].code == 550


def test_wait_for_async_fires_or_fails_listing_arrivals():
    clock = Clock()
    mailbox = Mailbox()
    client, _ = TestClient(make_server(CapturingHooks(None, mailbox))[0]), None
    d = mailbox.when(1, 5.0, clock)
    assert not d.called
    client.sendmail("a@x.test", ["b@y.test"], BODY)
    assert [m.mail_from for m in d.result] == ["a@x.test"]
    assert clock.getDelayedCalls() == []
    late = mailbox.when(2, 5.0, clock)
    clock.advance(5)
    failure = late.result
    late.addErrback(lambda _: None)
    assert isinstance(failure.value, MessagesNotReceived)
    assert "expected 2 message(s) within 5 s, 1 arrived" in str(failure.value)


def test_wait_for_blocking_times_out_with_arrivals():
    mailbox = Mailbox()
    with pytest.raises(MessagesNotReceived, match="1 arrived") as e:
        client = TestClient(make_server(CapturingHooks(None, mailbox))[0])
        client.sendmail("a@x.test", ["b@y.test"], BODY)
        mailbox.wait_for(2, 0.01)
    assert isinstance(e.value, AssertionError) and len(e.value.messages) == 1
    assert len(mailbox.wait_for(1, 0.01)) == 1
    mailbox.clear()
    assert mailbox.messages == []


def test_threaded_server_options_checked_at_once():
    """A typo or a bad value fails in the test's thread, before any reactor is involved."""
    with pytest.raises(TypeError):
        ThreadedServer(sise=10)
    with pytest.raises(ValueError):
        ThreadedServer(size=-1)


def test_threaded_server_defaults_and_tls_modes():
    plain = ThreadedServer()
    assert plain.tls == "off" and plain.options.hide_starttls
    assert (plain.options.name, plain.options.close_timeout, plain.options.disable_reverse_lookup) == (
        "localhost", 1.0, True)
    starttls = ThreadedServer(tls="starttls", name="mx.test")
    assert starttls.tls == "starttls" and isinstance(starttls.options.tls, TLSConfig)
    assert not starttls.options.hide_starttls and not starttls.options.secure
    assert ThreadedServer(tls=True).tls == "starttls"
    implicit = ThreadedServer(tls="implicit")
    assert implicit.tls == "implicit" and implicit.options.secure is True
    own = ThreadedServer(tls=TLSConfig(), secure=True)
    assert own.tls == "implicit" and own.options.tls == TLSConfig()
    assert not ThreadedServer().running and "stopped" in repr(ThreadedServer())


def test_threaded_server_whole_options_object():
    """options=ServerOptions(...) is used as given (no test defaults layered on it)."""
    base = ServerOptions(name="given.test", size=123)
    server = ThreadedServer(options=base)
    assert server.options.name == "given.test" and server.options.size == 123
    assert server.options.hide_starttls  # tls=False still applies
    assert ThreadedServer(options=base, size=5).options.size == 5
