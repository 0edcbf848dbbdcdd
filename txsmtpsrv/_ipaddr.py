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
from typing import Any, Optional, Tuple, Union

__all__ = ["IPAddress", "IPNetwork", "address_literal", "canonical_ip", "client_hostname", "parse_ip", "parse_network",
           "parse_networks", "plain_ipv4", "unmapped", "unmapped_network"]

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


IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_network(text: str) -> IPNetwork:
    """
    C{text} (C{10.0.0.0/8}, C{2001:db8::/32}, or one address) as a network.

    Raises C{ValueError} for what is not one, and for host bits set beyond
    the prefix: C{10.1.2.3/8} would silently trust or exempt all of
    10.0.0.0/8 where the operator may have meant the one address.
    """
    try:
        return unmapped_network(ipaddress.ip_network(text))
    except ValueError:
        try:
            wider = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network (e.g. 10.0.0.0/8 or 2001:db8::/32)") from None
    address = text.split("/", 1)[0]
    raise ValueError(f"{text!r} has host bits set: write {wider} for the network, "
                     f"or {address}/{wider.max_prefixlen} for the one address")


def unmapped_network(net: IPNetwork) -> IPNetwork:
    """
    An IPv4-mapped IPv6 network (C{::ffff:192.0.2.0/120}) as the IPv4
    network it is: L{parse_ip} unmaps client addresses, which such a
    network would otherwise never contain.
    """
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def parse_networks(value: Any) -> Tuple[IPNetwork, ...]:
    """
    Networks given as one string (comma or space separated), one network
    object, or an iterable of strings and network objects (what
    L{ServerOptions} accepts): each checked by L{parse_network}. Bytes are
    refused rather than read as a sequence of numbers, and a network object
    is one network, not the addresses iterating it would give.
    """
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return (unmapped_network(value),)
    if isinstance(value, (bytes, bytearray)):
        raise ValueError(f"networks must be text, not {type(value).__name__}: {value!r}")
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    elif not hasattr(value, "__iter__"):
        raise ValueError(f"not networks: {value!r} (e.g. \"10.0.0.0/8, 2001:db8::/32\" or a list)")
    return tuple(unmapped_network(v) if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                 else parse_network(v.strip() if isinstance(v, str) else repr(v)) for v in value)
