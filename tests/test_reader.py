"""Tests for L{txsmtpsrv._reader.CommandReader}: lines by offset, over-long lines, raw takes, discard."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txsmtpsrv._reader import TOO_LONG, CommandReader


def lines(reader: CommandReader) -> list:
    out = []
    while True:
        line = reader.line()
        if line is None:
            return out
        out.append(line)


def test_lines_and_line_endings():
    """LF ends a line; a CR before it is dropped; a bare CR stays."""
    r = CommandReader(512)
    r.feed(b"EHLO a\r\nNOOP\nX\rY\r\npartial")
    assert lines(r) == [b"EHLO a", b"NOOP", b"X\rY"]
    assert r.pending == len(b"partial") and not r.idle
    r.feed(b" line\r\n")
    assert lines(r) == [b"partial line"] and r.idle


def test_too_long_with_end_in_buffer():
    """An over-long line is reported once; the next line is read normally."""
    r = CommandReader(10)
    r.feed(b"A" * 11 + b"\r\nNOOP\r\n")
    assert lines(r) == [TOO_LONG, b"NOOP"]
    r = CommandReader(10)
    r.feed(b"A" * 10 + b"\nB" * 1 + b"\n")  # exactly the limit (no CR) is fine
    assert lines(r) == [b"A" * 10, b"B"]


def test_too_long_without_end_skips_to_next_lf():
    """Without an end in sight the line is dropped up to the next LF, across reads."""
    r = CommandReader(10)
    r.feed(b"B" * 11)
    assert lines(r) == [TOO_LONG]
    r.feed(b"more of it")
    assert lines(r) == [] and not r.idle
    r.feed(b"tail\r\nNOOP\r\n")
    assert lines(r) == [b"NOOP"]


def test_take_and_push_back():
    """Raw takes (DATA, BDAT) share the buffer; unused bytes go back in front."""
    r = CommandReader(512)
    r.feed(b"DATA\r\nbody bytes")
    assert r.line() == b"DATA"
    assert r.take(4) == b"body"
    assert r.take() == b" bytes" and r.idle
    r.feed(b"xyz")
    assert r.take() == b"xyz"  # no copy when the whole buffer goes
    r.feed(b"NOOP\r\n")
    r.push_back(b"QUIT\r\n")
    assert lines(r) == [b"QUIT", b"NOOP"]


def test_discard_forgets_everything():
    """STARTTLS: what is buffered is handed back and dropped, a skipped line too."""
    r = CommandReader(10)
    r.feed(b"MAIL FROM:<evil>\r\nRCPT")
    assert r.line() is TOO_LONG  # the MAIL line is over our tiny limit
    assert r.discard() == b"RCPT"
    r2 = CommandReader(10)
    r2.feed(b"C" * 20)
    assert r2.line() is TOO_LONG
    r2.discard()
    r2.feed(b"NOOP\r\n")  # not skipped any more
    assert lines(r2) == [b"NOOP"]


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=20), st.data())
def test_any_chunking_gives_the_same_lines(commands, data):
    """However the stream is split into reads, the same lines come out."""
    stream = b"".join(c + b"\r\n" for c in commands)
    r = CommandReader(512)
    got = []
    pos = 0
    while pos < len(stream):
        n = data.draw(st.integers(1, 17))
        r.feed(stream[pos:pos + n])
        pos += n
        got.extend(lines(r))
    assert got == commands  # one CR before the LF is dropped, the rest kept
