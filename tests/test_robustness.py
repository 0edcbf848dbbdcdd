# -*- test-case-name: tests.test_robustness -*-
"""
Hostile and unlucky clients: each test pins a defence found in review
(unbounded output, exceptions out of dataReceived, double verdicts, replies
after goodbye, readers that stall or attach late).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.logger import capturedLogs, eventAsText

from txsmtpsrv import SMTPError
from tests._memory import Pending
from txsmtpsrv.testing import TestClient, make_server

PREFIX = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"



def failures(events: List[dict]) -> List[str]:
    """The rendered log events that carry a traceback."""
    return [eventAsText(e) for e in events if "log_failure" in e]


def test_client_not_reading_replies_stops_command_reading():
    """When the transport's write buffer is full, pipelined commands wait until it drains."""
    server, _ = make_server()
    client = TestClient(server)
    producer = client.transport.producer
    assert producer is not None  # registered at connection
    producer.pauseProducing()  # what a full write buffer does
    client.send(b"NOOP\r\nNOOP\r\n")
    assert client.codes() == []
    assert client.transport.producerState == "paused"
    producer.resumeProducing()
    assert client.codes() == [(250, "2.0.0"), (250, "2.0.0")]


def test_client_not_reading_is_aborted_at_timeout():
    """A client that never reads its replies is aborted when its time is up, not kept forever."""
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    client.transport.producer.pauseProducing()
    client.send(b"NOOP\r\n")
    clock.advance(31)
    assert client.transport.disconnecting


def test_closing_client_that_never_reads_is_aborted():
    """
    After QUIT the close waits for the queued replies to be sent (Twisted's
    loseConnection); a client that reads nothing more would hold the
    connection for ever: it is aborted after socket_timeout.
    """
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    client.send(b"NOOP\r\nQUIT\r\n")
    assert client.closed and not client.transport.disconnected  # closing, its replies not read
    clock.advance(29.9)
    assert not client.transport.disconnected
    clock.advance(0.1)
    assert client.transport.disconnected  # abortConnection
    client.disconnect()
    assert len(server._context.deadlines) == 0 and clock.getDelayedCalls() == []


def test_close_deadline_counts_from_the_close():
    """The connection's pending wake-up comes before the close's deadline: the client still gets its whole time."""
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    clock.advance(20)
    client.send(b"QUIT\r\n")  # the connection's timer is due at 30 (the idle timeout from the greeting)
    clock.advance(29.9)
    assert client.closed and not client.transport.disconnected
    clock.advance(0.1)
    assert client.transport.disconnected


def test_forced_close_with_a_hook_pending_is_aborted_too():
    """Closed (server shutdown's 421) while a hook with a longer hook_timeout waits: aborted socket_timeout later."""
    hooks = Pending("on_mail_from")
    server, clock = make_server(hooks, socket_timeout=30, hook_timeout=300, close_timeout=600)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    assert len(hooks.deferreds) == 1
    client.protocol.force_close()  # 421 and close, the hook still pending
    assert client.closed
    clock.advance(30)
    assert client.transport.disconnected


def test_timed_out_client_that_never_reads_the_421_is_aborted():
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    clock.advance(30)
    assert client.closed and client.codes()[-1] == (421, "4.4.2")
    clock.advance(30)
    assert client.transport.disconnected


def test_half_closed_client_that_never_reads_is_aborted():
    """The same after a half-close (the connection closes itself once it has answered)."""
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nNOOP\r\n")
    client.protocol.readConnectionLost()
    assert client.closed and not client.transport.disconnected
    clock.advance(30)
    assert client.transport.disconnected


def test_a_close_that_completes_leaves_no_timer():
    server, clock = make_server(socket_timeout=30)
    client = TestClient(server)
    client.send(b"QUIT\r\n")
    client.disconnect()  # the replies went out, the connection closed
    assert len(server._context.deadlines) == 0 and clock.getDelayedCalls() == []
    clock.advance(60)
    assert not client.transport.disconnected


def test_unicode_digits_are_not_sizes():
    """SIZE=² and BDAT ² are syntax errors, not crashes."""
    server, _ = make_server()
    client = TestClient(server)
    client.command("EHLO c.test")
    assert (client.command("MAIL FROM:<a@x.test> SIZE=²").code) == 501
    client.command("MAIL FROM:<a@x.test>")
    client.command("RCPT TO:<b@y.test>")
    assert client.command("BDAT ٣ LAST").code == 501
    assert client.closed


def test_orcpt_code_points_out_of_range():
    """An ORCPT utf-8 escape beyond U+10FFFF or a surrogate gets 501."""
    server, _ = make_server()
    client = TestClient(server)
    client.command("EHLO c.test")
    client.command("MAIL FROM:<a@x.test>")
    for bad in ("\\x{FFFFFF}", "\\x{D800}"):
        reply = client.command(f"RCPT TO:<b@y.test> ORCPT=utf-8;a{bad}@y.test")
        assert (reply.code, reply.enhanced) == (501, "5.5.4")
    assert client.command("NOOP").code == 250


class _BrokenOptions:
    """The dialogue's options, except that reading C{broken} raises: a bug in our own code, injected."""

    def __init__(self, options: Any, broken: str) -> None:
        self._options = options
        self._broken = broken

    def __getattr__(self, name: str) -> Any:
        if name == self._broken:
            raise TypeError(f"sabotaged: {name}")
        return getattr(self._options, name)


def _sabotage_ehlo_keywords(client: Any) -> None:
    """
    Make C{_cmd_session.ehlo_keywords} raise (on the EHLO path, the only
    reader of C{hide_8bitmime}), through the dialogue's options rather than by
    patching the module: in the mypyc build a module's calls of its own
    functions are bound at compile time, so patching would not reach them.
    """
    core = client.protocol.core
    core.options = _BrokenOptions(core.options, "hide_8bitmime")


def test_handler_bug_costs_one_command():
    """An unexpected exception in a command handler is a 451, logged; the connection goes on."""
    class Broken:
        def on_helo(self, session, hostname):
            return None

    server, _ = make_server(Broken())
    client = TestClient(server)
    _sabotage_ehlo_keywords(client)
    with capturedLogs() as events:
        reply = client.command("EHLO c.test")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert failures(events)
    assert client.command("NOOP").code == 250


def test_hook_failing_while_body_buffered_answers_once():
    """A data hook that fails without reading while body bytes are buffered gives one reply."""
    hooks = Pending("on_data")
    pending = hooks.deferreds

    server, _ = make_server(hooks)
    client = TestClient(server)
    client.send(PREFIX + b"part one\r\n")  # buffered: nobody reads, reading paused
    client.send(b"part two\r\n.\r\nNOOP\r\n")
    with capturedLogs() as events:
        pending[0].errback(SMTPError(554, "no thanks", "5.7.1"))
    assert client.codes()[-2:] == [(554, "5.7.1"), (250, "2.0.0")]
    assert failures(events) == []
    left: List[Any] = []
    pending[0].addBoth(left.append)
    assert left == [None]  # nothing raised inside the server's callbacks


def test_failing_collect_callback_answers_once():
    """A collect callback whose Deferred fails gives one 451 and no unhandled error."""
    class H:
        async def on_data(self, session, stream):
            def write(chunk):
                d: Deferred = Deferred()
                reactor_like.append(d)
                return d
            await stream.collect(write)

    reactor_like: List[Deferred] = []
    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX + b"hello\r\n")
    client.send(b"world\r\n.\r\nNOOP\r\n")
    with capturedLogs():
        reactor_like[0].errback(OSError("disk full"))
    left: List[Any] = []
    reactor_like[0].addBoth(left.append)
    assert left == [None]  # the error went to the collector, nothing raised after
    replies = client.codes()
    assert replies[-2:] == [(451, "4.3.0"), (250, "2.0.0")]
    assert [r for r in replies if r[0] >= 400] == [(451, "4.3.0")]


def test_async_collect_callback_is_awaited():
    """An async def collect callback gets every chunk before the 250."""
    got: List[bytes] = []

    class H:
        async def on_data(self, session, stream):
            async def write(chunk):
                got.append(chunk)
            await stream.collect(write)

    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX + b"hello\r\nworld\r\n.\r\n")
    assert client.codes()[-1] == (250, "2.0.0")
    assert b"".join(got) == b"hello\r\nworld\r\n"


def test_fired_deferred_from_collect_does_not_pause():
    """A collect callback returning an already-fired Deferred never pauses the transport."""
    class H:
        def on_data(self, session, stream):
            return stream.collect(lambda chunk: succeed(None))

    server, _ = make_server(H())
    client = TestClient(server)
    pauses: List[int] = []
    original = client.transport.pauseProducing
    client.transport.pauseProducing = lambda: (pauses.append(1), original())[1]
    client.send(PREFIX + b"a\r\n")
    client.send(b"b\r\n")
    client.send(b".\r\n")
    assert client.codes()[-1] == (250, "2.0.0")
    assert pauses == []


def test_nothing_written_after_shutdown_421():
    """A hook answering after close()'s 421 writes nothing more."""
    hooks = Pending("on_mail_from")
    pending = hooks.deferreds

    server, clock = make_server(hooks, close_timeout=5)
    client = TestClient(server)
    client.command("EHLO c.test")
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    server.close()
    clock.advance(5)  # close_timeout: 421 and drop
    assert client.codes() == [(421, "4.3.2")]
    assert pending[0].called  # cancelled
    assert client.read() == b""


def test_reader_attaching_after_disconnect_is_told():
    """content() called after the client vanished mid-DATA fails instead of hanging."""
    streams: List[Any] = []
    pending: List[Deferred] = []

    class H:
        def on_data(self, session, stream):
            streams.append(stream)
            d: Deferred = Deferred()
            pending.append(d)
            return d

    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX + b"partial")
    client.disconnect()
    results: List[Any] = []
    streams[0].content().addBoth(results.append)
    assert len(results) == 1 and results[0].check(ConnectionLost)


def test_stalled_reader_is_bounded_by_hook_timeout():
    """A reader left behind by a hook that answered cannot hold the connection forever."""
    class StuckReader:
        def makeConnection(self, producer):
            producer.pauseProducing()  # and never resumes

        def dataReceived(self, data):
            pass

        def connectionLost(self, reason):
            pass

    class H:
        def on_data(self, session, stream):
            stream.deliver_body(StuckReader())  # and returns at once

    server, clock = make_server(H(), hook_timeout=100, socket_timeout=30)
    client = TestClient(server)
    client.send(PREFIX + b"body\r\n.\r\nNOOP\r\n")
    assert client.codes()[-1] == (354, None)
    with capturedLogs():
        clock.advance(130)
    assert client.codes() == [(451, "4.3.0"), (250, "2.0.0")]


def test_shutdown_421_after_ehlo_between_transactions():
    """During close(), the next command of an idle client gets 421 and the connection closes."""
    hooks = Pending("on_helo")
    pending = hooks.deferreds

    server, _ = make_server(hooks)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    server.close()
    pending[0].callback(None)
    assert client.codes() == [(250, None), (421, "4.3.2")]
    assert client.closed


def test_reply_cache_does_not_keep_client_text():
    """Replies that echo client input are not cached per server."""
    server, _ = make_server()
    client = TestClient(server)
    client.command("EHLO c.test")
    before = len(server._reply_cache)
    for i in range(50):
        client.command(f"MAIL FROM:<a@x.test> X{i}{'Y' * 500}=1")
    assert len(server._reply_cache) <= before + 1
    reply = client.command("MAIL FROM:<a@x.test> Z" + "Q" * 5000 + "=1")
    assert reply.code == 555 and len(reply.text) < 100


def test_disconnect_mid_data_logs_no_traceback():
    """A client vanishing mid-DATA while the hook awaits content() logs no traceback."""
    class H:
        async def on_data(self, session, stream):
            await stream.content()

    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX + b"partial")
    with capturedLogs() as events:
        client.disconnect()
    assert failures(events) == []


def test_auth_failures_are_limited():
    """After max_auth_failures failed logins the client gets 421 and is dropped."""
    class H:
        def on_auth(self, session, credentials):
            return None

    server, _ = make_server(H(), allow_insecure_auth=True, auth_optional=True, max_auth_failures=3)
    client = TestClient(server)
    client.command("EHLO c.test")
    import base64
    attempt = "AUTH PLAIN " + base64.b64encode(b"\0bob\0wrong").decode()
    assert client.command(attempt).code == 535
    assert client.command(attempt).code == 535
    client.send(attempt + "\r\n")
    assert client.codes() == [(535, "5.7.8"), (421, "4.7.0")]
    assert client.closed


def test_oversized_message_answered_without_waiting_for_hook():
    """Past the size limit the 552 goes out at the dot even if the hook never answers."""
    hooks = Pending("on_data")
    server, _ = make_server(hooks, size=10)
    client = TestClient(server)
    client.send(PREFIX)
    client.send(b"x" * 100 + b"\r\n.\r\n")
    assert client.codes()[-1] == (552, "5.3.4")


def test_auth_hook_refusing_with_a_reply():
    """on_auth returning an error Reply refuses with that reply (and a 3xx one with 535)."""
    import base64
    from txsmtpsrv import Reply

    answers = [Reply(535, "Nope", "5.7.8"), Reply(454, "Directory down", "4.7.0"), Reply(334, "odd")]

    class H:
        def on_auth(self, session, credentials):
            return answers.pop(0)

    server, _ = make_server(H(), allow_insecure_auth=True, auth_optional=True)
    client = TestClient(server)
    client.command("EHLO c.test")
    attempt = "AUTH PLAIN " + base64.b64encode(b"\0bob\0pw").decode()
    replies = [client.command(attempt) for _ in range(3)]
    assert [(r.code, r.enhanced, r.text) for r in replies] == [
        (535, "5.7.8", "Nope"), (454, "4.7.0", "Directory down"), (535, "5.7.8", "odd")]
    assert client.protocol.session.user is None


def test_every_log_event_names_its_session_and_hides_bodies_and_secrets():
    """All protocol log events carry the session id; none shows the body or a password."""
    import base64

    class H:
        def on_auth(self, session, credentials):
            return None if credentials.password == "wrong-Secret-1" else credentials.username

        def on_rcpt_to(self, session, address):
            if address.local_part == "boom":
                raise RuntimeError("hook exploded")

    server, clock = make_server(H(), allow_insecure_auth=True, socket_timeout=30)
    with capturedLogs() as events:
        client = TestClient(server)
        client.command("EHLO c.test")
        client.command("AUTH PLAIN " + base64.b64encode(b"\0bob\0wrong-Secret-1").decode())
        client.command("AUTH PLAIN " + base64.b64encode(b"\0bob\0right-Secret-2").decode())
        client.command("MAIL FROM:<a@x.test>")
        client.command("RCPT TO:<boom@y.test>")
        client.command("RCPT TO:<ok@y.test>")
        client.send(b"DATA\r\nSubject: private\r\n\r\nTOP-SECRET-BODY\r\n.\r\n")
        client.send(b"STARTTLS\r\n")
        clock.advance(31)
    protocol_events = [e for e in events if e.get("log_namespace", "").startswith("txsmtpsrv._protocol")]
    assert len(protocol_events) >= 4
    assert all(e.get("session_id") == client.protocol.session.id for e in protocol_events)
    text = "\n".join(eventAsText(e) for e in events) + repr(events)
    for secret in ("TOP-SECRET-BODY", "wrong-Secret-1", "right-Secret-2",
                   base64.b64encode(b"\0bob\0right-Secret-2").decode()):
        assert secret not in text


def test_bug_after_an_async_hook_ends_the_session_cleanly():
    """An error in our code after a Deferred hook answers: logged, 421, closed; no unhandled error."""
    hooks = Pending("on_helo")
    server, _ = make_server(hooks)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nNOOP\r\n")
    _sabotage_ehlo_keywords(client)  # sabotage the EHLO reply, after the hook
    with capturedLogs() as events:
        hooks.deferreds[0].callback(None)
    assert client.codes() == [(421, "4.3.0")]
    assert client.closed
    assert failures(events)
    left: List[Any] = []
    hooks.deferreds[0].addBoth(left.append)
    assert left == [None]


def test_reply_text_must_be_utf8_encodable():
    """A Reply with a lone surrogate is refused when made (so a hook using it fails cleanly)."""
    import pytest

    from txsmtpsrv import Reply
    with pytest.raises(ValueError):
        Reply(250, "queued as \udcff")
    with pytest.raises(ValueError):
        SMTPError(550, "bad \udcff")


def test_chained_deferred_from_hook_still_times_out():
    """A fired Deferred waiting on a never-firing one is bounded by hook_timeout too."""
    class H:
        def on_mail_from(self, session, address):
            return succeed(None).addCallback(lambda _: Deferred())

    server, clock = make_server(H(), hook_timeout=10)
    client = TestClient(server)
    client.command("EHLO c.test")
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.codes() == []
    with capturedLogs():
        clock.advance(10)
    assert client.codes() == [(451, "4.3.0")]


def test_no_rate_limit_means_idle_timeout_only():
    """With min_data_rate=0 a body trickling in steadily is never cut off by socket_timeout."""
    server, clock = make_server(min_data_rate=0, socket_timeout=60)
    client = TestClient(server)
    client.send(PREFIX)
    client.replies()
    for _ in range(20):  # 200 s of data, a chunk every 10 s
        clock.advance(10)
        client.send(b"x" * 1000 + b"\r\n")
    client.send(b".\r\n")
    assert client.codes() == [(250, "2.0.0")]


def test_trickling_after_an_overlong_line_is_bounded():
    """Bytes trickled into an over-long line being discarded do not keep the connection open."""
    server, clock = make_server(max_command_length=512, socket_timeout=60)
    client = TestClient(server)
    client.send(b"X" * 600)
    for _ in range(10):
        clock.advance(55)
        client.send(b"Y")
    assert client.closed


def test_shutdown_421_after_slow_reader_finishes():
    """close() while a reader still digests a finished message: 250, then 421 as soon as it is done."""
    later: List[Deferred] = []

    class H:
        def on_data(self, session, stream):
            def write(chunk):
                d: Deferred = Deferred()
                later.append(d)
                return d
            return stream.collect(write)

    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX + b"body\r\n.\r\n")
    client.replies()
    server.close()
    later[0].callback(None)
    assert client.codes() == [(250, "2.0.0"), (421, "4.3.2")]
    assert client.closed


def test_rcpt_refused_once_bdat_began():
    """RCPT between BDAT chunks would change the LMTP reply count: it gets 503."""
    server, _ = make_server()
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3\r\nabc")
    client.replies()
    assert client.command("RCPT TO:<c@y.test>").code == 503
    client.send(b"BDAT 0 LAST\r\n")
    assert client.codes() == [(250, "2.0.0")]
