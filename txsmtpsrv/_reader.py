# -*- test-case-name: tests.test_reader -*-
"""
The command reader: bytes from the socket in, command lines, body bytes and
chunk bytes out, by scanning one buffer with an offset.

C{LineReceiver} copies the rest of its buffer for every line it splits off,
so a read holding thousands of pipelined commands costs quadratic time; this
reader only slices out each line. It knows three modes: command lines (LF
ends a line, a CR before it is dropped, lines longer than C{max_length} are
reported as L{TOO_LONG} and skipped), raw bytes (a DATA body, decoded by the
caller) and counted bytes (a BDAT chunk). What is still buffered when
STARTTLS is accepted is handed back by L{discard} so that it is never run
inside TLS (CVE-2011-0411).

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Union

__all__ = ["CommandReader", "TOO_LONG"]


class _TooLong:
    """The marker L{CommandReader.line} returns for an over-long line."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


#: Returned by L{CommandReader.line} in place of a line longer than the limit.
TOO_LONG = _TooLong()


class CommandReader:
    """
    A buffer of received bytes and a read offset into it.

    @ivar max_length: the longest command line accepted, counting a trailing CR.
    """

    __slots__ = ("_buf", "_pos", "_skip", "max_length")

    # Invariant: C{_buf} is C{b""} whenever nothing is buffered (every method
    # lets a fully read buffer go), so the dialogue's reading loop tests
    # C{_buf} itself rather than calling L{line} or L{take} to learn that.

    def __init__(self, max_length: int) -> None:
        self._buf = b""
        self._pos = 0
        self._skip = False  # the tail of an over-long line is still arriving
        self.max_length = max_length

    def feed(self, data: bytes) -> bool:
        """
        Append received bytes.

        @return: whether the reader was L{idle} before (these bytes start a new command).
        """
        if self._skip:
            nl = data.find(b"\n")
            if nl < 0:
                return False
            self._skip = False
            data = data[nl + 1:]
            idle = False
        else:
            idle = self._pos == len(self._buf)
        if idle or self._pos == len(self._buf):
            self._buf, self._pos = data, 0
        elif self._pos:
            self._buf, self._pos = self._buf[self._pos:] + data, 0
        else:
            self._buf += data
        return idle

    @property
    def idle(self) -> bool:
        """Whether nothing is buffered: the next byte starts a new command."""
        return self._pos == len(self._buf) and not self._skip

    @property
    def pending(self) -> int:
        """How many bytes are buffered."""
        return len(self._buf) - self._pos

    def line(self) -> Union[bytes, _TooLong, None]:
        """
        The next command line without its line ending, L{TOO_LONG}, or
        C{None} when no complete line is buffered.
        """
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if pos and pos == len(buf):
                # All read: let the last read's bytes go (an idle connection keeps no copy).
                self._buf, self._pos = b"", 0
                return None
            if len(buf) - pos > self.max_length:
                # No end in sight: drop it and what follows up to the next LF.
                self._buf, self._pos, self._skip = b"", 0, True
                return TOO_LONG
            return None
        if nl + 1 == len(buf):
            # The last buffered line (the usual case: one command per read):
            # let the read's bytes go now, so that L{pending} is simply
            # whether C{_buf} is empty.
            self._buf, self._pos = b"", 0
        else:
            self._pos = nl + 1
        if nl - pos > self.max_length:
            return TOO_LONG
        if nl > pos and buf[nl - 1] == 13:
            return buf[pos:nl - 1]
        return buf[pos:nl]

    def take(self, limit: int = -1) -> bytes:
        """Up to C{limit} (default: all) buffered bytes, for DATA and BDAT."""
        buf, pos = self._buf, self._pos
        end = len(buf)
        if 0 <= limit < end - pos:
            end = pos + limit
            self._pos = end
            return buf[pos:end]
        self._buf, self._pos = b"", 0  # all taken: nothing kept
        return buf if pos == 0 else buf[pos:]

    def push_back(self, data: bytes) -> None:
        """Put bytes the caller took but did not use (after the end of a body) in front."""
        if data:
            rest = self._buf[self._pos:]
            self._buf, self._pos = data + rest if rest else data, 0

    def discard(self) -> bytes:
        """Empty the buffer and forget a skipped line; return what was buffered."""
        rest = self._buf[self._pos:]
        self._buf, self._pos, self._skip = b"", 0, False
        return rest
