# -*- test-case-name: tests.test_dotcodec_differential -*-
"""
The DATA decoder and the bare CR/LF/NUL check (the SMTP-smuggling defence)
against their 94129f0 versions (C{tests/_dotcodec_94129f0.py}, kept verbatim):
hot22 rewrote C{body_fault} (a CRLF count instead of three C{replace}s) and
made L{DotDecoder.feed} check the payload instead of the buffer. Every read
must give the old payload, rest, fault and carried bytes, however the input is
cut; any body, BDAT piece or end offset the same fault text.
"""

from __future__ import annotations

import importlib.util
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv import _dotcodec as new

_spec = importlib.util.spec_from_file_location(
    "_dotcodec_94129f0", os.path.join(os.path.dirname(__file__), "_dotcodec_94129f0.py"))
assert _spec is not None and _spec.loader is not None
old = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(old)

# The bytes that matter, in the runs that matter: CR, LF, NUL, dots after CRLF,
# the terminator and its halves, the issue 10 bypasses; and plain bytes.
_piece = st.sampled_from([
    b"\r", b"\n", b".", b"\x00", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\r\n..", b"\n.", b"\n\r",
    b"\r\r\n", b"\r.\n", b"a\rX\nb", b"..", b"a", b"xy", b"MAIL FROM:<x@y>",
])
bodies = st.one_of(st.lists(_piece, max_size=40).map(b"".join), st.binary(max_size=80))
cut_points = st.lists(st.integers(min_value=0, max_value=400), max_size=12)


def _cuts(data: bytes, points: list[int], single: bool) -> list[bytes]:
    if single:
        return [data[i:i + 1] for i in range(len(data))]
    marks = sorted({p % (len(data) + 1) for p in points})
    pieces, last = [], 0
    for p in marks:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=3000, deadline=None)
@given(bodies, cut_points, st.booleans(), st.booleans(), st.booleans())
def test_decoder_reads_match_94129f0(data, points, single, check_bare, terminate):
    """Read by read: the same payload, rest, fault, carry and first-line state."""
    if terminate:
        data += b"\r\n.\r\nQUIT\r\n"
    was, now = old.DotDecoder(check_bare), new.DotDecoder(check_bare)
    for piece in _cuts(data, points, single):
        expected, got = was.feed(piece), now.feed(piece)
        assert type(got[0]) is bytes
        assert got == expected, (data, piece)
        assert now.fault == was.fault and now.bare is was.bare, data
        assert now._carry == was._carry and now._first is was._first, data
        if got[1] is not None:
            break


@settings(max_examples=3000, deadline=None)
@given(bodies, st.integers(min_value=0, max_value=100))
def test_body_fault_matches_94129f0(data, end):
    """Any text and end offset: the same fault, NUL and bare line ending told apart the same."""
    end = min(end, len(data))
    assert new.body_fault(data, end) == old.body_fault(data, end), data
    assert new.body_fault(data, len(data)) == old.body_fault(data, len(data)), data


@settings(max_examples=1000, deadline=None)
@given(bodies, cut_points, st.booleans())
def test_body_check_matches_94129f0(data, points, single):
    """BDAT's check (no dot-stuffing) over any cutting: the same fault at each piece and at the end."""
    was, now = old.BodyCheck(), new.BodyCheck()
    for piece in _cuts(data, points, single):
        assert now.feed(piece) == was.feed(piece), data
    assert now.end() == was.end(), data


def test_the_examples_named_in_review():
    """The shapes hot22's review named, whole and one byte at a time."""
    for body in (b"", b".", b"\r", b"\n", b"\x00", b"\r\r\n", b"\n\r", b"a\rX\nb", b"\r\n.\n",
                 b".\r\n", b"..\r\n", b"x\r\n.\r\n", b"a\r", b"\r\n\r", b"\r\n.", b"\r\n.\r"):
        for tail in (b"", b"\r\n.\r\n", b".\r\n", b"\r\n"):
            data = body + tail
            for single in (False, True):
                was, now = old.DotDecoder(), new.DotDecoder()
                for piece in _cuts(data, [], single):
                    assert now.feed(piece) == was.feed(piece), data
                    assert now.fault == was.fault and now._carry == was._carry, data
