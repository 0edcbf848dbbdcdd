# -*- test-case-name: tests.test_commands -*-
"""
Sans-IO parsing of command arguments: MAIL / RCPT paths and ESMTP parameters.

Pure functions over C{str}, so they are unit- and property-tested without a
transport. Errors carry the exact reply the protocol sends.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, Optional, Tuple

__all__ = ["CommandError", "parse_path_argument", "parse_params", "parse_mail_argument", "fast_mail_argument",
           "parse_notify", "parse_orcpt", "parse_envid", "parse_auth_param", "parse_bdat", "parse_helo",
           "valid_address_literal", "has_control", "XTextError", "xtext_decode", "xtext_encode"]


class CommandError(Exception):
    """A syntax or policy error with the reply that describes it."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(code, enhanced, text)
        self.code = code
        self.enhanced = enhanced
        self.text = text


# RFC 6531 lets UTF-8 into atoms, labels and quoted strings; the C1 controls
# (U+0080-U+009F) are excluded with the C0 ones and DEL: no value handed to a
# hook carries a control character (issue 10).
_U8 = r"\u00a0-\U0010ffff"  # escapes for re (pydoctor cannot show U+10FFFF)
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U8}]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
# RFC 5321 4.1.2: qtextSMTP is %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP
# is a backslash and %d32-126.
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U8}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_U8}](?:[A-Za-z0-9\-{_U8}]*[A-Za-z0-9{_U8}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
# dcontent (RFC 5321 4.1.3); what is inside is checked by valid_address_literal.
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"(?:{_DOT_ATOM}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})")
# EHLO/HELO names: a Domain, also with "_" in labels (Windows host names; Postfix
# accepts them too), which nothing downstream is hurt by.
_HELO_LABEL = rf"[A-Za-z0-9_{_U8}](?:[A-Za-z0-9_\-{_U8}]*[A-Za-z0-9_{_U8}])?"
_HELO_DOMAIN = re.compile(rf"{_HELO_LABEL}(?:\.{_HELO_LABEL})*\.?")
_SNUM = re.compile(r"[0-9]{1,3}")
_LDH_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_DCONTENT = re.compile(r"[\x21-\x5a\x5e-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(text: str) -> bool:
    """Whether C{text} holds a C0 or C1 control character or DEL."""
    return _CONTROL.search(text) is not None


def valid_address_literal(literal: str) -> bool:
    """
    Whether C{literal} (with its brackets) is an RFC 5321 4.1.3
    address-literal: four decimal octets 0-255, C{IPv6:} and an IPv6 address
    (C{ipaddress} decides; no zone index), or a General-address-literal
    C{Ldh-str ":" 1*dcontent}.
    """
    if len(literal) < 3 or literal[0] != "[" or literal[-1] != "]":
        return False
    body = literal[1:-1]
    tag, colon, rest = body.partition(":")
    if not colon:
        octets = body.split(".")
        return len(octets) == 4 and all(_SNUM.fullmatch(o) and int(o) <= 255 for o in octets)
    if tag.upper() == "IPV6":
        if not rest.isascii() or "%" in rest:
            return False
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            return False
        return True
    return _LDH_TAG.fullmatch(tag) is not None and _DCONTENT.fullmatch(rest) is not None


def parse_helo(arg: str, command: str) -> str:
    """
    The one Domain or address-literal of EHLO, HELO or LHLO (RFC 5321
    4.1.1.1, RFC 2033).

    @raise CommandError: C{501 5.5.4} for none, more than one, or a malformed one.
    """
    if not arg or " " in arg:
        raise CommandError(501, "5.5.4", f"Error: syntax: {command} hostname")
    if arg.startswith("["):
        if not valid_address_literal(arg):
            raise CommandError(501, "5.5.4", f"Error: {command} needs a valid address literal")
    elif not _HELO_DOMAIN.fullmatch(arg) or len(arg) > 255:
        raise CommandError(501, "5.5.4", f"Error: {command} needs a valid domain name")
    return arg
_SOURCE_ROUTE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
# esmtp-value: any printable except "=" and SP; RFC 6531 adds UTF-8 (without
# the C1 controls, as in addresses: no value handed to a hook carries one).
_VALUE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_U8}]+")


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
    if not _MAILBOX.fullmatch(mailbox):
        raise CommandError(501, addr_code, f"Bad {what} address syntax")
    local, _, domain = mailbox.rpartition("@")
    if domain.startswith("[") and not valid_address_literal(domain):
        raise CommandError(501, addr_code, f"Bad {what} address syntax: invalid address literal")
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
        if not _KEYWORD.fullmatch(key) or (eq and not _VALUE.fullmatch(value)):
            raise CommandError(501, "5.5.4", f"Bad parameter syntax: {item[:40]}")
        key = key.upper()
        if key in params:
            raise CommandError(501, "5.5.4", f"Parameter {key} given twice")
        params[key] = value if eq else None
    return params


# The fast path (issue 13): most clients send "FROM:<local@domain>" or
# "TO:<local@domain>", all ASCII, with a few ordinary parameters. One regular
# expression over the whole argument recognises exactly that; anything else
# (lower-case keywords, spaces after the colon, quoted local parts, source
# routes, address literals, a trailing dot, UTF-8, postmaster, odd spacing)
# goes to the full grammar above. Every string it matches is one the full
# grammar accepts with the same result (tests/test_fast_path.py checks both
# against each other): it never widens what is accepted.
_FAST_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+"
_FAST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_FAST_MAILBOX = rf"(({_FAST_ATOM}(?:\.{_FAST_ATOM})*)@{_FAST_LABEL}(?:\.{_FAST_LABEL})*)"
_FAST_PARAMS = r"((?: [A-Za-z0-9][A-Za-z0-9\-]*(?:=[\x21-\x3c\x3e-\x7e]+)?)*)"
_FAST = {
    "FROM": re.compile(rf"FROM:<(?:{_FAST_MAILBOX})?>{_FAST_PARAMS}").fullmatch,
    "TO": re.compile(rf"TO:<{_FAST_MAILBOX}>{_FAST_PARAMS}").fullmatch,
}


def fast_mail_argument(arg: str, keyword: str) -> Optional[Tuple[str, Dict[str, Optional[str]]]]:
    """
    The common MAIL/RCPT argument, parsed without the full grammar, or
    C{None} when it is not that common form (the caller then parses it with
    L{parse_path_argument} and L{parse_params}, which also give the errors).
    """
    m = _FAST[keyword](arg)
    if m is None:
        return None
    mailbox, local, ptext = m.groups()
    if mailbox is None:
        mailbox = ""  # the null reverse-path <>
    elif len(local) > 64 or len(mailbox) - len(local) > 256:
        return None  # too long: the full grammar says so
    params: Dict[str, Optional[str]] = {}
    if ptext:
        for item in ptext[1:].split(" "):
            key, eq, value = item.partition("=")
            key = key.upper()
            if key in params:
                return None  # given twice: refused by the full grammar
            params[key] = value if eq else None
    return mailbox, params


def parse_mail_argument(arg: str, keyword: str, *, null_ok: bool) -> Tuple[str, Dict[str, Optional[str]]]:
    """
    C{"FROM:<a@b> SIZE=10"} as the mailbox and its parameters: the fast path
    for the common form, else L{parse_path_argument} and L{parse_params}.

    @param keyword: C{"FROM"} (C{null_ok} must then be true) or C{"TO"}.
    @raise CommandError: as L{parse_path_argument} and L{parse_params}.
    """
    if null_ok == (keyword == "FROM"):
        parsed = fast_mail_argument(arg, keyword)
        if parsed is not None:
            return parsed
    mailbox, ptext = parse_path_argument(arg, keyword, null_ok=null_ok)
    return mailbox, parse_params(ptext)


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
    # RFC 3461 4.2 / RFC 6533 3: an address, never CR, LF, NUL or other
    # controls, which would reach hooks, logs and DSNs (header injection).
    if has_control(decoded):
        raise CommandError(501, "5.5.4", "Error: ORCPT must not contain control characters")
    return addr_type.lower(), decoded


def parse_envid(value: Optional[str]) -> str:
    """RFC 3461 4.4: ENVID is xtext, at most 100 characters."""
    if not value or len(value) > 100:
        raise CommandError(501, "5.5.4", "Error: ENVID must be 1 to 100 characters of xtext")
    decoded = _xtext(value, "ENVID")
    if not all(" " <= c <= "~" for c in decoded):  # also refuses every control (issue 10)
        raise CommandError(501, "5.5.4", "Error: ENVID must be printable US-ASCII")
    return decoded


def parse_auth_param(value: Optional[str]) -> str:
    """
    RFC 4954 5: MAIL's C{AUTH=} is the xtext of a mailbox or C{<>}; a server
    offering AUTH must take it, from any client. Returns it decoded.
    """
    if not value:
        raise CommandError(501, "5.5.4", "Error: AUTH= needs a mailbox or <>")
    if len(value) > 500:  # RFC 4954 5 grants the MAIL line 500 more characters for it
        raise CommandError(501, "5.5.4", "Error: AUTH= is too long")
    decoded = _xtext(value, "AUTH")
    if has_control(decoded):
        raise CommandError(501, "5.5.4", "Error: AUTH= must not contain control characters")
    return decoded


def parse_bdat(arg: str) -> Tuple[int, bool]:
    """C{"<size> [LAST]"} → C{(size, last)} (RFC 3030)."""
    parts = arg.split(" ")
    if not 1 <= len(parts) <= 2 or not (parts[0].isascii() and parts[0].isdigit()) or len(parts[0]) > 18 or (
            len(parts) == 2 and parts[1].upper() != "LAST"):
        raise CommandError(501, "5.5.4", "Error: syntax: BDAT chunk-size [LAST]")
    return int(parts[0]), len(parts) == 2
