# -*- test-case-name: tests.test_bdat_bytes -*-
"""
The bytes BDAT delivers: however the body is cut into chunks and the wire
into reads, the hook gets the same bytes (property test); without
BODY=BINARYMIME a bare CR or LF or a NUL in any chunk is refused with 550
5.6.0 (issue 10), checked against an oracle.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._bdat import MAIL_RCPT, Recorder, bdat, greeted
from tests._memory import codes


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
