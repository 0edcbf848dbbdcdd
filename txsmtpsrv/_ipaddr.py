# -*- test-case-name: tests.test_rdns -*-
"""
Client addresses as text: one normalisation, shared by the dialogue, XCLIENT,
the PROXY wrapper and reverse DNS.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Optional, Union

__all__ = ["IPAddress", "address_literal", "canonical_ip", "client_hostname", "parse_ip", "plain_ipv4", "unmapped"]

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}").fullmatch


def plain_ipv4(text: str) -> bool:
    """
    Whether C{text} is an IPv4 address spelt as C{str(IPv4Address)} would
    spell it (what a socket reports): then it is its own canonical form and
    needs no C{ipaddress} round-trip to be shown or compared.
    """
    return _PLAIN_IPV4(text) is not None

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def unmapped(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (dual-stack socket) as the IPv4 address it is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=1024)
def parse_ip(text: str) -> Optional[IPAddress]:
    """
    C{text} as an address (scope id dropped, IPv4-mapped IPv6 as IPv4, so a
    dual-stack listener matches IPv4 networks), or C{None} if it is not one.

    Cached: every connection parses its peer's address (the session, the
    operator log) and busy clients repeat the same few; the address objects
    are immutable, so sharing them is safe.
    """
    try:
        return unmapped(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def canonical_ip(addr: Union[str, IPAddress]) -> str:
    """
    One spelling per address: IPv6 compressed and lower-case, IPv4-mapped
    IPv6 as C{::ffff:192.0.2.1} (what Python 3.13+ prints anyway), scope id
    dropped.  Raises C{ValueError} for text that is not an IP address.
    """
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"::ffff:{addr.ipv4_mapped}"
        return ipaddress.IPv6Address(addr.packed).compressed
    return str(addr)


def address_literal(ip: str) -> str:
    """
    RFC 5321 address literal: C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}.

    IPv4-mapped IPv6 peers (dual-stack listeners) are shown as IPv4, as
    Postfix does.
    """
    addr = parse_ip(ip)
    if addr is None:
        return f"[{ip}]"
    if addr.version == 6:
        return f"[IPv6:{canonical_ip(addr)}]"
    return f"[{addr}]"


def client_hostname(ip: str, name: Optional[str]) -> str:
    """The name to show for a client: its PTR name, else its address literal."""
    return name if name else address_literal(ip)
