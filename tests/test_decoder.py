# -*- test-case-name: tests.test_decoder -*-
"""
Property tests for the DATA decoder: any split of the input gives the same
body, and only <CRLF>.<CRLF> ends a message.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._data import BARE_LINE_ENDING, NUL_IN_BODY, BodyCheck, DotDecoder, body_fault
from txsmtpsrv.testing import dot_stuff


def decode(pieces, check_bare=True):
    """Feed pieces; return (body, rest or None, bare flag)."""
    decoder = DotDecoder(check_bare)
    out = []
    for i, piece in enumerate(pieces):
        payload, rest = decoder.feed(piece)
        out.append(payload)
        if rest is not None:
            return b"".join(out), rest + b"".join(pieces[i + 1:]), decoder.bare
    return b"".join(out), None, decoder.bare


def splits(data, cuts):
    """Cut C{data} at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


# Lines of CRLF-terminated text that are heavy in the bytes that matter.
line = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
tricky = st.sampled_from([b".", b"..", b"...", b".x", b"x.", b". ", b""])
lines = st.lists(st.one_of(line, tricky), max_size=12)


@settings(max_examples=300, deadline=None)
@given(lines, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8), st.binary(max_size=20))
def test_any_split_gives_the_same_body(body_lines, cuts, tail):
    """Splitting the stuffed body anywhere yields the original body and the same rest."""
    body = b"".join(l + b"\r\n" for l in body_lines)
    wire = dot_stuff(body) + tail
    got, rest, bare = decode(splits(wire, cuts))
    assert got == body
    assert rest == tail
    assert bare is (b"\0" in body)  # CRLF lines are clean; a NUL is refused too (issue 10)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.lists(st.integers(min_value=0, max_value=1000), max_size=6))
def test_never_ends_without_crlf_dot_crlf(data, cuts):
    """Arbitrary bytes without CRLF.CRLF never end the message, however split."""
    stream = b"\r\n" + data  # the body starts at a line start
    if b"\r\n.\r\n" in stream:
        return
    _, rest, _ = decode(splits(data, cuts), check_bare=False)
    assert rest is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.lists(st.integers(min_value=0, max_value=1000), max_size=6))
def test_split_invariance_on_arbitrary_bytes(data, cuts):
    """Any bytes decode identically whole or split, including where the end is found."""
    assert decode(splits(data, cuts)) == decode([data])


def test_smuggling_sequences_do_not_end_the_message():
    """<LF>.<LF>, <LF>.<CR><LF> and <CR>.<CR> are body bytes, not the end."""
    for smuggle in (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n"):
        body, rest, bare = decode([b"a" + smuggle + b"MAIL FROM:<x@y>\r\n"])
        assert rest is None, smuggle
        assert bare is True, smuggle


def test_dot_unstuffing_and_first_line():
    """A doubled leading dot loses one dot, also on the very first line."""
    body, rest, _ = decode([b"..first\r\nmid\r\n...x\r\n.\r\nQUIT\r\n"])
    assert body == b".first\r\nmid\r\n..x\r\n"
    assert rest == b"QUIT\r\n"


def test_empty_message():
    """A lone dot is an empty body."""
    assert decode([b".\r\n"]) == (b"", b"", False)


def test_terminator_split_byte_by_byte():
    """The terminator arriving one byte per read still ends the message."""
    wire = b"hello\r\n.\r\nNOOP\r\n"
    body, rest, _ = decode([wire[i:i + 1] for i in range(len(wire))])
    assert body == b"hello\r\n"
    assert rest == b"NOOP\r\n"


def test_bare_cr_and_lf_are_flagged_only_when_checked():
    """Bare CR or LF sets the flag when checking, and passes through unchanged either way."""
    for data in (b"a\nb\r\n.\r\n", b"a\rb\r\n.\r\n"):
        body, _, bare = decode([data])
        assert bare is True
        body2, _, bare2 = decode([data], check_bare=False)
        assert bare2 is False and body2 == body == data[:-3]


# -- issue 10: the bare CR/LF and NUL check is exact, however the bytes are cut ----------

BAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")

# Bodies biased toward the bytes that matter: CR, LF, dots, NUL, CRLF and CRLF ".".
piece = st.sampled_from([b"\r", b"\n", b".", b"\x00", b"\r\n", b"\r\n.", b"..", b"a", b"xy"])
bodies = st.lists(piece, max_size=40).map(b"".join)


def cut(data, draw_or_single, cuts):
    """One byte per piece, or cut at C{cuts}."""
    if draw_or_single:
        return [data[i:i + 1] for i in range(len(data))]
    return splits(data, cuts)


@settings(max_examples=400, deadline=None)
@given(bodies, st.booleans(), st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_bare_check_matches_the_oracle(body, single, cuts):
    """The decoder flags a body exactly when it has a CR not followed by LF, an LF not after CR, or a NUL,
    whatever the reads (one byte at a time included); a clean body is delivered byte for byte."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"  # a DATA body always ends with CRLF before the dot
    wire = dot_stuff(body) + b"NOOP\r\n"  # dot_stuff adds the final dot
    got, rest, bare = decode(cut(wire, single, cuts))
    assert rest == b"NOOP\r\n"
    assert bare is bool(BAD.search(body)), body
    assert got == body  # the check never changes what is delivered


def test_the_issue_examples_are_flagged():
    """The two bypasses from issue 10, whole and one byte at a time."""
    for body in (b"hello\r.\nMAIL FROM:<ceo@victim.example>\r\n", b"a\rX\nb\r\n", b"nul\x00\r\n"):
        wire = body + b".\r\n"
        assert decode([wire])[2] is True
        assert decode([wire[i:i + 1] for i in range(len(wire))])[2] is True


@settings(max_examples=500, deadline=None)
@given(st.lists(piece, max_size=30).map(b"".join), st.lists(st.integers(min_value=0, max_value=100), max_size=8))
def test_body_check_pieces_match_the_oracle(data, cuts):
    """L{BodyCheck} (BDAT) judges any cutting of the bytes exactly as the oracle judges them whole."""
    for pieces in (splits(data, cuts), [data[i:i + 1] for i in range(len(data))]):
        check = BodyCheck()
        for p in pieces:
            check.feed(p)
        assert (check.end() is not None) is bool(BAD.search(data)), data
        assert check.fault in (None, BARE_LINE_ENDING, NUL_IN_BODY)


def test_body_fault_names_nul():
    """A NUL gets its own reply text; a bare CR or LF the bare line ending one."""
    assert body_fault(b"a\x00\r\n", 4) == NUL_IN_BODY
    assert body_fault(b"a\rb\r\n", 5) == BARE_LINE_ENDING
    assert body_fault(b"a\r\nb\r\n", 6) is None
    assert body_fault(b"a\r\nb\r", 4) is None  # up to end only: the CR is the caller's to carry
