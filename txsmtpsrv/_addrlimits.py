# -*- test-case-name: tests.test_addrlimits -*-
"""
Per-client-address bookkeeping that an attacker cannot blow up: concurrent
connections, connection rate, and "log this once a minute" — each a table
with a hard cap on its size, so rotating source addresses costs the
attacker addresses, not us memory.

Addresses are grouped as an operator thinks of a client: IPv4-mapped IPv6
(a dual-stack socket) is the IPv4 address, and IPv6 is aggregated to a
prefix (C{/64} by default: one customer's LAN), since anyone holding a
C{/64} has 2**64 addresses to rotate through.

Pure: no Twisted import (see C{tests/test_layering.py}); times are plain
numbers from the caller's clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Dict, Generic, Optional, Sequence, Tuple, TypeVar, Union

from ._ipaddr import parse_ip

__all__ = ["address_key", "ExpiringTable", "ConnectionLimiter", "OncePer", "DEFAULT_MAX_ENTRIES",
           "OVER_CONCURRENCY", "OVER_RATE"]

#: Most addresses any one table remembers: about 200 bytes each, so a
#: table never grows past ~10 MB however many addresses a flood uses.
DEFAULT_MAX_ENTRIES = 50_000

#: Why L{ConnectionLimiter.admit} refused a connection.
OVER_CONCURRENCY = "concurrency"
OVER_RATE = "rate"

V = TypeVar("V")


def address_key(address: Optional[str], ipv6_prefix: int = 64) -> Optional[str]:
    """
    The key a client address is counted under: the IPv4 address (also for
    IPv4-mapped IPv6), or the IPv6 network of C{ipv6_prefix} bits in CIDR
    form. C{None} for what is not an IP address (a UNIX socket), which no
    per-address limit applies to.
    """
    addr = parse_ip(address) if address else None  # IPv4-mapped IPv6 comes back as IPv4
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and ipv6_prefix < 128:
        net = ipaddress.IPv6Network((int(addr) >> (128 - ipv6_prefix) << (128 - ipv6_prefix), ipv6_prefix))
        return str(net)
    return str(addr)


class ExpiringTable(Generic[V]):
    """
    A mapping from key to C{(value, expires)} that never holds more than
    C{max_entries} keys: expired keys go first, then the least recently
    written. Evicting a live key forgets its count (the limit fails open for
    that key) — the price of a memory bound; with C{max_entries} well above
    the number of honest clients it only happens under a rotation flood.
    """

    __slots__ = ("max_entries", "_data")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._data: "OrderedDict[str, Tuple[V, float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now: float) -> Optional[V]:
        """The live value of C{key}, or C{None} (an expired one is dropped)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._data[key]
            return None
        return entry[0]

    def put(self, key: str, value: V, expires: float, now: float) -> None:
        """Set C{key} until C{expires}, making room by expiry, then by age."""
        data = self._data
        if key in data:
            data.move_to_end(key)
        elif len(data) >= self.max_entries:
            self.purge(now)
            while len(data) >= self.max_entries:
                data.popitem(last=False)
        data[key] = (value, expires)

    def pop(self, key: str) -> None:
        """Forget C{key}."""
        self._data.pop(key, None)

    def purge(self, now: float, limit: int = 1000) -> int:
        """
        Drop up to C{limit} expired keys from the oldest end (written
        longest ago; with one lifetime per table, they expire first), so a
        purge costs little however big the table is.
        """
        data = self._data
        dropped = 0
        while data and dropped < limit:
            key, (_, expires) = next(iter(data.items()))
            if expires > now:
                break
            del data[key]
            dropped += 1
        return dropped


class ConnectionLimiter:
    """
    Concurrent connections and new connections per minute, per address key
    (see L{address_key}).

    The concurrency table holds only keys with open connections, so it is
    never bigger than the number of connections. The rate table counts
    connection attempts (refused ones too: a client hammering us stays
    refused) in a window of C{window} seconds starting at the key's first
    attempt, as Postfix's anvil does; it holds at most C{max_entries} keys.

    @param max_per_address: concurrent connections per key (0: no limit).
    @param max_rate: new connections per key per window (0: no limit).
    @param exceptions: networks whose clients neither limit applies to nor
        are counted by (an operator's monitoring probe, a load balancer's
        health checks): their L{admission_key} is C{None}, as for a UNIX
        socket. (Per-address AUTH failure limits still use their L{key}.)
    """

    __slots__ = ("max_per_address", "max_rate", "window", "ipv6_prefix", "exceptions", "_open", "_rate")

    def __init__(self, max_per_address: int = 0, max_rate: int = 0, *, ipv6_prefix: int = 64,
                 window: float = 60.0, max_entries: int = DEFAULT_MAX_ENTRIES,
                 exceptions: Sequence[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = ()) -> None:
        self.max_per_address = max_per_address
        self.max_rate = max_rate
        self.window = window
        self.ipv6_prefix = ipv6_prefix
        self.exceptions = tuple(exceptions)
        self._open: Dict[str, int] = {}
        self._rate: ExpiringTable[list[float]] = ExpiringTable(max_entries)

    @property
    def enabled(self) -> bool:
        """Whether any limit is on (else L{admit} is not worth calling)."""
        return bool(self.max_per_address or self.max_rate)

    def key(self, address: Optional[str]) -> Optional[str]:
        """The key C{address} counts under (also for the AUTH failure limits)."""
        return address_key(address, self.ipv6_prefix)

    def admission_key(self, address: Optional[str]) -> Optional[str]:
        """
        The key a connection from C{address} is limited and counted under
        (L{admit}): its L{key}, or C{None} (neither) in L{exceptions}.
        """
        if self.exceptions and address:
            addr = parse_ip(address)
            if addr is not None and any(addr in net for net in self.exceptions):
                return None
        return address_key(address, self.ipv6_prefix)

    def admit(self, key: Optional[str], now: float) -> Optional[str]:
        """
        A connection from C{key} starts. Return C{None} and count it (call
        L{release} when it ends), or the reason it is refused:
        L{OVER_CONCURRENCY} or L{OVER_RATE} (not counted as open).
        """
        if key is None:
            return None
        if self.max_rate:
            rate = self._rate.get(key, now)
            if rate is None:
                self._rate.put(key, [1.0], now + self.window, now)
            else:
                rate[0] += 1
                if rate[0] > self.max_rate:
                    return OVER_RATE
        if self.max_per_address:
            count = self._open.get(key, 0)
            if count >= self.max_per_address:
                return OVER_CONCURRENCY
            self._open[key] = count + 1
        return None

    def release(self, key: Optional[str]) -> None:
        """A connection L{admit} counted has ended."""
        if key is None or not self.max_per_address:
            return
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open_connections(self, key: str) -> int:
        """How many counted connections C{key} has open."""
        return self._open.get(key, 0)

    @property
    def sizes(self) -> Tuple[int, int]:
        """(keys with open connections, keys in the rate table): what a flood can grow."""
        return len(self._open), len(self._rate)


class OncePer:
    """
    Say whether to log an event for a key now: once per C{interval} per key,
    counting what was held back so the next line can say "and N more".
    At most C{max_entries} keys are remembered.
    """

    __slots__ = ("interval", "_seen")

    def __init__(self, interval: float = 60.0, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.interval = interval
        self._seen: ExpiringTable[list[float]] = ExpiringTable(max_entries)

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, key: str, now: float) -> Optional[int]:
        """
        C{None} if an event for C{key} was logged less than C{interval}
        ago (this one is counted, not logged); else the number of events
        held back since the last line, and this one should be logged.
        """
        entry = self._seen.get(key, now)
        if entry is not None and now < entry[1]:
            entry[0] += 1
            return None
        held = int(entry[0]) if entry is not None else 0
        # Kept a second interval after its line falls due, to report what was held back.
        self._seen.put(key, [0, now + self.interval], now + 2 * self.interval, now)
        return held
