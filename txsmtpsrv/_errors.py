# -*- test-case-name: tests.test_protocol_hooks,tests.test_protocol_commands -*-
"""
SMTP replies as values and as exceptions.

Hooks speak SMTP through these two types instead of raw reply strings, so a
status code is always an C{int}, the enhanced status code (RFC 3463) is always
either given or derived, and the protocol alone decides how replies are framed
on the wire (multi-line, with or without enhanced codes).
"""

from __future__ import annotations

import re
from typing import Sequence, Union

__all__ = ["Reply", "SMTPError"]

# ASCII digits only, matched in full: "$" would let a trailing LF onto the wire.
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_BREAK = re.compile(r"\r\n|\r|\n")

Text = Union[str, Sequence[str]]


def _check(code: int, text: Text, enhanced: str | None) -> tuple[str, ...]:
    if not isinstance(code, int) or not 200 <= code <= 599:
        raise ValueError(f"SMTP reply code must be an int from 200 to 599, not {code!r}")
    if enhanced is not None:
        if not _ENHANCED.fullmatch(enhanced):
            raise ValueError(f"enhanced status code {enhanced!r} is not of the form class.subject.detail")
        if enhanced[0] != str(code)[0]:
            raise ValueError(f"enhanced status code {enhanced} does not match the class of reply code {code}")
    lines = (text,) if isinstance(text, str) else tuple(text)
    out: list[str] = []
    for line in lines:
        # CR, LF and CRLF start a new reply line (a final one ends the text);
        # every other control is escaped on the wire by format_reply.
        parts = _BREAK.split(line)
        if len(parts) > 1 and not parts[-1]:
            parts.pop()
        out.extend(parts)
    for line in out:
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"reply text must be encodable as UTF-8: {line!r}") from None
    return tuple(out) or ("",)


#: RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including its CRLF.
MAX_REPLY_LINE = 512
_ELLIPSIS = "..."


def _escape(char: str) -> str:
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def printable(text: str) -> str:
    """
    C{text} with every character that is not printable UTF-8 text, SP or
    HTAB (controls such as CR, LF, NUL, ESC, DEL, C1 controls, Unicode
    format and separator characters, lone surrogates) written as a
    Python-style escape (C{\\x0d}, C{\\u2028}), so client bytes shown in a
    reply can never end the line early, inject a reply or drive a terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c == "\t" or c.isprintable() else _escape(c) for c in text)


def reply_line(prefix: str, text: str) -> bytes:
    """
    One wire line, C{prefix} (code, separator, enhanced code) then C{text}
    made L{printable} and cut, with C{...}, so the line with its CRLF fits
    in L{MAX_REPLY_LINE} octets.
    """
    line = (prefix + printable(text)).rstrip(" ")
    data = line.encode("utf-8")
    room = MAX_REPLY_LINE - 2
    if len(data) > room:
        # Cut on a character boundary: decode what fits, ignoring a split tail.
        keep = data[:room - len(_ELLIPSIS)].decode("utf-8", "ignore")
        data = (keep + _ELLIPSIS).encode("utf-8")
    return data + b"\r\n"


def format_reply(code: int, lines: Sequence[str], enhanced: str | None) -> bytes:
    """
    Frame a reply: C{250-first}, ..., C{250 last}, each line prefixed with the
    enhanced code when one is given.

    This is the one place every reply passes through on its way to the wire
    (the protocol's own texts, hook texts, client text echoed in errors), so
    it is where each line is made printable and at most 512 octets long
    (L{reply_line}); nothing else needs to trust the text it is given.
    """
    prefix = f"{code} {enhanced} " if enhanced else f"{code} "
    if len(lines) == 1:
        return reply_line(prefix, lines[0])
    cont = f"{code}-{enhanced} " if enhanced else f"{code}-"
    out = [reply_line(cont, line) for line in lines[:-1]]
    out.append(reply_line(prefix, lines[-1]))
    return b"".join(out)


class Reply:
    """
    A reply a hook returns to accept with its own text, e.g.
    C{Reply(250, "Queued as 1234")}.

    C{text} is one string or a sequence of lines; a CR, LF or CRLF inside it
    starts a new line of a multi-line reply (it is never refused and never
    sent raw). On the wire every other control character (NUL, ESC, DEL, a
    C1 control, U+2028...) is shown escaped, C{\\x1b}, and a line longer
    than 512 octets with its code and CRLF is cut and ends in C{...}
    (RFC 5321 4.5.3.1.5), so text built from client input is safe to return.

    @ivar code: the three-digit reply code.
    @ivar lines: the text, one item per reply line.
    @ivar enhanced: the RFC 3463 code, or C{None} to let the server choose.
    """

    __slots__ = ("code", "lines", "enhanced")

    def __init__(self, code: int, text: Text = "", enhanced: str | None = None) -> None:
        self.lines = _check(code, text, enhanced)
        self.code = code
        self.enhanced = enhanced

    @property
    def text(self) -> str:
        """The reply text, lines joined with newlines."""
        return "\n".join(self.lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.text!r}, {self.enhanced!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.code, self.lines, self.enhanced) == (other.code, other.lines, other.enhanced)

    def __hash__(self) -> int:
        return hash((self.code, self.lines, self.enhanced))


class SMTPError(Exception):
    """
    Raise from a hook to reject: C{raise SMTPError(550, "No such user", "5.1.1")}.

    4xx codes tell the client to try again later, 5xx that it never will
    succeed. Any other exception raised by a hook becomes C{451 4.3.0} and is
    logged, never shown to the client. The text follows L{Reply}'s rules: CR
    and LF split it into lines, other controls are escaped on the wire and
    lines are cut to 512 octets.
    """

    def __init__(self, code: int, text: Text = "", enhanced: str | None = None) -> None:
        lines = _check(code, text, enhanced)
        if code < 400:
            raise ValueError(f"SMTPError needs a 4xx or 5xx code, not {code}; return a Reply to accept")
        super().__init__(code, "\n".join(lines), enhanced)
        self.code = code
        self.lines = lines
        self.enhanced = enhanced

    @property
    def text(self) -> str:
        """The reply text, lines joined with newlines."""
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced + ' ' if self.enhanced else ''}{self.text}"
