# -*- test-case-name: tests.test_bdat -*-
"""
Tests for CHUNKING / BDAT and BINARYMIME (RFC 3030) in L{txsmtpsrv._protocol}:
chunks stream into the same data hook and L{MessageStream} as DATA, byte for
byte; errors keep the dialogue in step; abandoned transactions stop the
reader and the hook; LMTP answers BDAT LAST once per recipient.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._data import MessageDiscarded, MessageTooLarge
from txsmtpsrv.testing import TestClient, make_server
from tests._memory import codes, count_writes

MAIL_RCPT = b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n"


class Recorder:
    """Hooks that read the whole body with content() and keep it."""

    def __init__(self) -> None:
        self.bodies: List[bytes] = []
        self.streams: List[Any] = []
        self.errors: List[Failure] = []

    async def on_data(self, session, stream):
        self.streams.append(stream)
        try:
            body = await stream.content()
        except Exception:
            self.errors.append(Failure())
            raise
        self.bodies.append(body)


class Reader:
    """An IProtocol for MessageStream.deliver_body that records what it gets."""

    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.reason: Optional[Failure] = None
        self.producer: Any = None

    def makeConnection(self, producer):
        self.producer = producer

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.reason = reason


class Pending:
    """A data hook that reads with a L{Reader} and answers with a Deferred the test fires."""

    def __init__(self) -> None:
        self.readers: List[Reader] = []
        self.answers: List[Deferred] = []
        self.cancelled: List[Deferred] = []

    def on_data(self, session, stream):
        reader = Reader()
        self.readers.append(reader)
        stream.deliver_body(reader)
        d: Deferred = Deferred(self.cancelled.append)
        self.answers.append(d)
        return d


def greeted(hooks: Any = None, **options: Any) -> TestClient:
    """A client that has sent EHLO."""
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    return client



def bdat(*chunks: bytes, last: bool = True) -> bytes:
    """BDAT commands carrying C{chunks}, the final one marked LAST (if C{last})."""
    out = b""
    for i, chunk in enumerate(chunks):
        tail = b" LAST" if last and i == len(chunks) - 1 else b""
        out += b"BDAT %d%s\r\n" % (len(chunk), tail) + chunk
    return out



# -- advertising ---------------------------------------------------------------------


def test_chunking_and_binarymime_advertised():
    """EHLO advertises CHUNKING and BINARYMIME by default."""
    server, _ = make_server()
    lines = TestClient(server).command("EHLO c.test").lines
    assert "CHUNKING" in lines and "BINARYMIME" in lines


def test_hide_chunking():
    """hide_chunking: neither keyword is offered and BDAT is 502 5.5.1."""
    server, _ = make_server(hide_chunking=True)
    client = TestClient(server)
    lines = client.command("EHLO c.test").lines
    assert "CHUNKING" not in lines and "BINARYMIME" not in lines
    client.send(MAIL_RCPT)
    client.replies()
    assert codes([client.command("BDAT 0 LAST")]) == [(502, "5.5.1")]


def test_bdat_in_disabled_commands():
    """disabled_commands={"BDAT"}: BDAT is 502 5.5.1."""
    client = greeted(disabled_commands={"BDAT"})
    assert codes([client.command("BDAT 0 LAST")]) == [(502, "5.5.1")]


# -- delivery ------------------------------------------------------------------------


def test_single_last_chunk():
    """One BDAT LAST delivers the message through on_data, like DATA."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"Subject: x\r\n\r\nhello\r\n"))
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert hooks.bodies == [b"Subject: x\r\n\r\nhello\r\n"]
    assert hooks.streams[0].byte_length == len(hooks.bodies[0])


def test_chunks_are_concatenated_without_dot_handling():
    """content() is exactly the chunks joined: dots, the DATA terminator, bare LF and NUL are data
    (with BODY=BINARYMIME; without it bare CR/LF and NUL are refused, see the tests below)."""
    hooks = Recorder()
    client = greeted(hooks)
    chunks = [b".leading dot\r\n", b"..two\r\n.\r\n", b"QUIT\r\n", b"bare\nLF\rCR\x00\xff", b"\r\n.\r\n"]
    client.send(MAIL_RCPT.replace(b">\r\n", b"> BODY=BINARYMIME\r\n", 1) + bdat(*chunks))
    replies = client.replies()
    assert [r.code for r in replies] == [250] * (2 + len(chunks))
    assert hooks.bodies == [b"".join(chunks)]
    assert not client.closed  # the "QUIT" inside a chunk was data


def test_non_last_chunks_answered_with_byte_count():
    """Each non-last chunk gets 250 2.0.0 with the octets received so far."""
    client = greeted(Recorder())
    client.send(MAIL_RCPT)
    client.replies()
    client.send(b"BDAT 3\r\nabc")
    [first] = client.replies()
    assert (first.code, first.enhanced, first.text) == (250, "2.0.0", "3 octets received")
    client.send(b"BDAT 4\r\ndefg")
    [second] = client.replies()
    assert (second.code, second.enhanced, second.text) == (250, "2.0.0", "7 octets received")
    client.send(b"BDAT 1 LAST\r\nh")
    assert [r.text for r in client.replies()] == ["OK: message accepted"]


def test_pipelined_chunks_answered_in_order_in_one_write():
    """Several chunks and commands in one read: replies in order, in one transport write."""
    hooks = Recorder()
    client = greeted(hooks)
    writes = count_writes(client)
    client.send(MAIL_RCPT + bdat(b"one ", b"two ", b"three", last=False) + b"BDAT 0 LAST\r\nNOOP\r\n")
    assert len(writes) == 1
    replies = client.replies()
    assert [r.text for r in replies] == ["Accepted", "Accepted", "4 octets received", "8 octets received",
                                         "13 octets received", "OK: message accepted", "OK"]
    assert hooks.bodies == [b"one two three"]


def test_bdat_0_last_ends_message():
    """BDAT 0 LAST after chunks ends the message without adding bytes."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", last=False) + b"BDAT 0 LAST\r\n")
    assert codes(client.replies())[-1] == (250, "2.0.0")
    assert hooks.bodies == [b"abc"]


def test_bdat_0_last_only_chunk_is_empty_message():
    """BDAT 0 LAST as the only chunk delivers an empty message."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + b"BDAT 0 LAST\r\n")
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert hooks.bodies == [b""]


def test_bdat_0_not_last():
    """An empty non-last chunk is answered and adds nothing."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + b"BDAT 0\r\n" + bdat(b"x"))
    assert [r.text for r in client.replies()][2:] == ["0 octets received", "OK: message accepted"]
    assert hooks.bodies == [b"x"]


def test_last_keyword_case_insensitive():
    """"bdat 2 last" works like "BDAT 2 LAST"."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + b"bdat 2 last\r\nok")
    assert codes(client.replies())[-1] == (250, "2.0.0")
    assert hooks.bodies == [b"ok"]


def test_chunk_split_across_reads():
    """A chunk and its command may arrive in any pieces."""
    hooks = Recorder()
    client = greeted(hooks)
    wire = MAIL_RCPT + b"BDAT 10\r\n0123456789BDAT 5 LAST\r\nabcde"
    for i in range(len(wire)):
        client.send(wire[i:i + 1])
    assert [r.code for r in client.replies()] == [250] * 4
    assert hooks.bodies == [b"0123456789abcde"]


def test_data_then_bdat_transactions():
    """A DATA transaction and a BDAT transaction on one connection both deliver."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + b"DATA\r\nby data\r\n.\r\n" + MAIL_RCPT + bdat(b"by bdat"))
    assert [r.code for r in client.replies()] == [250, 250, 354, 250, 250, 250, 250]
    assert hooks.bodies == [b"by data\r\n", b"by bdat"]


def test_hook_accepting_without_reading():
    """A hook that answers at once without reading: chunks are discarded, the verdict given at LAST."""
    class Quick:
        def on_data(self, session, stream):
            return Reply(250, "Thanks", "2.6.0")

    client = greeted(Quick())
    client.send(MAIL_RCPT + bdat(b"a" * 100, b"b" * 100))
    assert [(r.code, r.text) for r in client.replies()][2:] == [(250, "100 octets received"), (250, "Thanks")]


def test_no_data_hook():
    """Without on_data the message is accepted and thrown away."""
    client = greeted()
    client.send(MAIL_RCPT + bdat(b"abc", b"def"))
    assert [r.code for r in client.replies()] == [250] * 4


def test_slow_hook_delays_last_reply_and_later_commands():
    """The LAST reply waits for the hook; pipelined commands after it wait too."""
    hooks = Pending()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", b"def") + b"NOOP\r\n")
    assert [r.text for r in client.replies()] == ["Accepted", "Accepted", "3 octets received"]
    assert hooks.readers[0].reason is not None  # the body has ended
    hooks.answers[0].callback(None)
    assert [r.text for r in client.replies()] == ["OK: message accepted", "OK"]
    assert b"".join(hooks.readers[0].chunks) == b"abcdef"


# -- backpressure --------------------------------------------------------------------


def test_backpressure_pauses_transport_until_reader_catches_up():
    """A collect() callback returning an unfired Deferred pauses the transport; firing it resumes."""
    gates: List[Deferred] = []
    received: List[bytes] = []

    class Slow:
        async def on_data(self, session, stream):
            def chunk(data):
                received.append(data)
                d: Deferred = Deferred()
                gates.append(d)
                return d
            await stream.collect(chunk)

    client = greeted(Slow())
    client.send(MAIL_RCPT + b"BDAT 5\r\nhello")
    assert client.transport.producerState == "paused"
    assert received == [b"hello"]
    assert codes(client.replies())[-1] == (250, "2.0.0")  # the chunk itself is answered
    client.send(b"BDAT 6 LAST\r\n world")  # buffered while paused
    assert received == [b"hello"]
    assert client.replies() == []
    gates.pop(0).callback(None)
    assert client.transport.producerState == "paused"  # the next chunk is behind again
    assert received == [b"hello", b" world"]
    gates.pop(0).callback(None)
    assert client.transport.producerState == "producing"
    assert [(r.code, r.text) for r in client.replies()] == [(250, "OK: message accepted")]


# -- errors keep the dialogue in step -------------------------------------------------


def test_bdat_without_mail_discards_chunk():
    """BDAT before MAIL: 503 5.5.1, the chunk bytes are skipped, the next command is understood."""
    client = greeted(Recorder())
    client.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert codes(client.replies()) == [(503, "5.5.1"), (250, "2.0.0")]


def test_bdat_without_rcpt_discards_chunk():
    """BDAT without an accepted RCPT: 554 5.5.1, the chunk bytes are skipped."""
    client = greeted(Recorder())
    client.send(b"MAIL FROM:<s@example.test>\r\nBDAT 6 LAST\r\nRSET\r\nNOOP\r\n")
    assert codes(client.replies()) == [(250, "2.1.0"), (554, "5.5.1"), (250, "2.0.0")]


def test_bdat_without_mail_split_reads():
    """The skipped chunk may span reads."""
    client = greeted(Recorder())
    client.send(b"BDAT 10\r\n01234")
    assert codes(client.replies()) == []
    client.send(b"56789NOOP\r\n")
    assert codes(client.replies()) == [(503, "5.5.1"), (250, "2.0.0")]


def test_failed_bdat_before_mail_does_not_poison_next_transaction():
    """A stray BDAT before MAIL fails alone; the transaction MAIL starts afterwards is unaffected."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(b"BDAT 3\r\nabc" + MAIL_RCPT + bdat(b"hello"))
    assert codes(client.replies()) == [(503, "5.5.1"), (250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert hooks.bodies == [b"hello"]


@pytest.mark.parametrize("arg", ["x", "", "-1", "5 MORE", "5 LAST extra", "1e3", "9" * 19])
def test_bad_size_closes_connection(arg):
    """A BDAT whose size cannot be read: 501 5.5.4 and the connection is closed (the stream is lost)."""
    client = greeted(Recorder())
    client.send(MAIL_RCPT)
    client.replies()
    client.send(f"BDAT {arg}\r\nNOOP\r\n".encode())
    assert codes(client.replies()) == [(501, "5.5.4")]
    assert client.closed


def test_data_after_bdat_refused():
    """DATA after a BDAT in the same transaction: 503 5.5.1; the BDAT transaction can still finish."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", last=False) + b"DATA\r\n" + bdat(b"def"))
    assert codes(client.replies())[2:] == [(250, "2.0.0"), (503, "5.5.1"), (250, "2.0.0")]
    assert hooks.bodies == [b"abcdef"]


def test_binarymime_with_data_refused():
    """BODY=BINARYMIME then DATA: 503 5.5.1 (RFC 3030: BINARYMIME needs BDAT)."""
    client = greeted(Recorder())
    client.send(b"MAIL FROM:<s@example.test> BODY=BINARYMIME\r\nRCPT TO:<r@example.test>\r\nDATA\r\nNOOP\r\n")
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (503, "5.5.1"), (250, "2.0.0")]


def test_binarymime_with_bdat_accepted():
    """BODY=BINARYMIME with BDAT: any octets arrive, envelope.body_type says BINARYMIME."""
    seen: List[Tuple[str, bytes]] = []

    class Hooks:
        async def on_data(self, session, stream):
            seen.append((session.envelope.body_type, await stream.content()))

    client = greeted(Hooks())
    payload = bytes(range(256))
    client.send(b"MAIL FROM:<s@example.test> BODY=binarymime\r\nRCPT TO:<r@example.test>\r\n" + bdat(payload))
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert seen == [("BINARYMIME", payload)]


def test_binarymime_refused_when_chunking_hidden():
    """With hide_chunking, BODY=BINARYMIME is an unsupported BODY value (501)."""
    client = greeted(hide_chunking=True)
    assert client.command("MAIL FROM:<s@example.test> BODY=BINARYMIME").code == 501


def test_chunk_over_size_limit():
    """Over the limit: 552 5.3.4, the chunk rest skipped, later chunks refused, dialogue in step."""
    hooks = Recorder()
    client = greeted(hooks, size=10)
    client.send(MAIL_RCPT + b"BDAT 30\r\n" + b"z" * 30 + b"BDAT 3\r\nabcBDAT 2 LAST\r\nxyNOOP\r\n")
    replies = client.replies()
    assert codes(replies)[2:] == [(552, "5.3.4"), (552, "5.3.4"), (552, "5.3.4"), (250, "2.0.0")]
    assert hooks.bodies == []
    assert hooks.errors[0].check(MessageTooLarge)
    # A new transaction is not affected.
    client.send(MAIL_RCPT + bdat(b"small"))
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert hooks.bodies == [b"small"]


def test_chunk_over_size_limit_spanning_reads():
    """The oversized chunk's rest is skipped even when it arrives in many reads."""
    client = greeted(Recorder(), size=10)
    client.send(MAIL_RCPT + b"BDAT 1000\r\n")
    for _ in range(10):
        client.send(b"q" * 100)
    client.send(b"NOOP\r\n")
    assert codes(client.replies())[2:] == [(552, "5.3.4"), (250, "2.0.0")]


def test_last_chunk_over_size_limit():
    """Crossing the limit in the LAST chunk: 552 5.3.4, the transaction is over."""
    hooks = Recorder()
    client = greeted(hooks, size=10)
    client.send(MAIL_RCPT + bdat(b"12345", b"678901") + b"RCPT TO:<r@example.test>\r\n")
    assert codes(client.replies())[2:] == [(250, "2.0.0"), (552, "5.3.4"), (503, "5.5.1")]
    assert hooks.bodies == []


def test_exactly_at_size_limit():
    """A message of exactly the limit is accepted."""
    hooks = Recorder()
    client = greeted(hooks, size=10)
    client.send(MAIL_RCPT + bdat(b"12345", b"67890"))
    assert codes(client.replies())[-1] == (250, "2.0.0")
    assert hooks.bodies == [b"1234567890"]


def test_hook_rejecting_before_last_chunk():
    """The hook refusing mid-message: its reply at the next chunk, 554 5.6.0 for later ones, in step."""
    hooks = Pending()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", last=False))
    assert codes(client.replies())[-1] == (250, "2.0.0")
    hooks.answers[0].errback(SMTPError(550, "Spam", "5.7.1"))
    client.send(bdat(b"def", b"ghi") + b"NOOP\r\n")
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [
        (550, "5.7.1", "Spam"), (554, "5.6.0", "Error: message refused"), (250, "2.0.0", "OK")]
    assert hooks.readers[0].reason is not None and hooks.readers[0].reason.check(MessageDiscarded)
    # The transaction is over: a fresh one works.
    client.send(MAIL_RCPT + bdat(b"again"))
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5")]
    hooks.answers[1].callback(None)
    assert codes(client.replies()) == [(250, "2.0.0")]
    assert b"".join(hooks.readers[1].chunks) == b"again"


def test_hook_rejecting_at_once_answered_at_last_chunk():
    """A hook that refuses before any byte (SMTP): the refusal is the LAST chunk's reply."""
    class No:
        def on_data(self, session, stream):
            raise SMTPError(550, "No mail today", "5.7.1")

    client = greeted(No())
    client.send(MAIL_RCPT + bdat(b"abc") + b"NOOP\r\n")
    assert [(r.code, r.text) for r in client.replies()][2:] == [(550, "No mail today"), (250, "OK")]


def test_rset_between_chunks_abandons_transaction():
    """RSET between chunks: the reader gets a failure, the hook is cancelled, a new transaction works."""
    hooks = Pending()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", last=False) + b"RSET\r\n")
    assert [r.text for r in client.replies()][2:] == ["3 octets received", "OK"]
    reader = hooks.readers[0]
    assert reader.chunks == [b"abc"]
    assert reader.reason is not None and reader.reason.check(MessageDiscarded)
    assert hooks.cancelled == [hooks.answers[0]]
    assert client.protocol.session.envelope.mail_from is None
    client.send(MAIL_RCPT + bdat(b"fresh"))
    hooks.answers[1].callback(None)
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert b"".join(hooks.readers[1].chunks) == b"fresh"


def test_rset_between_chunks_cancels_async_hook():
    """An async data hook waiting on something is cancelled by RSET between chunks."""
    outcome: List[str] = []

    class Async:
        async def on_data(self, session, stream):
            stream.deliver_body(Reader())
            try:
                await Deferred()
            except CancelledError:
                outcome.append("cancelled")
                raise

    client = greeted(Async())
    client.send(MAIL_RCPT + bdat(b"abc", last=False) + b"RSET\r\nNOOP\r\n")
    assert [r.code for r in client.replies()] == [250] * 5
    assert outcome == ["cancelled"]


def test_ehlo_between_chunks_abandons_transaction():
    """EHLO between chunks resets like RSET: the reader learns, the next BDAT has no MAIL."""
    hooks = Pending()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", last=False) + b"EHLO again.test\r\n" + bdat(b"def"))
    assert codes(client.replies())[-1] == (503, "5.5.1")
    assert hooks.readers[0].reason.check(MessageDiscarded)
    assert hooks.cancelled == [hooks.answers[0]]


def test_disconnect_mid_chunk():
    """The client vanishes mid-chunk: the reader gets ConnectionLost, nothing is accepted."""
    hooks = Pending()
    server, _ = make_server(hooks)
    accepted: List[Any] = []
    server.observe("message", lambda *args: accepted.append(args))
    client = TestClient(server)
    client.send(b"EHLO c.test\r\n" + MAIL_RCPT + b"BDAT 100 LAST\r\n" + b"partial")
    reader = hooks.readers[0]
    assert reader.chunks == [b"partial"]
    client.disconnect()
    assert reader.reason is not None and reader.reason.check(ConnectionLost)
    assert hooks.cancelled == [hooks.answers[0]]
    assert accepted == []


def test_disconnect_mid_chunk_async_content():
    """An async hook awaiting content() sees ConnectionLost when the client vanishes mid-chunk."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + b"BDAT 10\r\n12345")
    client.disconnect()
    assert hooks.bodies == []
    assert hooks.errors and hooks.errors[0].check(ConnectionLost)


def test_disconnect_between_chunks():
    """The client vanishes between chunks: the reader gets a failure (not MessageDone)."""
    hooks = Pending()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(b"abc", last=False))
    client.disconnect()
    assert hooks.readers[0].reason.check(ConnectionLost)


def test_timeout_mid_chunk():
    """A client that stops mid-chunk gets 421 4.4.2 after socket_timeout; the reader gets ConnectionLost."""
    hooks = Pending()
    server, clock = make_server(hooks, socket_timeout=30)
    client = TestClient(server)
    client.send(b"EHLO c.test\r\n" + MAIL_RCPT + b"BDAT 100 LAST\r\npartial")
    client.replies()
    clock.advance(31)
    assert codes(client.replies()) == [(421, "4.4.2")]
    assert client.closed
    assert hooks.readers[0].reason.check(ConnectionLost)


# -- property: chunking and read boundaries never change the bytes -------------------


@st.composite
def chunked_bodies(draw):
    """A body, the cut points that make it chunks, and cut points for the wire bytes."""
    body = draw(st.binary(max_size=300) | st.sampled_from([b"\r\n.\r\n", b".\r\n", b"a\r\n.\r\nBDAT 1\r\n"]))
    cuts = sorted(draw(st.sets(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    zero_last = draw(st.booleans())  # end with an empty BDAT 0 LAST
    return body, chunks, zero_last, draw(st.lists(st.integers(1, 50), max_size=20))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_bodies())
def test_any_chunking_and_any_reads_deliver_the_same_bytes(case):
    """However the body is cut into BDAT chunks and the wire into reads, the hook gets the same bytes
    (BODY=BINARYMIME: any octets; without it see test_bdat_verdict_matches_the_oracle)."""
    body, chunks, zero_last, sizes = case
    hooks = Recorder()
    client = greeted(hooks)
    mail_rcpt = MAIL_RCPT.replace(b">\r\n", b"> BODY=BINARYMIME\r\n", 1)
    if zero_last:
        wire = mail_rcpt + bdat(*chunks, last=False) + b"BDAT 0 LAST\r\nNOOP\r\n"
    else:
        wire = mail_rcpt + bdat(*chunks) + b"NOOP\r\n"
    pos = 0
    for size in sizes:
        client.send(wire[pos:pos + size])
        pos += size
    client.send(wire[pos:])
    replies = client.replies()
    assert hooks.bodies == [body]
    n = len(chunks) + (1 if zero_last else 0)
    assert [r.code for r in replies] == [250] * (2 + n + 1)
    assert replies[-1].text == "OK"


# -- LMTP -----------------------------------------------------------------------------------


def lmtp_client(hooks: Any = None, **options: Any) -> TestClient:
    """An LMTP client after LHLO, MAIL and two RCPTs (all replies read)."""
    server, _ = make_server(hooks, lmtp=True, **options)
    client = TestClient(server)
    client.send(b"LHLO c.test\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\n"
                b"RCPT TO:<b@example.test>\r\n")
    assert [r.code for r in client.replies()] == [250] * 4
    return client


def test_lmtp_bdat_last_per_recipient():
    """LMTP: non-last chunks get one reply, BDAT LAST one per recipient."""
    hooks = Recorder()
    client = lmtp_client(hooks)
    client.send(bdat(b"abc", b"def") + b"NOOP\r\n")
    assert [r.text for r in client.replies()] == [
        "3 octets received", "OK: message accepted for <a@example.test>",
        "OK: message accepted for <b@example.test>", "OK"]
    assert hooks.bodies == [b"abcdef"]


def test_lmtp_bdat_per_recipient_list():
    """LMTP with BDAT: the hook's list answers each recipient."""
    class Hooks:
        async def on_data(self, session, stream):
            await stream.content()
            return [SMTPError(452, "Over quota", "4.2.2"), Reply(250, "Saved", "2.0.0")]

    client = lmtp_client(Hooks())
    client.send(b"BDAT 0 LAST\r\n")
    assert [(r.code, r.text) for r in client.replies()] == [(452, "Over quota"), (250, "Saved")]


def test_lmtp_bdat_hook_rejects_at_last_per_recipient():
    """LMTP: a hook refusing after reading the whole body gives its error once per recipient."""
    class Hooks:
        async def on_data(self, session, stream):
            await stream.content()
            raise SMTPError(550, "Nope", "5.7.1")

    client = lmtp_client(Hooks())
    client.send(bdat(b"abc"))
    assert codes(client.replies()) == [(550, "5.7.1")] * 2


def test_lmtp_bdat_last_over_size_per_recipient():
    """LMTP: a LAST chunk crossing the size limit gets 552 5.3.4 once per recipient, then NOOP 250."""
    client = lmtp_client(Recorder(), size=5)
    client.send(bdat(b"0123456789") + b"NOOP\r\n")
    assert codes(client.replies()) == [(552, "5.3.4"), (552, "5.3.4"), (250, "2.0.0")]


def test_lmtp_bdat_last_hook_refused_early_per_recipient():
    """LMTP: a hook that refused before the LAST chunk arrived still gets one reply per recipient."""
    class No:
        def on_data(self, session, stream):
            raise SMTPError(550, "Refused", "5.7.1")

    client = lmtp_client(No())
    client.send(bdat(b"abc") + b"NOOP\r\n")
    assert codes(client.replies()) == [(550, "5.7.1"), (550, "5.7.1"), (250, "2.0.0")]


def test_lmtp_failed_chunk_then_last_per_recipient():
    """LMTP: an oversized non-last chunk gets one 552; the LAST of that transaction one per recipient."""
    client = lmtp_client(Recorder(), size=5)
    client.send(bdat(b"0123456789", b"x") + b"NOOP\r\n")
    assert codes(client.replies()) == [(552, "5.3.4")] * 3 + [(250, "2.0.0")]


@pytest.mark.parametrize("before,expected", [(b"", (503, "5.5.1")),
                                             (b"MAIL FROM:<s@example.test>\r\n", (554, "5.5.1"))],
                         ids=["no-mail", "no-rcpt"])
def test_lmtp_bdat_last_without_recipients_gets_one_reply(before, expected):
    """LMTP: BDAT LAST without MAIL or without an accepted RCPT still gets exactly one error reply."""
    server, _ = make_server(Recorder(), lmtp=True)
    client = TestClient(server)
    assert client.command("LHLO c.test").code == 250
    client.send(before + b"BDAT 3 LAST\r\nabcNOOP\r\n")
    replies = codes(client.replies())
    assert replies[-2:] == [expected, (250, "2.0.0")]


# -- bare CR/LF and NUL without BODY=BINARYMIME (issue 10) -------------------------------

@pytest.mark.parametrize("chunks", [
    [b"hello\r.\nMAIL FROM:<ceo@victim.example>\r\n"],  # CR and LF with bytes between
    [b"a\rX\nb\r\n"],
    [b"a\r", b"X\r\n"],                                 # CR last in a chunk, no LF next
    [b"a\r\n", b"\nb\r\n"],                             # LF first in a chunk after a CRLF
    [b"ends with CR\r"],                                # CR last in the LAST chunk
    [b"nul\x00byte\r\n"],
])
def test_bdat_bare_line_endings_and_nul_refused(chunks):
    """Without BINARYMIME, a bare CR/LF or NUL anywhere (across chunks too) gets 550 5.6.0; the hook fails."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(*chunks))
    replies = client.replies()
    assert (replies[-1].code, replies[-1].enhanced) == (550, "5.6.0")
    assert hooks.bodies == []
    # The transaction is over: a new one works.
    client.send(MAIL_RCPT + bdat(b"ok\r\n"))
    assert codes(client.replies())[-1] == (250, "2.0.0")


def test_bdat_crlf_split_between_chunks_is_clean():
    """A CR ending one chunk and the LF starting the next are one CRLF, as are one-byte chunks."""
    body = b"Subject: x\r\n\r\nline\r\n.dot\r\n"
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(*[body[i:i + 1] for i in range(len(body))]))
    assert codes(client.replies())[-1] == (250, "2.0.0")
    assert hooks.bodies == [body]


def test_bdat_nul_later_chunks_get_the_error():
    """After a refused chunk, later chunks of the transfer get the same 550 5.6.0."""
    client = greeted(Recorder())
    client.send(MAIL_RCPT + bdat(b"a\x00\r\n", b"more\r\n", b"end\r\n"))
    assert codes(client.replies())[2:] == [(550, "5.6.0")] * 3


def test_bdat_bare_accepted_with_accept_policy():
    """bare_line_endings="accept" passes bare CR/LF and NUL in BDAT content through."""
    hooks = Recorder()
    client = greeted(hooks, bare_line_endings="accept")
    client.send(MAIL_RCPT + bdat(b"a\rX\nb\x00\r\n"))
    assert codes(client.replies())[-1] == (250, "2.0.0")
    assert hooks.bodies == [b"a\rX\nb\x00\r\n"]


BAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"\x00", b"a", b"\r\n.", b"xyz"]), max_size=30),
       st.data())
def test_bdat_verdict_matches_the_oracle(parts, data):
    """Without BINARYMIME, BDAT content is refused (550 5.6.0) exactly when it has a bare CR/LF or a NUL,
    whatever the chunking (one byte per chunk included); accepted content arrives byte for byte."""
    body = b"".join(parts)
    if data.draw(st.booleans()):
        chunks = [body[i:i + 1] for i in range(len(body))] or [b""]
    else:
        cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=8)))
        chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    hooks = Recorder()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(*chunks))
    last = client.replies()[-1]
    if BAD.search(body):
        assert (last.code, last.enhanced) == (550, "5.6.0")
        assert hooks.bodies == []
    else:
        assert (last.code, last.enhanced) == (250, "2.0.0")
        assert hooks.bodies == [body]
