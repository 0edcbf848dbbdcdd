# -*- test-case-name: tests.test_limitopts -*-
"""
The abuse limits (issue 12) on the C{twistd smtpsrv} command line: one flag
per L{ServerOptions} field (L{_cli} adds them to its C{LIMITS}), with a
daemon's defaults, and C{--auth file:} read once into memory.

The library's defaults suit sinks and tests (no per-address limit, no
greeting delay); an internet MX needs them on, so C{twistd smtpsrv}
defaults to 20 concurrent connections and 120 new ones per minute per
address, a 0.1 s greeting delay when it listens beyond loopback, and AUTH
failure limits with a tarpit.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Optional, Sequence, Tuple

from ._optcheck import cidrs, integer, seconds, seconds_upto

__all__ = ["LIMIT_FLAGS", "apply_defaults", "beyond_loopback", "file_checker", "reload_checkers"]


_count = integer(0)
_prefix = integer(0, 128)
_delay = seconds_upto(3600)


#: (flag, ServerOptions field, coerce, twistd default (None: none, or computed: greeting-delay), help)
LIMIT_FLAGS: Tuple[Tuple[str, str, Callable[[str], Any], Any, str], ...] = (
    ("max-clients-per-ip", "max_clients_per_ip", _count, 20,
     "Concurrent connections from one client address (IPv6: one --ipv6-prefix network), after "
     "PROXY/XCLIENT; more get 421 4.7.0 as the greeting. [default: 20]"),
    ("max-connect-rate", "max_connect_rate", _count, 120,
     "New connections per minute from one client address, refused ones included; more get "
     "421 4.7.0 as the greeting. [default: 120]"),
    ("connection-limit-exceptions", "connection_limit_exceptions", cidrs, None,
     "Networks exempt from --max-clients-per-ip and --max-connect-rate (monitoring probes, a load "
     "balancer's health checks), comma separated CIDRs (e.g. 127.0.0.1/32,10.1.2.0/24); nothing else "
     "is waived. [default: none]"),
    ("ipv6-prefix", "ipv6_prefix", _prefix, 64,
     "IPv6 clients are counted per network of this many bits. [default: 64]"),
    ("greeting-delay", "greeting_delay", _delay, None,
     "Seconds the 220 greeting is held; a client talking before it gets 554 5.7.1, then only QUIT. "
     "[default: 0.1 when a --listen address is not loopback, else 0]"),
    ("max-junk-commands", "max_junk_commands", _count, 100,
     "NOOP, RSET, VRFY, EXPN and HELP allowed between delivered messages; the next gets 421. "
     "[default: 100]"),
    ("max-auth-failures-per-ip", "max_auth_failures_per_ip", _count, 10,
     "Failed AUTH from one address within --auth-failure-window, over all its connections; then "
     "AUTH gets 454 4.7.0 without checking the password (counted per worker). [default: 10]"),
    ("max-auth-failures-per-user", "max_auth_failures_per_user", _count, 0,
     "The same per user name from any address (lets anyone lock that user out for a window). "
     "[default: 0, off]"),
    ("auth-failure-window", "auth_failure_window", seconds, 300.0,
     "Seconds after an address's (user's) first failure when its count starts again. [default: 300]"),
    ("auth-failure-delay", "auth_failure_delay", _delay, 1.0,
     "Tarpit: seconds before a failed AUTH is answered, doubling with each failure of the address "
     "or user. [default: 1]"),
    ("auth-failure-max-delay", "auth_failure_max_delay", _delay, 30.0,
     "The longest tarpit delay. [default: 30]"),
)


_SPLIT = re.compile(r"(?<!\\):")


def beyond_loopback(descriptions: Sequence[str], adopted: bool = False) -> bool:
    """
    Whether any C{--listen} endpoint takes connections from beyond this
    machine: a TCP endpoint without an C{interface} (all addresses) or with
    a non-loopback one; an endpoint type we cannot read and an adopted
    socket count as beyond. UNIX sockets do not.
    """
    if adopted:
        return True
    for description in descriptions:
        tokens = [t.replace("\\:", ":") for t in _SPLIT.split(description)]
        # Skip wrappers (smtps:, smtpproxy:...:) to the endpoint itself.
        kinds = [i for i, t in enumerate(tokens) if t in ("tcp", "tcp6", "ssl", "unix")]
        if not kinds:
            return True
        kind = tokens[kinds[0]]
        if kind == "unix":
            continue
        interface = next((t.split("=", 1)[1] for t in tokens[kinds[0] + 1:] if t.startswith("interface=")), "")
        try:
            if not ipaddress.ip_address(interface.strip("[]")).is_loopback:
                return True
        except ValueError:  # "" (every address) or a host name
            if interface != "localhost":
                return True
    return False


def apply_defaults(options: Any, descriptions: Sequence[str], adopted: bool = False) -> None:
    """Fill the flags not given with the daemon's defaults (C{options} is a C{usage.Options})."""
    for flag, _, _, default, _ in LIMIT_FLAGS:
        if options[flag] is None:
            if flag == "greeting-delay":
                default = 0.1 if beyond_loopback(descriptions, adopted) else 0.0
            options[flag] = default


def file_checker(description: str) -> Optional[Any]:
    """
    For C{--auth file:PATH}, a L{FileCredentialsChecker} (the file read now:
    a bad one raises C{ValueError} naming it); C{None} for other kinds.
    """
    kind, _, path = description.partition(":")
    if kind != "file":
        return None
    from ._cred import FileCredentialsChecker
    try:
        return FileCredentialsChecker(path)
    except OSError as e:
        raise ValueError(f"--auth file:{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"--auth file:{path}: {e}") from None


def reload_checkers(checkers: Sequence[Any]) -> None:
    """SIGHUP: re-read the C{--auth} files (in the auth pool; failures are logged, old contents kept)."""
    for checker in checkers:
        reload = getattr(checker, "reload", None)
        if reload is not None:
            reload()
