# -*- test-case-name: tests.test_commands -*-
"""
Sans-IO parsing of command arguments: MAIL / RCPT paths and ESMTP parameters.

Pure functions over C{str}, so they are unit- and property-tested without a
transport. Errors carry the exact reply the protocol sends.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

__all__ = ["CommandError", "parse_path_argument", "parse_params", "parse_notify", "parse_orcpt",
           "parse_envid", "parse_bdat", "XTextError", "xtext_decode", "xtext_encode"]


class CommandError(Exception):
    """A syntax or policy error with the reply that describes it."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(code, enhanced, text)
        self.code = code
        self.enhanced = enhanced
        self.text = text


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[^"\\\r\n]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"^(?:{_DOT_ATOM}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})$")
_SOURCE_ROUTE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
# esmtp-value: any printable except "=" and SP; RFC 6531 adds UTF-8.
_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+$")


def parse_path_argument(arg: str, keyword: str, *, null_ok: bool) -> Tuple[str, str]:
    """
    Split C{"FROM:<a@b> SIZE=10"} into the mailbox and the parameter text.

    @param keyword: C{"FROM"} or C{"TO"}.
    @param null_ok: whether C{<>} is allowed (the reverse-path only).
    @return: C{(mailbox, params)}; the mailbox is C{""} for C{<>}.
    @raise CommandError: 501 with the RFC 3463 code for bad syntax.
    """
    what = "sender" if keyword == "FROM" else "recipient"
    addr_code = "5.1.7" if keyword == "FROM" else "5.1.3"
    head = arg[: len(keyword) + 1]
    if head.upper() != keyword + ":":
        raise CommandError(501, "5.5.4", f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>")
    rest = arg[len(keyword) + 1:].lstrip(" ")
    if not rest.startswith("<"):
        raise CommandError(501, addr_code, f"Bad {what} address syntax: expected <address>")
    # Find the closing bracket outside a quoted local part.
    i = rest.find(">")
    if '"' in rest[:i if i >= 0 else None]:
        i, n, quoted = 1, len(rest), False
        while i < n:
            c = rest[i]
            if quoted:
                if c == "\\":
                    i += 1
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == ">":
                break
            i += 1
        else:
            i = -1
    if i < 0:
        raise CommandError(501, addr_code, f"Bad {what} address syntax: missing >")
    mailbox = rest[1:i]
    params = rest[i + 1:]
    if params and not params.startswith(" "):
        raise CommandError(501, addr_code, f"Bad {what} address syntax: text after >")
    if mailbox == "":
        if not null_ok:
            raise CommandError(501, addr_code, "Null recipient address <> is not allowed")
        return "", params.strip(" ")
    if mailbox[0] == "@":
        route = _SOURCE_ROUTE.match(mailbox)
        if route:  # RFC 5321 4.1.1.3: accept and ignore source routes.
            mailbox = mailbox[route.end():]
    if keyword == "TO" and mailbox.lower() == "postmaster":
        return mailbox, params.strip(" ")
    if not _MAILBOX.match(mailbox):
        raise CommandError(501, addr_code, f"Bad {what} address syntax")
    local, _, domain = mailbox.rpartition("@")
    if (len(local) > 64 or len(domain) > 255) if mailbox.isascii() else (
            len(local.encode("utf-8")) > 64 or len(domain.encode("utf-8")) > 255):
        raise CommandError(501, addr_code, f"Bad {what} address: too long")
    return mailbox, params.strip(" ")


def parse_params(text: str) -> Dict[str, Optional[str]]:
    """
    Parse C{"SIZE=100 BODY=8BITMIME SMTPUTF8"} into an upper-cased dict.

    @raise CommandError: C{501 5.5.4} for bad syntax or a repeated keyword.
    """
    params: Dict[str, Optional[str]] = {}
    if not text:
        return params
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise CommandError(501, "5.5.4", f"Bad parameter syntax: {item[:40]}")
        key = key.upper()
        if key in params:
            raise CommandError(501, "5.5.4", f"Parameter {key} given twice")
        params[key] = value if eq else None
    return params


class XTextError(ValueError):
    """A string is not valid xtext (RFC 3461 section 4)."""


_HEX = b"0123456789ABCDEF"


def xtext_decode(text: str | bytes, strict: bool = True) -> bytes:
    """
    Decode RFC 3461 xtext into the octets it stands for.

    xtext is printable ASCII except C{+} and C{=}, with any octet written as
    C{+XX} (two upper-case hex digits).  With C{strict=False} lower-case hex
    digits are tolerated.  Raises L{XTextError} otherwise.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x2B:  # "+"
            pair = raw[i + 1 : i + 3]
            check = pair if strict else pair.upper()
            if len(pair) != 2 or check[0] not in _HEX or check[1] not in _HEX:
                raise XTextError(f"bad xtext escape at offset {i}")
            out.append(int(check, 16))
            i += 3
            continue
        if c < 33 or c > 126 or c == 0x3D:  # controls, space, DEL, 8-bit, "="
            raise XTextError(f"character not allowed in xtext at offset {i}")
        out.append(c)
        i += 1
    return bytes(out)


def xtext_encode(value: str | bytes) -> str:
    """Encode octets (a C{str} is UTF-8 encoded first) as xtext."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return "".join(
        chr(c) if 33 <= c <= 126 and c not in (0x2B, 0x3D) else f"+{c:02X}" for c in raw
    )



_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")


def _xtext(value: str, what: str) -> str:
    try:
        return xtext_decode(value).decode("utf-8")
    except (XTextError, UnicodeDecodeError):
        raise CommandError(501, "5.5.4", f"Error: bad xtext in {what}") from None


def parse_notify(value: Optional[str]) -> Tuple[str, ...]:
    """RFC 3461 4.1: C{NEVER}, or a comma list of SUCCESS, FAILURE, DELAY."""
    items = tuple((value or "").upper().split(","))
    if items == ("NEVER",):
        return items
    if not value or any(i not in _NOTIFY for i in items) or len(set(items)) != len(items):
        raise CommandError(501, "5.5.4", "Error: NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY")
    return items


def parse_orcpt(value: Optional[str]) -> Tuple[str, str]:
    """RFC 3461 4.2: C{addr-type ";" xtext}; returns the type and the decoded address."""
    addr_type, semi, text = (value or "").partition(";")
    if not semi or not text or not _ADDR_TYPE.match(addr_type) or len(value or "") > 500:
        raise CommandError(501, "5.5.4", "Error: ORCPT must be addr-type;address")
    if addr_type.lower() == "utf-8":  # RFC 6533 utf-8-addr-xtext: \x{HEX}
        def char(m: "re.Match[str]") -> str:
            code = int(m.group(1), 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise CommandError(501, "5.5.4", "Error: bad code point in ORCPT")
            return chr(code)
        decoded = re.sub(r"\\x\{([0-9A-Fa-f]{1,6})\}", char, text)
    else:
        decoded = _xtext(text, "ORCPT")
    return addr_type.lower(), decoded


def parse_envid(value: Optional[str]) -> str:
    """RFC 3461 4.4: ENVID is xtext, at most 100 characters."""
    if not value or len(value) > 100:
        raise CommandError(501, "5.5.4", "Error: ENVID must be 1 to 100 characters of xtext")
    decoded = _xtext(value, "ENVID")
    if not all(" " <= c <= "~" for c in decoded):
        raise CommandError(501, "5.5.4", "Error: ENVID must be printable US-ASCII")
    return decoded


def parse_bdat(arg: str) -> Tuple[int, bool]:
    """C{"<size> [LAST]"} → C{(size, last)} (RFC 3030)."""
    parts = arg.split(" ")
    if not 1 <= len(parts) <= 2 or not (parts[0].isascii() and parts[0].isdigit()) or len(parts[0]) > 18 or (
            len(parts) == 2 and parts[1].upper() != "LAST"):
        raise CommandError(501, "5.5.4", "Error: syntax: BDAT chunk-size [LAST]")
    return int(parts[0]), len(parts) == 2
