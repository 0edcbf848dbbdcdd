# The DATA decoder as of 94129f0 (before hot22), kept verbatim as the oracle of tests/test_dotcodec_differential.py.
"""
The DATA body decoder (RFC 5321 4.1.1.4, 4.5.2) and body checks, sans-IO.

L{DotDecoder} turns the raw bytes after C{354} into payload chunks, undoes
dot-stuffing and finds the end of the message, carrying at most four bytes
across reads. Only C{<CRLF>.<CRLF>} ends a message, so C{<LF>.<LF>} or
C{<LF>.<CR><LF>} cannot smuggle a second message past us; and by default a
body with any CR or LF outside a CRLF pair, or a NUL, is refused
(L{body_fault}, L{BodyCheck}), so no such sequence reaches a downstream
relay either.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["BARE_LINE_ENDING", "NUL_IN_BODY", "BodyCheck", "DotDecoder", "body_fault"]

_CRLF = b"\r\n"
# Every byte but CR, LF and NUL: bytes.translate deletes these, keeping the three.
_NOT_CR_LF_NUL = bytes(i for i in range(256) if i not in (0, 10, 13))
# Reply texts for a refused body (550 5.6.0), also the reason the stream is aborted with.
BARE_LINE_ENDING = "Error: message contains bare CR or LF characters"
NUL_IN_BODY = "Error: message contains NUL characters"
# Dots a line-start search looks at one by one (memchr speed) before it falls
# back to searching for CRLF "." (a slower byte-by-byte scan) in that buffer.
_DOT_PROBES = 8


def body_fault(data: bytes, end: int) -> Optional[str]:
    """
    Check C{data[:end]} for a CR not followed by LF, an LF not preceded by CR,
    or a NUL (RFC 5321 2.3.8 and 4.1.1.4, RFC 6152, RFC 2045 2.7/2.8).

    The caller must not cut a CRLF between two calls (a CR last in one call
    and its LF first in the next would both look bare).

    Only C-speed passes, no per-line Python work, and none of the slow
    multi-byte searches: C{translate} keeps the CR, LF and NUL bytes, which
    must read C{CRLF CRLF ...}; that alone misses a CR and an LF with other
    bytes between (C{"a\\rX\\nb"} keeps C{"\\r\\n"} too: the smuggling bypass of
    issue 10), so the text without its CRs must also equal the text without its
    LFs once CR is written as LF. With the CRs and LFs alternating, that
    equality holds exactly when each CR's LF comes right after it: the i-th
    line break then has as many other bytes before it in both texts.

    @return: C{None} if clean, else the reply text saying what is wrong.
    """
    text = data if end == len(data) else data[:end]
    ends = text.translate(None, _NOT_CR_LF_NUL)
    if not ends:
        return None
    if ends != _CRLF * (len(ends) >> 1):
        return NUL_IN_BODY if b"\0" in ends else BARE_LINE_ENDING
    if text.replace(b"\r", b"") != text.replace(b"\n", b"").replace(b"\r", b"\n"):
        return BARE_LINE_ENDING
    return None


class BodyCheck:
    """
    L{body_fault} over a body that arrives in arbitrary pieces (BDAT chunks):
    a CR last in one piece is held until the next piece shows whether an LF
    follows it.
    """

    __slots__ = ("_cr", "fault")

    def __init__(self) -> None:
        self._cr = False  # the previous piece ended with a CR not yet judged
        self.fault: Optional[str] = None

    def feed(self, data: bytes) -> Optional[str]:
        """Check the next piece; return (and remember) the first fault found."""
        if self.fault is not None or not data:
            return self.fault
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        self.fault = body_fault(data, len(data) - 1 if self._cr else len(data))
        return self.fault

    def end(self) -> Optional[str]:
        """The body is complete: a CR still held is bare."""
        if self.fault is None and self._cr:
            self.fault = BARE_LINE_ENDING
        return self.fault


def _dot_line(buf: bytes, start: int, probe: bool) -> tuple[int, bool]:
    """
    Find C{CRLF "."} in C{buf} from C{start}: the next line whose leading dot
    must go, or the terminator.

    Looking at each dot with C{find(b".")} runs at memchr speed where dots are
    rare (base64, most large bodies); once a buffer shows many dots that do
    not start a line, the search for the three bytes takes over for the rest
    of it, so prose costs what it always did.

    @return: C{(position of the CR or -1, whether to keep probing)}.
    """
    if probe:
        dot = buf.find(b".", start + 2)
        for _ in range(_DOT_PROBES):
            if dot < 0:
                return -1, True
            if buf.startswith(_CRLF, dot - 2):
                return dot - 2, True
            dot = buf.find(b".", dot + 1)
        if dot < 0:
            return -1, False
        start = dot - 2
    return buf.find(b"\r\n.", start), False


class DotDecoder:
    """
    Incremental DATA decoder (RFC 5321 4.1.1.4, 4.5.2).

    @ivar fault: once a bare CR or LF, or a NUL, was seen (only if
        C{check_bare}), the reply text saying which (L{BARE_LINE_ENDING} or
        L{NUL_IN_BODY}); else C{None}.
    """

    __slots__ = ("_carry", "_first", "_check_bare", "fault")

    def __init__(self, check_bare: bool = True) -> None:
        # The body starts at a line start: pretend a CRLF came before it so
        # that a dot on the first line is handled like any other.
        self._carry = b"\r\n"
        self._first = True
        self._check_bare = check_bare
        self.fault: Optional[str] = None

    @property
    def bare(self) -> bool:
        """Whether the body was found faulty (see C{fault})."""
        return self.fault is not None

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """
        Decode the next bytes.

        One scan for C{CRLF "."} finds both the end of the message and the
        lines whose leading dot must go (RFC 5321 4.5.2: the first character
        of a line is deleted when it is a period); L{body_fault} checks the
        payload part of the same buffer. Only a CR or a CRLF (or CRLF "."
        and what may follow) is carried to the next read, so no CRLF is ever
        split between two checks.

        @return: C{(payload, rest)}; C{rest} is C{None} while the message goes
            on, else the bytes after the terminating dot (pipelined commands).
        """
        buf = self._carry + data if self._carry else data
        n = len(buf)
        parts: list[bytes] = []
        start = 0
        end = n  # where the payload of this buffer stops
        rest: Optional[bytes] = None
        pos, probe = _dot_line(buf, 0, True)
        while pos >= 0:
            after = buf[pos + 3:pos + 5]
            if after == b"\r\n":  # the terminator
                end = pos + 2
                rest = buf[pos + 5:]
                break
            if after == b"" or after == b"\r":  # cannot tell yet: keep it
                end = pos
                break
            parts.append(buf[start:pos + 2])  # keep the CRLF, drop the dot
            start = pos + 3
            pos, probe = _dot_line(buf, start, probe)
        else:
            # Keep a tail that may begin the terminator.
            if buf.endswith(b"\r"):
                end = n - 1
            elif buf.endswith(b"\r\n"):
                end = n - 2
        self._carry = buf[end:] if rest is None else b""
        if self._check_bare and self.fault is None:
            self.fault = body_fault(buf, end)
        if parts:
            parts.append(buf[start:end])
            body = b"".join(parts)
        elif start == 0 and end == n:
            body = buf
        else:
            body = buf[start:end]
        if self._first and body:
            self._first = False
            body = body[2:]
        return body, rest
