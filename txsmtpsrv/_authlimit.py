# -*- test-case-name: tests.test_authlimit -*-
"""
Failed AUTH attempts counted across connections, per client address and
per user name, so password guessing is slow and then refused however the
guesser spreads its attempts over connections (Postfix's
C{smtpd_client_auth_rate_limit}, Dovecot's auth penalty).

Past a limit AUTH gets C{454 4.7.0} without the password being checked
(so the guesser learns nothing and costs no hash computation); each
failure is answered after a delay that doubles with the failures counted,
up to a cap. The delay is a number: the connection schedules the reply on
its clock, it never sleeps. Counts live in one process: under
C{--workers} each worker counts on its own.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Optional, Tuple

from ._addrlimits import DEFAULT_MAX_ENTRIES, ExpiringTable

__all__ = ["AuthFailures", "BY_ADDRESS", "BY_USER"]

#: Why L{AuthFailures.blocked} refuses.
BY_ADDRESS = "address"
BY_USER = "user"

#: Longest user name kept as a key: longer ones count under their first 256 characters.
_MAX_NAME = 256


def _user_key(username: str) -> str:
    return username[:_MAX_NAME].casefold()


class AuthFailures:
    """
    Failures per address key and per user name, each in a window of
    C{window} seconds from the key's first failure (a new count starts when
    it has passed); each table holds at most C{max_entries} keys.

    @param max_per_address: failures from one address before AUTH is
        refused (0: no limit).
    @param max_per_user: failures for one user name, from anywhere, before
        AUTH for it is refused (0: no limit). It stops a botnet guessing one
        account from many addresses, and lets anyone lock that account out
        for a window: choose it well above what a user mistyping does.
    @param delay: the tarpit: seconds before the first failure's reply;
        it doubles with each failure counted (0: no delay).
    @param max_delay: the longest tarpit delay.
    """

    __slots__ = ("max_per_address", "max_per_user", "window", "delay", "max_delay", "_addresses", "_users")

    def __init__(self, max_per_address: int = 0, max_per_user: int = 0, window: float = 300.0,
                 delay: float = 0.0, max_delay: float = 30.0, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_per_address = max_per_address
        self.max_per_user = max_per_user
        self.window = window
        self.delay = delay
        self.max_delay = max_delay
        self._addresses: ExpiringTable[list[int]] = ExpiringTable(max_entries)
        self._users: ExpiringTable[list[int]] = ExpiringTable(max_entries)

    @property
    def enabled(self) -> bool:
        """Whether failures need counting at all."""
        return bool(self.max_per_address or self.max_per_user or self.delay)

    def blocked(self, address: Optional[str], username: Optional[str], now: float) -> Optional[str]:
        """
        Whether AUTH from C{address} (a key, see L{_addrlimits.address_key})
        for C{username} (C{None} before the client named one) must be
        refused: L{BY_ADDRESS}, L{BY_USER} or C{None}.
        """
        if self.max_per_address and address is not None:
            entry = self._addresses.get(address, now)
            if entry is not None and entry[0] >= self.max_per_address:
                return BY_ADDRESS
        if self.max_per_user and username is not None:
            entry = self._users.get(_user_key(username), now)
            if entry is not None and entry[0] >= self.max_per_user:
                return BY_USER
        return None

    def failed(self, address: Optional[str], username: Optional[str], now: float) -> float:
        """Count a failure; return the tarpit delay (seconds) before answering it."""
        counts = 0
        if address is not None:
            counts = self._count(self._addresses, address, now)
        if username is not None:
            counts = max(counts, self._count(self._users, _user_key(username), now))
        return self.delay_for(counts)

    def _count(self, table: ExpiringTable[list[int]], key: str, now: float) -> int:
        entry = table.get(key, now)
        if entry is None:
            table.put(key, [1], now + self.window, now)
            return 1
        entry[0] += 1
        return entry[0]

    def delay_for(self, failures: int) -> float:
        """The tarpit delay for the C{failures}-th failure: C{delay}, doubled each time, capped."""
        if not self.delay or failures < 1:
            return 0.0
        return float(min(self.delay * 2.0 ** min(failures - 1, 64), self.max_delay))

    def failures(self, address: Optional[str], username: Optional[str], now: float) -> Tuple[int, int]:
        """The failures counted now for C{address} and C{username}."""
        a = self._addresses.get(address, now) if address is not None else None
        u = self._users.get(_user_key(username), now) if username is not None else None
        return (a[0] if a else 0), (u[0] if u else 0)

    @property
    def sizes(self) -> Tuple[int, int]:
        """(address keys, user names) remembered: what a flood can grow."""
        return len(self._addresses), len(self._users)
