# -*- test-case-name: tests.test_protocol_hooks -*-
"""
Tests for L{txsmtpsrv._protocol}: hooks in every style, in memory through
L{txsmtpsrv.testing}: returning None, a L{Reply}, raising L{SMTPError}, a
Deferred (pending or fired), an async def; failures and garbage (451 and a
log), hook_timeout, on_connect/on_helo/on_close, and cancellation when the
client leaves.
"""

from __future__ import annotations

from typing import List

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import capturedLogs

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv.testing import TestClient, make_server
from tests._memory import Recorder, Rejector, codes, connect, ehlo, mail


# -- hooks in every style --------------------------------------------------------------------


def test_hook_plain_return_accepts():
    """A hook returning None accepts with the default reply."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    replies = client.sendmail("a@x.test", ["b@y.test"], b"x")
    assert codes(replies)[-1] == (250, "2.0.0")
    assert [c[0] for c in hooks.calls] == ["connect", "helo", "mail", "rcpt"]


class ReplyHooks:
    """Hooks that accept with their own text."""

    def on_mail_from(self, session, address):
        return Reply(250, "Sender looks fine", "2.1.0")

    def on_rcpt_to(self, session, address):
        return Reply(251, ["Not local;", "will forward"])

    def on_data(self, session, stream):
        return Reply(250, "Queued as 1234", "2.6.0")


def test_hook_reply_custom_text():
    """A hook returning a Reply accepts with that code, text and enhanced code."""
    _, _, client = connect(ReplyHooks())
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (250, "2.1.0", "Sender looks fine")
    client.send(b"RCPT TO:<b@y.test>\r\n")
    raw = client.read()
    assert raw.startswith(b"251-2.") and b"\r\n251 2." in raw
    reply, = __import__("txsmtpsrv.testing", fromlist=["parse_replies"]).parse_replies(raw)[0]
    assert reply.code == 251 and reply.lines == ("Not local;", "will forward")
    assert reply.enhanced is not None and reply.enhanced.startswith("2.")
    client.send(b"DATA\r\nbody\r\n.\r\n")
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [
        (354, None, "End data with <CR><LF>.<CR><LF>"), (250, "2.6.0", "Queued as 1234")]


def test_hook_reply_rejecting_code():
    """A Reply with a 4xx/5xx code rejects like an SMTPError."""
    class H:
        def on_mail_from(self, session, address):
            return Reply(450, "later", "4.7.1")

    _, _, client = connect(H())
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (450, "4.7.1", "later")
    assert client.command("RCPT TO:<b@y.test>").code == 503


def test_hook_raise_smtperror():
    """A hook raising SMTPError rejects with its code, enhanced code and text."""
    _, _, client = connect(Rejector())
    mail(client)
    reply = client.command("RCPT TO:<nobody@y.test>")
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.1.1", "No such user")
    assert client.command("DATA").code == 554


def test_hook_smtperror_without_enhanced_gets_class_code():
    """An SMTPError without an enhanced code is sent with the class default X.0.0."""
    class H:
        def on_mail_from(self, session, address):
            raise SMTPError(451, "try later")

    _, _, client = connect(H())
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (451, "4.0.0", "try later")


def test_hook_smtperror_multiline():
    """A multi-line SMTPError text becomes a multi-line reply, each line with the code."""
    class H:
        def on_mail_from(self, session, address):
            raise SMTPError(550, ["one", "two"], "5.7.1")

    _, _, client = connect(H())
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.read() == b"550-5.7.1 one\r\n550 5.7.1 two\r\n"


class DeferredHooks:
    """Hooks that return Deferreds the test fires."""

    def __init__(self) -> None:
        self.pending: List[Deferred] = []

    def _later(self, *args):
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    on_helo = on_mail_from = on_rcpt_to = _later


def test_hook_deferred_fired_later():
    """A hook's Deferred holds the reply until it fires."""
    hooks = DeferredHooks()
    _, _, client = connect(hooks)
    client.send(b"EHLO c.test\r\n")
    assert client.read() == b""
    hooks.pending.pop().callback(None)
    assert client.replies()[0].code == 250
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.read() == b""
    hooks.pending.pop().callback(Reply(250, "ok then", "2.1.0"))
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [(250, "2.1.0", "ok then")]
    client.send(b"RCPT TO:<b@y.test>\r\n")
    hooks.pending.pop().errback(SMTPError(550, "nope", "5.1.1"))
    assert codes(client.replies()) == [(550, "5.1.1")]


def test_hook_already_fired_deferred():
    """A hook returning an already-fired Deferred answers at once."""
    class H:
        def on_mail_from(self, session, address):
            return succeed(None)

    _, _, client = connect(H())
    ehlo(client)
    assert codes([client.command("MAIL FROM:<a@x.test>")]) == [(250, "2.1.0")]


def test_hook_async_awaiting_deferred():
    """An async def hook awaiting a Deferred answers when it returns or raises."""
    gate: List[Deferred] = []

    class H:
        async def on_mail_from(self, session, address):
            d: Deferred = Deferred()
            gate.append(d)
            verdict = await d
            if verdict == "no":
                raise SMTPError(553, "not you", "5.7.1")
            return Reply(250, f"hi {address.local_part}", "2.1.0")

    _, _, client = connect(H())
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.read() == b""
    gate.pop().callback("no")
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [(553, "5.7.1", "not you")]
    client.send(b"MAIL FROM:<bob@x.test>\r\n")
    gate.pop().callback("yes")
    assert [(r.code, r.text) for r in client.replies()] == [(250, "hi bob")]


class Broken:
    """Hooks that fail with an unexpected exception, at once or later."""

    def __init__(self) -> None:
        self.later: List[Deferred] = []

    def on_mail_from(self, session, address):
        raise RuntimeError("secret-internal-detail")

    def on_rcpt_to(self, session, address):
        d: Deferred = Deferred()
        self.later.append(d)
        return d


def test_hook_unexpected_exception_is_451_and_logged():
    """Any other exception is 451 4.3.0 to the client and logged with its traceback."""
    _, _, client = connect(Broken())
    ehlo(client)
    with capturedLogs() as events:
        client.send(b"MAIL FROM:<a@x.test>\r\n")
    raw = client.read()
    assert raw == b"451 4.3.0 Requested action aborted: local error in processing\r\n"
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0].check(RuntimeError)
    assert "on_mail_from" in failures[0].getTraceback()
    assert b"secret" not in raw and b"Traceback" not in raw
    # The transaction did not start.
    assert client.command("RCPT TO:<b@y.test>").code == 503


def test_hook_deferred_failing_later_is_451_and_logged():
    """A Deferred failing later with a non-SMTPError is 451 4.3.0 and logged."""
    class H(Broken):
        def on_mail_from(self, session, address):
            return None

    hooks = H()
    _, _, client = connect(hooks)
    ehlo(client)
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    client.send(b"RCPT TO:<b@y.test>\r\n")
    with capturedLogs() as events:
        hooks.later.pop().errback(KeyError("secret"))
    assert codes(client.replies()) == [(451, "4.3.0")]
    assert any(e.get("log_failure") is not None and e["log_failure"].check(KeyError) for e in events)


def test_hook_returning_garbage_is_451():
    """A hook returning something other than None or a Reply is 451 4.3.0."""
    class H:
        def on_mail_from(self, session, address):
            return "yes please"

    _, _, client = connect(H())
    ehlo(client)
    with capturedLogs() as events:
        reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert any("log_failure" in e for e in events)


def test_hook_timeout():
    """A hook slower than hook_timeout is 451 4.3.0 and the dialogue goes on."""
    hooks = DeferredHooks()
    _, clock, client = connect(hooks, hook_timeout=10, socket_timeout=5)
    client.send(b"EHLO c.test\r\n")
    hooks.pending.pop().callback(None)
    client.replies()
    client.send(b"MAIL FROM:<a@x.test>\r\nNOOP\r\n")
    clock.advance(9.9)
    assert client.read() == b""
    clock.advance(0.1)
    assert codes(client.replies()) == [(451, "4.3.0"), (250, "2.0.0")]
    assert hooks.pending[-1].called  # cancelled
    assert not client.closed


def test_hook_timeout_async_sees_cancel():
    """An async hook past hook_timeout is cancelled inside (CancelledError) and the client gets 451."""
    seen = []

    class H:
        async def on_rcpt_to(self, session, address):
            try:
                await Deferred()
            except CancelledError:
                seen.append("cancelled")
                raise

    _, clock, client = connect(H(), hook_timeout=3)
    mail(client)
    client.send(b"RCPT TO:<b@y.test>\r\n")
    clock.advance(3)
    assert codes(client.replies()) == [(451, "4.3.0")]
    assert seen == ["cancelled"]


def test_on_connect_rejects_then_waits_for_quit():
    """on_connect raising SMTPError(554) answers 554 in place of the greeting, then 503 until QUIT (RFC 5321 3.1)."""
    class H:
        def on_connect(self, session):
            raise SMTPError(554, "go away", "5.7.1")

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    assert client.read() == b"554 5.7.1 go away\r\n"
    assert not client.closed
    assert client.command("EHLO c.test").code == 503
    assert client.command("QUIT").code == 221 and client.closed
    client.send(b"EHLO c.test\r\n")
    assert client.read() == b""


@pytest.mark.parametrize("style", ["raise", "timeout"])
def test_on_connect_failure_greets_421(style):
    """An on_connect that fails unexpectedly or times out answers 421 (a valid greeting code) and closes."""
    class H:
        def on_connect(self, session):
            if style == "raise":
                raise RuntimeError("database down")
            return Deferred()

    server, clock = make_server(H(), hook_timeout=5)
    client = TestClient(server, greeting=False)
    clock.advance(5)
    reply, = client.replies()
    assert reply.code == 421
    assert client.closed


def test_on_connect_custom_greeting():
    """on_connect returning a Reply replaces the greeting, with no enhanced code."""
    class H:
        def on_connect(self, session):
            return Reply(220, ["mx.test ESMTP custom", "second line"], "2.0.0")

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    assert client.read() == b"220-mx.test ESMTP custom\r\n220 second line\r\n"
    assert not client.closed


def test_on_connect_deferred_holds_greeting():
    """A pending on_connect holds the greeting and any early commands until it fires."""
    gate: List[Deferred] = []

    class H:
        def on_connect(self, session):
            gate.append(Deferred())
            return gate[0]

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    client.send(b"EHLO c.test\r\n")
    assert client.read() == b""
    gate[0].callback(None)
    replies = client.replies()
    assert [r.code for r in replies] == [220, 250]


def test_on_helo_rejects():
    """on_helo raising SMTPError rejects the greeting; the session stays un-greeted."""
    class H:
        def on_helo(self, session, hostname):
            raise SMTPError(550, "bad helo", "5.7.1")

    _, _, client = connect(H())
    reply = client.command("EHLO bad.test")
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.7.1", "bad helo")
    assert client.command("MAIL FROM:<a@x.test>").code == 503


def test_on_helo_custom_reply():
    """on_helo returning a Reply replaces the first line; extensions still follow."""
    class H:
        def on_helo(self, session, hostname):
            return Reply(250, f"hello {hostname}")

    _, _, client = connect(H())
    reply = ehlo(client, "c.test")
    assert reply.lines[0] == "hello c.test" and "PIPELINING" in reply.lines
    assert reply.enhanced is None


def test_ehlo_reply_bytes_match_one_framed_reply():
    """
    The EHLO keyword lines are framed once per server and reused: the wire
    bytes stay what framing the whole reply at once gives, for a multi-line
    custom greeting, for a second connection (the cached tail) and for HELO.
    """
    from txsmtpsrv._errors import format_reply

    class H:
        def on_helo(self, session, hostname):
            return Reply(250, [f"hello {hostname}", "second line"])

    server, _ = make_server(H())
    for name in ("one.test", "two.test"):
        client = TestClient(server, ("192.0.2.7", 4000))
        client.read()
        client.send(f"EHLO {name}\r\n")
        raw = client.read()
        lines = raw.decode().split("\r\n")[:-1]
        assert lines[0] == f"250-hello {name}" and lines[1] == "250-second line"
        assert len(lines) > 3 and lines[-1].startswith("250 ")
        assert raw == format_reply(250, [line[4:] for line in lines], None)
        client.send("HELO again.test\r\n")
        assert client.read() == b"250-hello again.test\r\n250 second line\r\n"  # HELO: no keywords


def test_on_close_called():
    """on_close is called with the session when the connection closes."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    client.command("QUIT")
    assert hooks.calls[-1][0] == "connect"
    client.disconnect()
    assert hooks.calls[-1] == ("close", hooks.calls[0][1])


def test_on_close_failure_is_logged():
    """An on_close hook that raises is logged, not propagated."""
    class H:
        def on_close(self, session):
            raise RuntimeError("close failed")

    _, _, client = connect(H())
    with capturedLogs() as events:
        client.disconnect()
    assert any(e.get("log_failure") is not None and e["log_failure"].check(RuntimeError) for e in events)


def test_async_on_close_failure_is_logged():
    """An async on_close hook that fails after it was called is logged too, with the session id."""
    gate: Deferred = Deferred()

    class H:
        async def on_close(self, session):
            await gate
            raise RuntimeError("close failed later")

    _, _, client = connect(H())
    with capturedLogs() as events:
        client.disconnect()
        assert not any(e.get("log_failure") is not None for e in events)
        gate.callback(None)
    failed = [e for e in events if e.get("log_failure") is not None and e["log_failure"].check(RuntimeError)]
    assert len(failed) == 1 and failed[0].get("session_id")


def test_disconnect_cancels_async_hook():
    """A client vanishing while an async hook awaits cancels it (CancelledError inside)."""
    seen = []

    class H:
        async def on_mail_from(self, session, address):
            try:
                await Deferred()
            except CancelledError:
                seen.append("cancelled")
                raise

    _, _, client = connect(H())
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    client.disconnect()
    assert seen == ["cancelled"]
    assert client.read() == b""


def test_disconnect_cancel_leaves_no_error_in_hook_deferred():
    """Cancelling a pending hook on disconnect leaves no unhandled error in its Deferred."""
    hooks = DeferredHooks()
    _, _, client = connect(hooks)
    client.send(b"EHLO c.test\r\n")
    d = hooks.pending[0]
    with capturedLogs() as events:
        client.disconnect()
    results: list = []
    d.addBoth(results.append)
    assert results == [None]
    assert not any("log_failure" in e for e in events)
