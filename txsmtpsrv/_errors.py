# -*- test-case-name: tests.test_protocol -*-
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

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")

Text = Union[str, Sequence[str]]


def _check(code: int, text: Text, enhanced: str | None) -> tuple[str, ...]:
    if not isinstance(code, int) or not 200 <= code <= 599:
        raise ValueError(f"SMTP reply code must be an int from 200 to 599, not {code!r}")
    if enhanced is not None:
        if not _ENHANCED.match(enhanced):
            raise ValueError(f"enhanced status code {enhanced!r} is not of the form class.subject.detail")
        if enhanced[0] != str(code)[0]:
            raise ValueError(f"enhanced status code {enhanced} does not match the class of reply code {code}")
    lines = (text,) if isinstance(text, str) else tuple(text)
    out: list[str] = []
    for line in lines:
        out.extend(line.splitlines() or [""])
    for line in out:
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"reply text must be encodable as UTF-8: {line!r}") from None
    return tuple(out) or ("",)


def format_reply(code: int, lines: Sequence[str], enhanced: str | None) -> bytes:
    """
    Frame a reply: C{250-first}, ..., C{250 last}, each line prefixed with the
    enhanced code when one is given.
    """
    prefix = f"{code} {enhanced} " if enhanced else f"{code} "
    if len(lines) == 1:
        return (prefix + lines[0]).rstrip(" ").encode("utf-8") + b"\r\n"
    cont = f"{code}-{enhanced} " if enhanced else f"{code}-"
    out = [(cont + line).rstrip(" ") for line in lines[:-1]]
    out.append((prefix + lines[-1]).rstrip(" "))
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


class Reply:
    """
    A reply a hook returns to accept with its own text, e.g.
    C{Reply(250, "Queued as 1234")}.

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
    logged, never shown to the client.
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
