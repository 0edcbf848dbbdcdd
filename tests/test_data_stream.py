"""
Tests for DATA as a stream in L{txsmtpsrv._protocol} and L{txsmtpsrv._data}:
flow control, the three ways to read, early rejection, the final reply's
timing, disconnects, size limits, bare line endings and SMTP smuggling.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from txsmtpsrv import BareLineEnding, MessageDone, MessageStream, MessageTooLarge, SMTPError
from tests._memory import Collect
from txsmtpsrv.testing import TestClient, dot_stuff, make_server

PREFIX = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"


def open_data(hooks: Any = None, **options: Any):
    """A client that has just had 354 for DATA; returns (server, clock, client)."""
    server, clock = make_server(hooks, **options)
    client = TestClient(server)
    client.send(PREFIX)
    assert [r.code for r in client.replies()] == [250, 250, 250, 354]
    return server, clock, client



class Reader:
    """An IProtocol body reader that records what it is given."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.chunks: List[bytes] = []
        self.reason: Optional[Failure] = None

    def makeConnection(self, producer: Any) -> None:
        self.producer = producer

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


class Keep:
    """A data hook that keeps the stream, attaches a Reader and returns a Deferred the test fires."""

    def __init__(self) -> None:
        self.stream: Optional[MessageStream] = None
        self.reader = Reader()
        self.verdict: Deferred = Deferred()

    def on_data(self, session, stream):
        self.stream = stream
        stream.deliver_body(self.reader)
        return self.verdict


def test_collect_with_deferreds_pauses_and_resumes_transport():
    """A collect callback returning a pending Deferred pauses the transport until it fires."""
    gates: List[Deferred] = []
    chunks: List[bytes] = []
    done: List[Any] = []

    def slow(chunk: bytes) -> Deferred:
        chunks.append(chunk)
        gates.append(Deferred())
        return gates[-1]

    class H:
        async def on_data(self, session, stream):
            await stream.collect(slow)
            done.append(True)

    _, _, client = open_data(H())
    assert client.transport.producerState == "producing"
    client.send(b"first line\r\n")
    assert chunks == [b"first line"]
    assert client.transport.producerState == "paused"
    client.send(b"second line\r\n")
    assert chunks == [b"first line"]
    gates[0].callback(None)
    assert chunks == [b"first line", b"\r\nsecond line"]
    assert client.transport.producerState == "paused"
    gates[1].callback(None)
    assert client.transport.producerState == "producing"
    client.send(b".\r\n")
    assert chunks[-1] == b"\r\n"
    gates[-1].callback(None)
    assert done == [True]
    assert client.codes() == [(250, "2.0.0")]
    assert client.transport.producerState == "producing"
    assert b"".join(chunks) == b"first line\r\nsecond line\r\n"


def test_content_returns_whole_body():
    """stream.content() fires with the whole (unstuffed) body."""
    hooks = Collect()
    bodies = hooks.bodies
    _, _, client = open_data(hooks)
    for piece in (b"Subject: x\r\n", b"\r\n..dot", b"\r\n", b"end\r", b"\n.", b"\r\n"):
        client.send(piece)
    assert client.codes() == [(250, "2.0.0")]
    assert bodies == [b"Subject: x\r\n\r\n.dot\r\nend\r\n"]


def test_deliver_body_protocol():
    """deliver_body gives makeConnection(producer), dataReceived chunks, then connectionLost(MessageDone)."""
    hooks = Keep()
    _, _, client = open_data(hooks)
    reader = hooks.reader
    assert IPushProducer.providedBy(reader.producer)
    client.send(b"line 1\r\nline 2\r\n.\r\n")
    assert b"".join(reader.chunks) == b"line 1\r\nline 2\r\n"
    assert reader.reason is not None and reader.reason.check(MessageDone)
    assert client.read() == b""  # the hook has not answered yet
    hooks.verdict.callback(None)
    assert client.codes() == [(250, "2.0.0")]


def test_deliver_body_twice_is_an_error():
    """A stream can be read only once."""
    errors: List[Exception] = []

    class H:
        def on_data(self, session, stream):
            stream.deliver_body(Reader())
            try:
                stream.content()
            except RuntimeError as e:
                errors.append(e)

    _, _, client = open_data(H())
    client.send(b"x\r\n.\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert len(errors) == 1


def test_early_reject_discards_rest_and_replies_after_dot():
    """A data hook rejecting before reading has the rest discarded; its reply comes only after the dot."""
    class H:
        def on_data(self, session, stream):
            raise SMTPError(550, "Go away", "5.7.1")

    _, _, client = open_data(H())
    client.send(b"MAIL FROM:<evil@x.test>\r\nlots of body\r\n")
    assert client.read() == b""
    client.send(b"more\r\n.\r\nNOOP\r\n")
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [
        (550, "5.7.1", "Go away"), (250, "2.0.0", "OK")]


def test_hook_returning_without_reading_accepts_after_dot():
    """A data hook that returns at once without reading has the body discarded; 250 after the dot."""
    class H:
        def on_data(self, session, stream):
            return None

    _, _, client = open_data(H())
    client.send(b"body\r\n")
    assert client.read() == b""
    client.send(b".\r\n")
    assert client.codes() == [(250, "2.0.0")]


def test_reply_waits_for_hook_after_dot():
    """The final reply waits for the hook when the dot comes first."""
    hooks = Keep()
    _, _, client = open_data(hooks)
    client.send(b"body\r\n.\r\nNOOP\r\n")
    assert client.read() == b""
    hooks.verdict.errback(SMTPError(451, "Try later", "4.7.1"))
    assert client.codes() == [(451, "4.7.1"), (250, "2.0.0")]


def test_reply_waits_for_dot_after_hook():
    """The final reply waits for the dot when the hook answers first."""
    hooks = Keep()
    _, _, client = open_data(hooks)
    client.send(b"body\r\n")
    hooks.verdict.callback(None)
    assert client.read() == b""
    client.send(b"more\r\n")
    assert client.read() == b""
    client.send(b".\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert b"".join(hooks.reader.chunks) == b"body\r\nmore\r\n"


def test_hook_rejecting_before_dot_waits_for_dot():
    """A hook rejecting (later, before the dot) still answers only after the dot."""
    hooks = Keep()
    _, _, client = open_data(hooks)
    client.send(b"body\r\n")
    hooks.verdict.errback(SMTPError(554, "Spam", "5.7.1"))
    assert hooks.reader.reason is not None and not hooks.reader.reason.check(MessageDone)
    client.send(b"more\r\n")
    assert client.read() == b""
    client.send(b".\r\n")
    assert client.codes() == [(554, "5.7.1")]


def test_reply_after_reader_catches_up_when_hook_answered_first():
    """A hook that answered while its reader lags gets the final reply once the reader has the whole body."""
    gates: List[Deferred] = []

    def slow(chunk: bytes) -> Deferred:
        gates.append(Deferred())
        return gates[-1]

    class H:
        def on_data(self, session, stream):
            stream.collect(slow)  # read in the background, answer now

    _, _, client = open_data(H())
    client.send(b"chunk\r\n.\r\n")
    assert client.transport.producerState == "paused"
    while gates and not gates[-1].called:
        gates[-1].callback(None)
    assert client.codes() == [(250, "2.0.0")]


def test_disconnect_mid_data():
    """A client vanishing mid-DATA gives the reader ConnectionLost and accepts nothing."""
    hooks = Keep()
    server, _, client = open_data(hooks)
    messages: list = []
    server.observe("message", lambda *a: messages.append(a))
    client.send(b"partial body\r\n")
    client.disconnect()
    assert hooks.reader.reason is not None and hooks.reader.reason.check(ConnectionLost)
    assert messages == []
    assert client.read() == b""


def test_disconnect_mid_data_fails_content():
    """content() fails with ConnectionLost when the client vanishes mid-DATA."""
    seen: List[Any] = []

    class H:
        async def on_data(self, session, stream):
            try:
                await stream.content()
            except ConnectionLost:
                seen.append("lost")
                raise
            seen.append("accepted")

    _, _, client = open_data(H())
    client.send(b"partial")
    client.disconnect()
    assert seen == ["lost"]


def test_size_limit():
    """Past the size limit byte_length/size_exceeded update live, the reader gets MessageTooLarge, 552 after the dot."""
    hooks = Keep()
    _, _, client = open_data(hooks, size=100)
    stream = hooks.stream
    assert stream is not None
    client.send(b"x" * 50 + b"\r\n")
    assert (stream.byte_length, stream.size_exceeded) == (50, False)
    client.send(b"y" * 60 + b"\r\n")
    assert stream.size_exceeded and stream.byte_length > 100
    assert hooks.reader.reason is not None and hooks.reader.reason.check(MessageTooLarge)
    assert client.read() == b""
    client.send(b"z" * 1000 + b"\r\n.\r\nNOOP\r\n")
    hooks.verdict.callback(None)
    replies = client.replies()
    assert [(r.code, r.enhanced) for r in replies] == [(552, "5.3.4"), (250, "2.0.0")]
    assert stream.byte_length == 50 + 2 + 60 + 2 + 1000 + 2


def test_size_limit_with_content_hook():
    """A content() hook over the limit fails with MessageTooLarge and the client gets 552 5.3.4."""
    seen: List[Any] = []

    class H:
        async def on_data(self, session, stream):
            try:
                await stream.content()
            except MessageTooLarge:
                seen.append("too large")
                raise

    _, _, client = open_data(H(), size=10)
    client.send(b"0123456789abc\r\n.\r\n")
    assert seen == ["too large"]
    assert client.codes() == [(552, "5.3.4")]
    # The dialogue continues.
    assert client.command("MAIL FROM:<a@x.test>").code == 250


def test_size_exactly_at_limit_accepted():
    """A body of exactly the size limit is accepted."""
    hooks = Collect()
    bodies = hooks.bodies
    _, _, client = open_data(hooks, size=10)
    client.send(b"01234567\r\n.\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert bodies == [b"01234567\r\n"]


@pytest.mark.parametrize("body", [b"bare\nlf\r\n", b"bare\rcr\r\n", b"end with cr\r", b"\n"])
def test_bare_line_endings_rejected(body):
    """A bare LF or CR in the body is 550 5.6.0 after the dot (bare_line_endings="reject")."""
    hooks = Keep()
    _, _, client = open_data(hooks)
    client.send(body + b"\r\n.\r\n")
    assert hooks.reader.reason is not None and hooks.reader.reason.check(BareLineEnding)
    hooks.verdict.callback(None)
    assert client.codes() == [(550, "5.6.0")]
    assert client.command("NOOP").code == 250


@pytest.mark.parametrize("body", [b"bare\nlf\r\n", b"bare\rcr\r\n", b"a\n\rb\r\n"])
def test_bare_line_endings_accepted(body):
    """With bare_line_endings="accept" bare CR/LF pass through unchanged."""
    hooks = Collect()
    bodies = hooks.bodies
    _, _, client = open_data(hooks, bare_line_endings="accept")
    client.send(body + b".\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert bodies == [body]


def test_crlf_split_across_reads_is_not_bare():
    """A CRLF split between two reads is not a bare CR."""
    hooks = Collect()
    bodies = hooks.bodies
    _, _, client = open_data(hooks)
    client.send(b"line\r")
    client.send(b"\nnext\r")
    client.send(b"\n.\r")
    client.send(b"\n")
    assert client.codes() == [(250, "2.0.0")]
    assert bodies == [b"line\r\nnext\r\n"]


SMUGGLED = (b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: forged\r\n\r\n"
            b"evil\r\n.\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"])
def test_smuggling_ends_do_not_end_message(fake_end):
    """<LF>.<LF>, <LF>.<CR><LF> and friends do not end the message: the smuggled part stays body."""
    hooks = Collect()
    bodies = hooks.bodies
    server, _, client = open_data(hooks, bare_line_endings="accept")
    mails: list = []
    server.observe("mail", lambda *a: mails.append(a))
    client.send(b"Subject: hi\r\n\r\nbody" + fake_end + SMUGGLED)
    assert client.codes() == [(250, "2.0.0")]
    assert mails == []
    # RFC 5321 4.5.2: a line that starts with a period loses it, whatever follows.
    assert len(bodies) == 1 and b"admin@victim.test" in bodies[0]
    assert fake_end.replace(b"\r\n.", b"\r\n") in bodies[0]


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n"])
def test_smuggling_rejected_by_default(fake_end):
    """With the default bare_line_endings="reject" a smuggling attempt gets one 550 5.6.0 and no second message."""
    server, _, client = open_data(Keep())
    mails: list = []
    server.observe("mail", lambda *a: mails.append(a))
    client.send(b"Subject: hi\r\n\r\nbody" + fake_end + SMUGGLED)
    # The verdict is known at the dot: the hook (which never answers) is cancelled.
    assert client.codes() == [(550, "5.6.0")]
    server2, _ = make_server()
    client2 = TestClient(server2)
    client2.send(PREFIX + b"Subject: hi\r\n\r\nbody" + fake_end + SMUGGLED)
    assert [(r.code, r.enhanced) for r in client2.replies()] == [(250, None), (250, "2.1.0"), (250, "2.1.5"),
                                                                  (354, None), (550, "5.6.0")]
    assert mails == []


def test_pipelined_command_after_dot_in_same_read():
    """A command pipelined after the dot in the same read is processed."""
    server, _ = make_server()
    client = TestClient(server)
    client.send(PREFIX + b"hello\r\n.\r\nMAIL FROM:<c@x.test>\r\nQUIT\r\n")
    assert [(r.code, r.enhanced) for r in client.replies()] == [
        (250, None), (250, "2.1.0"), (250, "2.1.5"), (354, None), (250, "2.0.0"), (250, "2.1.0"), (221, "2.0.0")]
    assert client.closed


def test_two_messages_in_one_read():
    """Two whole transactions pipelined in one read are both delivered, in order."""
    hooks = Collect()
    bodies = hooks.bodies
    server, _ = make_server(hooks)
    client = TestClient(server)
    second = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\ntwo\r\n.\r\n"
    client.send(PREFIX + b"one\r\n.\r\n" + second)
    assert [r.code for r in client.replies()] == [250, 250, 250, 354, 250, 250, 250, 354, 250]
    assert bodies == [b"one\r\n", b"two\r\n"]


def test_dot_unstuffing_split_across_reads():
    """A stuffed dot split across reads is unstuffed exactly once."""
    hooks = Collect()
    bodies = hooks.bodies
    _, _, client = open_data(hooks)
    for piece in (b".", b".a\r\n", b"b\r\n.", b".", b"\r\n", b"..\r", b"\n.", b"\r", b"\n"):
        client.send(piece)
    assert client.codes() == [(250, "2.0.0")]
    assert bodies == [b".a\r\nb\r\n.\r\n.\r\n"]


@pytest.mark.parametrize("hooks", [None, "returns-at-once"])
def test_size_limit_without_reader(hooks):
    """A message over the size limit gets 552 5.3.4 even when nobody reads the body."""
    class H:
        def on_data(self, session, stream):
            return None

    server, _ = make_server(H() if hooks else None, size=10)
    client = TestClient(server)
    replies = client.sendmail("a@x.test", ["b@y.test"], b"x" * 100)
    assert (replies[-1].code, replies[-1].enhanced) == (552, "5.3.4")


# -- issue 10: the smuggling bypass and NUL -------------------------------------------------

ISSUE_BODIES = [
    b"hello\r.\nMAIL FROM:<ceo@victim.example>\r\n",  # bare CR ... bare LF with a dot between
    b"a\rX\nb\r\n",                                     # bare CR and bare LF with a byte between
]


@pytest.mark.parametrize("body", ISSUE_BODIES + [b"nul\x00byte\r\n"])
@pytest.mark.parametrize("one_byte_reads", [False, True])
def test_issue_bypass_and_nul_refused(body, one_byte_reads):
    """The issue's two bypasses and a NUL get 550 5.6.0 (whole or one byte per read); the reader is
    told BareLineEnding and nothing is accepted."""
    hooks = Keep()
    server, _, client = open_data(hooks)
    messages: list = []
    server.observe("message", lambda *a: messages.append(a))
    wire = body + b".\r\n"
    for piece in ([wire[i:i + 1] for i in range(len(wire))] if one_byte_reads else [wire]):
        client.send(piece)
    assert hooks.reader.reason is not None and hooks.reader.reason.check(BareLineEnding)
    [reply] = client.replies()
    assert (reply.code, reply.enhanced) == (550, "5.6.0")
    assert ("NUL" in reply.text) is (b"\x00" in body)
    assert messages == []
    assert client.command("NOOP").code == 250


@pytest.mark.parametrize("body", ISSUE_BODIES + [b"nul\x00byte\r\n"])
def test_issue_bodies_accepted_with_accept_policy(body):
    """bare_line_endings="accept" keeps accepting them, bytes intact."""
    hooks = Collect()
    _, _, client = open_data(hooks, bare_line_endings="accept")
    client.send(body + b".\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert hooks.bodies == [body]


_BAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"\x00", b"ab", b"\r\n."]), max_size=25).map(b"".join),
       st.one_of(st.just(None), st.lists(st.integers(1, 40), max_size=12)))
def test_dialogue_verdict_matches_the_oracle(body, reads):
    """Through the whole dialogue: a body with a bare CR/LF or NUL gets 550 5.6.0, any other 250 with the
    body delivered byte for byte, whatever the reads (None: one byte per read)."""
    hooks = Collect()
    _, _, client = open_data(hooks)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    wire = dot_stuff(body) + b"NOOP\r\n"
    if reads is None:
        pieces = [wire[i:i + 1] for i in range(len(wire))]
    else:
        pieces, pos = [], 0
        for n in reads:
            pieces.append(wire[pos:pos + n])
            pos += n
        pieces.append(wire[pos:])
    for piece in pieces:
        client.send(piece)
    verdict, noop = client.codes()
    assert noop == (250, "2.0.0")
    if _BAD.search(body):
        assert verdict == (550, "5.6.0") and hooks.bodies == []
    else:
        assert verdict == (250, "2.0.0") and hooks.bodies == [body]
