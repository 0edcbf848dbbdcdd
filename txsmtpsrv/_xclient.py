# -*- test-case-name: tests.test_xclient -*-
"""
Sans-IO parsing of Postfix's XCLIENT and XFORWARD commands, and RFC 3461 xtext.

A trusted front end (a content filter, nginx's mail proxy, a test harness)
uses XCLIENT to tell the server who the real client is, and XFORWARD to
pass the original client's details along for logging.  Both take
C{NAME=value} attributes with xtext-encoded values; this module turns the
argument string into a dict, validating each value, and raises
L{XClientError} (answer C{501 5.5.4}) for anything wrong.  Whether the
sender may use the command at all is the protocol's decision, not this
module's.

Parsed values (keys are the upper-case attribute names):

  - C{ADDR}, C{DESTADDR}: compressed IP address text (an C{IPV6:} prefix is
    removed; a bare IPv6 address is accepted too, as Postfix does).
  - C{PORT}, C{DESTPORT}: C{int}.
  - C{NAME}, C{HELO}, C{PROTO}, C{LOGIN}, C{IDENT}, C{SOURCE}: C{str}
    (C{PROTO} and C{SOURCE} upper-cased).
  - any attribute may be L{UNAVAILABLE}; C{NAME} may also be L{TEMPUNAVAIL}
    (reverse lookup failed temporarily).

A repeated attribute overrides the earlier one, as in Postfix.

L{xtext_decode} / L{xtext_encode} are shared with DSN (C{ENVID}, C{ORCPT}).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Callable, Union

from ._commands import XTextError, xtext_decode, xtext_encode
from ._ipaddr import address_literal, canonical_ip

__all__ = [
    "TEMPUNAVAIL",
    "UNAVAILABLE",
    "XCLIENT_ATTRIBUTES",
    "XFORWARD_ATTRIBUTES",
    "Special",
    "XClientError",
    "forwarded_client",
    "XTextError",
    "parse_xclient",
    "parse_xforward",
    "xtext_decode",
    "xtext_encode",
]


class XClientError(ValueError):
    """
    Bad XCLIENT/XFORWARD attribute or value; the protocol answers C{501}.

    C{attribute} names the offending attribute when there is one.
    """

    def __init__(self, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


class Special(enum.Enum):
    """The two special attribute values of XCLIENT/XFORWARD."""

    UNAVAILABLE = "[UNAVAILABLE]"
    TEMPUNAVAIL = "[TEMPUNAVAIL]"

    def __repr__(self) -> str:
        return self.value


UNAVAILABLE = Special.UNAVAILABLE
TEMPUNAVAIL = Special.TEMPUNAVAIL

Value = Union[str, int, Special]

# -- value validators --------------------------------------------------------

_ATTR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _text(value: str, attr: str, max_len: int = 255) -> str:
    if not value or len(value) > max_len:
        raise XClientError(f"bad {attr} value length", attr)
    if not value.isprintable():
        raise XClientError(f"control character in {attr}", attr)
    return value


def _name(value: str, attr: str) -> str:
    if len(value) > 255 or not _HOSTNAME.fullmatch(value):
        raise XClientError(f"bad {attr} host name", attr)
    return value.rstrip(".")


def _helo(value: str, attr: str) -> str:
    # Clients send all sorts of HELO names (address literals, bare words);
    # only reject what can't be a single SMTP argument.
    value = _text(value, attr)
    if " " in value:
        raise XClientError(f"space in {attr}", attr)
    return value


def _addr(value: str, attr: str) -> str:
    text = value[5:] if value[:5].upper() == "IPV6:" else value
    if "%" in text:
        raise XClientError(f"scoped address in {attr}", attr)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise XClientError(f"bad {attr} address", attr) from None
    if value[:5].upper() == "IPV6:" and addr.version != 6:
        raise XClientError(f"IPV6: prefix on a non-IPv6 {attr}", attr)
    return canonical_ip(addr)


def _port(value: str, attr: str) -> int:
    if not (1 <= len(value) <= 5 and value.isascii() and value.isdigit()) or int(value) > 65535:
        raise XClientError(f"bad {attr} port", attr)
    return int(value)


def _xclient_proto(value: str, attr: str) -> str:
    upper = value.upper()
    if upper not in ("SMTP", "ESMTP"):
        raise XClientError(f"{attr} must be SMTP or ESMTP", attr)
    return upper


def _xforward_proto(value: str, attr: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise XClientError(f"bad {attr} value", attr)
    return value.upper()


def _source(value: str, attr: str) -> str:
    upper = value.upper()
    if upper not in ("LOCAL", "REMOTE"):
        raise XClientError(f"{attr} must be LOCAL or REMOTE", attr)
    return upper


Validator = Callable[[str, str], Value]

_XCLIENT: dict[str, Validator] = {
    "NAME": _name,
    "ADDR": _addr,
    "PORT": _port,
    "PROTO": _xclient_proto,
    "HELO": _helo,
    "LOGIN": _text,
    "DESTADDR": _addr,
    "DESTPORT": _port,
}

_XFORWARD: dict[str, Validator] = {
    "NAME": _name,
    "ADDR": _addr,
    "PORT": _port,
    "PROTO": _xforward_proto,
    "HELO": _helo,
    "IDENT": _text,
    "SOURCE": _source,
}

#: Attribute lists to advertise in the EHLO response (C{"XCLIENT " + ...}).
XCLIENT_ATTRIBUTES = " ".join(_XCLIENT)
XFORWARD_ATTRIBUTES = " ".join(_XFORWARD)

# Attributes that may carry [TEMPUNAVAIL] (a temporary lookup failure).
_TEMPUNAVAIL_OK = frozenset({"NAME"})


def _parse(command: str, args: str | bytes, table: dict[str, Validator]) -> dict[str, Value]:
    if isinstance(args, bytes):
        try:
            args = args.decode("ascii")
        except UnicodeDecodeError:
            raise XClientError(f"non-ASCII byte in {command} arguments") from None
    words = args.split()
    if not words:
        raise XClientError(f"{command} needs at least one attribute")
    result: dict[str, Value] = {}
    for word in words:
        name, sep, encoded = word.partition("=")
        if not sep or not _ATTR_NAME.fullmatch(name):
            raise XClientError(f"bad {command} syntax: expected NAME=value")
        attr = name.upper()
        validator = table.get(attr)
        if validator is None:
            raise XClientError(f"bad {command} attribute name: {attr}", attr)
        try:
            raw = xtext_decode(encoded)
        except XTextError as e:
            raise XClientError(f"bad xtext in {attr}: {e}", attr) from None
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise XClientError(f"{attr} is not UTF-8", attr) from None
        if value == UNAVAILABLE.value:
            result[attr] = UNAVAILABLE
        elif value == TEMPUNAVAIL.value:
            if attr not in _TEMPUNAVAIL_OK:
                raise XClientError(f"[TEMPUNAVAIL] not allowed for {attr}", attr)
            result[attr] = TEMPUNAVAIL
        else:
            result[attr] = validator(value, attr)
    return result


def parse_xclient(args: str | bytes) -> dict[str, Value]:
    """
    Parse the argument string of C{XCLIENT} (everything after the verb).

    Attributes: C{NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT}
    (case-insensitive).  Raises L{XClientError} on the first bad one.
    """
    return _parse("XCLIENT", args, _XCLIENT)


def parse_xforward(args: str | bytes) -> dict[str, Value]:
    """
    Parse the argument string of C{XFORWARD} (everything after the verb).

    Attributes: C{NAME ADDR PORT PROTO HELO IDENT SOURCE} (case-insensitive).
    Raises L{XClientError} on the first bad one.
    """
    return _parse("XFORWARD", args, _XFORWARD)


def forwarded_client(attrs: dict[str, Value], remote_address: str, client_hostname: str) -> tuple[str, str]:
    """
    The C{(remote_address, client_hostname)} a session shows once a trusted
    proxy's XCLIENT or XFORWARD C{attrs} are applied, so hooks, logs and
    Received headers name the real client: C{ADDR} replaces the address;
    C{NAME} replaces the host name, or, when C{NAME} is unavailable or only
    C{ADDR} is given, the address literal of the new address stands in
    (as the connection's C{[ip]} does without reverse DNS).
    """
    addr = attrs.get("ADDR")
    if isinstance(addr, str):
        remote_address = addr
    if "NAME" in attrs or "ADDR" in attrs:
        name = attrs.get("NAME")
        client_hostname = name if isinstance(name, str) else address_literal(remote_address)
    return remote_address, client_hostname
