# -*- test-case-name: tests.test_rdns -*-
"""
Reverse DNS for connecting clients, bounded in time and never failing.

An SMTP server looks up the client's PTR record before greeting it (for
C{Received:} headers and hooks), but must not let a slow or broken DNS delay
the greeting for long: C{twisted.names}' default query timeout adds up to
60 seconds.  L{reverse_lookup} asks with a short retry schedule, caps the
whole lookup with C{Deferred.addTimeout}, and turns every failure into
C{None}.  The resolver is injectable (any C{IResolver}), so tests use a fake
one and deployments can point at a local caching resolver.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Sequence, cast

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._ipaddr import address_literal, canonical_ip, client_hostname, unmapped

__all__ = ["address_literal", "canonical_ip", "client_hostname", "reverse_lookup"]

log = Logger()

# A PTR target is attacker-controlled text that ends up in Received: headers
# and logs: only accept something shaped like a host name.
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def _query_timeouts(total: float) -> tuple[float, ...]:
    """Per-attempt timeouts for C{lookupPointer}: one retry, summing to C{total}."""
    return (total * 0.4, total * 0.6)


def _ptr_name(answers: Any) -> str | None:
    from twisted.names import dns

    records, _authority, _additional = answers
    for record in records:
        if record.type == dns.PTR:
            name = record.payload.name.name
            if isinstance(name, bytes):
                try:
                    name = name.decode("ascii")
                except UnicodeDecodeError:
                    return None
            name = name.rstrip(".")
            if len(name) <= 253 and _HOSTNAME.fullmatch(name):  # not match: "$" passes a final LF
                return str(name).lower()
            return None
    return None


def reverse_lookup(
    ip: str,
    resolver: IResolver | None = None,
    timeout: float = 1.5,
    clock: IReactorTime | None = None,
) -> Deferred[str | None]:
    """
    Look up the PTR name of C{ip}; fire with it, or C{None} on any failure.

    @param ip: IPv4 or IPv6 address text (an IPv6 scope id is ignored; an
        IPv4-mapped IPv6 address is looked up under in-addr.arpa).
    @param resolver: an C{IResolver}; default: C{twisted.names.client}'s
        global resolver (C{/etc/resolv.conf}).
    @param timeout: hard cap in seconds on the whole lookup.
    @param clock: C{IReactorTime} for the cap (default: the global reactor).
    @return: a Deferred that never fails: the lower-cased host name without
        the trailing dot, or C{None} for NXDOMAIN, no PTR record, an
        implausible name, a DNS error or a timeout.  Cancelling it cancels
        the query and also fires it with C{None}.
    """
    try:
        name = unmapped(ipaddress.ip_address(ip.split("%", 1)[0])).reverse_pointer
    except ValueError:
        log.debug("reverse lookup skipped: {ip!r} is not an IP address", ip=ip)
        return succeed(None)
    if resolver is None:
        from twisted.names import client

        resolver = client.getResolver()
    if clock is None:
        from twisted.internet import reactor

        clock = reactor

    # IResolver annotates the per-attempt timeouts as Sequence[int], but
    # twisted.names takes seconds as floats.
    attempts = cast(Sequence[int], _query_timeouts(timeout))
    d: Deferred[Any] = maybeDeferred(resolver.lookupPointer, name, timeout=attempts)
    d.addTimeout(timeout, clock)
    d.addCallback(_ptr_name)

    def failed(reason: Failure) -> None:
        log.debug(
            "reverse lookup of {ip} failed: {error}",
            ip=ip,
            error=reason.getErrorMessage() or getattr(reason.type, "__name__", "error"),
        )
        return None

    d.addErrback(failed)
    return d
