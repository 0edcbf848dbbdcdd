# -*- test-case-name: tests.test_guard -*-
"""
The abuse-limit state one server shares between its connections: the
per-address tables (concurrent connections, connect rate, AUTH failures).
Each is bounded (see L{_addrlimits}); the operator's log says a refusal by a
per-address limit once per address per minute (L{_oplog}).
L{_cmd_guard.GuardCommands} is the part of the dialogue that consults it.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

from typing import Any, Dict

from ._addrlimits import ConnectionLimiter
from ._authlimit import AuthFailures

__all__ = ["Guard"]


class Guard:
    """
    What one server's connections share to enforce per-address limits.

    @ivar connections: concurrent connections and connect rate per address.
    @ivar auth: failed AUTH attempts per address and user name.
    """

    __slots__ = ("connections", "auth", "ipv6_prefix")

    def __init__(self, options: Any) -> None:
        self.ipv6_prefix = options.ipv6_prefix
        self.connections = ConnectionLimiter(options.max_clients_per_ip, options.max_connect_rate,
                                             ipv6_prefix=options.ipv6_prefix,
                                             exceptions=options.connection_limit_exceptions)
        self.auth = AuthFailures(options.max_auth_failures_per_ip, options.max_auth_failures_per_user,
                                 options.auth_failure_window, options.auth_failure_delay,
                                 options.auth_failure_max_delay)

    @property
    def sizes(self) -> Dict[str, int]:
        """How many keys each table holds: what a flood could grow (all bounded)."""
        open_keys, rate_keys = self.connections.sizes
        addresses, users = self.auth.sizes
        return {"open": open_keys, "rate": rate_keys, "auth_addresses": addresses, "auth_users": users}
