# -*- test-case-name: tests.test_bdat_errors -*-
"""
BDAT errors keep the dialogue in step: chunks without MAIL or RCPT, bad
sizes, DATA after BDAT, BINARYMIME misuse, size limits, hooks rejecting
early, and transactions abandoned (RSET, EHLO, disconnect, timeout) stopping
the reader and the hook.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost

from txsmtpsrv import SMTPError
from txsmtpsrv._data import MessageDiscarded, MessageTooLarge
from txsmtpsrv.testing import TestClient, make_server
from tests._bdat import MAIL_RCPT, Pending, Reader, Recorder, bdat, greeted
from tests._memory import codes


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


def test_chunk_refused_without_rcpt_fails_the_transaction():
    """A chunk refused for want of a recipient is lost: a RCPT after it cannot let a later chunk end the
    message without it (RFC 3030 2: the transaction failed); the next transaction is unaffected."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<s@example.test>\r\nBDAT 3\r\nabcRCPT TO:<r@example.test>\r\nBDAT 3 LAST\r\ndef"
                + MAIL_RCPT + bdat(b"hello"))
    replies = client.replies()
    assert codes(replies) == [(250, "2.1.0"), (554, "5.5.1"), (250, "2.1.5"), (554, "5.5.1"),
                              (250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
    assert "no valid recipients" in replies[1].text  # (a recipient was accepted by then: not the reason)
    assert "an earlier chunk was refused" in replies[3].text
    assert hooks.bodies == [b"hello"]


def test_data_after_refused_chunk_refused():
    """DATA after a BDAT of the same transaction MUST be 503 (RFC 3030 2), also when that chunk was
    refused (no recipient yet): DATA cannot deliver the message without it."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<s@example.test>\r\nBDAT 3\r\nabcRCPT TO:<r@example.test>\r\nDATA\r\nRSET\r\n"
                + MAIL_RCPT + b"DATA\r\nhi\r\n.\r\n")
    assert codes(client.replies()) == [(250, "2.1.0"), (554, "5.5.1"), (250, "2.1.5"), (503, "5.5.1"),
                                       (250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (354, None),
                                       (250, "2.0.0")]
    assert hooks.bodies == [b"hi\r\n"]


class Picky(Recorder):
    """Recorder hooks that refuse the recipient C{nobody@...}."""

    def on_rcpt_to(self, session, address):
        if address.local_part == "nobody":
            raise SMTPError(550, "No such user", "5.1.1")


_STEP = st.one_of(st.booleans().map(lambda ok: b"RCPT TO:<%s@example.test>\r\n" % (b"r" if ok else b"nobody")),
                  st.tuples(st.binary(max_size=4), st.booleans()).map(lambda c: bdat(c[0], last=c[1])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_STEP, max_size=8))
def test_accepted_message_has_every_chunk(steps):
    """Whatever RCPTs and chunks (refused or not) a transaction mixes, a message that is accepted is
    every chunk the client sent in it, up to the LAST one: none is lost (RFC 3030 2). And it is
    accepted exactly when a recipient was accepted before the first chunk (else that chunk is
    refused, and the transaction with it)."""
    hooks = Picky()
    client = greeted(hooks, bare_line_endings="accept")
    wire = b"MAIL FROM:<s@example.test>\r\n" + b"".join(steps) + bdat(b"") + b"RSET\r\n"
    client.send(wire)
    client.replies()
    chunks, rest = [], wire
    while b"BDAT " in rest:  # what the client sent as chunks, up to and including its first LAST
        rest = rest.partition(b"BDAT ")[2]
        command, _, rest = rest.partition(b"\r\n")
        size = int(command.split(b" ")[0])
        chunks.append(rest[:size])
        rest = rest[size:]
        if command.endswith(b"LAST"):
            break
    first = next((i for i, step in enumerate(steps) if step.startswith(b"BDAT ")), len(steps))
    accepted = any(step.startswith(b"RCPT TO:<r@") for step in steps[:first])
    assert hooks.bodies == ([b"".join(chunks)] if accepted else [])


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
