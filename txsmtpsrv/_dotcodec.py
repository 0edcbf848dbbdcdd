# -*- test-case-name: tests.test_decoder -*-
"""
The DATA body decoder (RFC 5321 4.1.1.4, 4.5.2), sans-IO.

L{DotDecoder} turns the raw bytes after C{354} into payload chunks, undoes
dot-stuffing and finds the end of the message, carrying at most four bytes
across reads. Only C{<CRLF>.<CRLF>} ends a message, so C{<LF>.<LF>} or
C{<LF>.<CR><LF>} cannot smuggle a second message past us.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["DotDecoder"]

_CRLF = b"\r\n"
_NOT_CR_LF = bytes(i for i in range(256) if i not in (10, 13))


class DotDecoder:
    """
    Incremental DATA decoder (RFC 5321 4.1.1.4, 4.5.2).

    @ivar bare: set once a bare CR or LF was seen (only if C{check_bare}).
    """

    __slots__ = ("_carry", "_first", "_check_bare", "bare")

    def __init__(self, check_bare: bool = True) -> None:
        # The body starts at a line start: pretend a CRLF came before it so
        # that a dot on the first line is handled like any other.
        self._carry = b"\r\n"
        self._first = True
        self._check_bare = check_bare
        self.bare = False

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """
        Decode the next bytes.

        One scan for C{CRLF "."} finds both the end of the message and the
        lines whose leading dot must go (RFC 5321 4.5.2: the first character
        of a line is deleted when it is a period); the bare CR/LF check
        counts within the same buffer without copying it.

        @return: C{(payload, rest)}; C{rest} is C{None} while the message goes
            on, else the bytes after the terminating dot (pipelined commands).
        """
        buf = self._carry + data if self._carry else data
        n = len(buf)
        parts: list[bytes] = []
        start = 0
        end = n  # where the payload of this buffer stops
        rest: Optional[bytes] = None
        pos = buf.find(b"\r\n.")
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
            pos = buf.find(b"\r\n.", start)
        else:
            # Keep a tail that may begin the terminator.
            if buf.endswith(b"\r"):
                end = n - 1
            elif buf.endswith(b"\r\n"):
                end = n - 2
        self._carry = buf[end:] if rest is None else b""
        if self._check_bare and not self.bare:
            # Keep only the CRs and LFs: they must read CRLF CRLF ... exactly.
            ends = (buf if end == n else buf[:end]).translate(None, _NOT_CR_LF)
            if ends != _CRLF * (len(ends) >> 1) or len(ends) & 1:
                self.bare = True
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
