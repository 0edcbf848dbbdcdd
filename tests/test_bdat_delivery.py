# -*- test-case-name: tests.test_bdat_delivery -*-
"""
CHUNKING / BDAT and BINARYMIME (RFC 3030) in L{txsmtpsrv._protocol}, when
all goes well: advertising, chunks streaming into the same data hook and
L{MessageStream} as DATA, byte for byte, replies in order, and backpressure
pausing the transport until the reader catches up.
"""

from __future__ import annotations

from typing import List

from twisted.internet.defer import Deferred

from txsmtpsrv import Reply
from txsmtpsrv.testing import TestClient, make_server
from tests._bdat import MAIL_RCPT, Pending, Recorder, bdat, greeted
from tests._memory import codes, count_writes


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
