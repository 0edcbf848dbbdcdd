# -*- test-case-name: tests.test_authres_dns -*-
"""
DNS for the authentication checks: C{twisted.names}, bounded.

A L{MessageDNS} is made per transaction. Every query goes through the
injected C{IResolver} (non-blocking), with a retry schedule and a hard cap
per query (C{Deferred.addTimeout}); answers are cached for the transaction
and the number of queries is capped (the per-message budget), so a hostile
SPF tree or a message with a hundred signatures cannot make us send more
than C{budget} queries. Every failure other than "no such name"/"no data"
becomes L{DNSTempError}: the checks report C{temperror}, never hang or raise.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Callable, Dict, List, Sequence, Tuple, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.python.failure import Failure

from ._results import Answer, DNSTempError

__all__ = ["MessageDNS", "make_resolver", "parse_nameserver"]

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def parse_nameserver(text: str) -> Tuple[str, int]:
    """C{HOST}, C{HOST:PORT}, C{[V6]:PORT} or a bare IPv6 address: C{(host, port)}."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in nameserver {text!r}")
    try:
        number = int(port) if port else 53
    except ValueError:
        raise ValueError(f"bad port in nameserver {text!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad port in nameserver {text!r}")
    return host, number


def make_resolver(nameservers: Sequence[str] = (), reactor: Any = None) -> IResolver:
    """
    A C{twisted.names} resolver asking C{nameservers} (C{HOST[:PORT]}), or
    the servers in C{/etc/resolv.conf} when none are given.
    """
    from twisted.names import client

    if nameservers:
        servers = [parse_nameserver(n) for n in nameservers]
        return cast(IResolver, client.Resolver(servers=servers, reactor=reactor))
    return cast(IResolver, client.Resolver(resolv="/etc/resolv.conf", reactor=reactor))


def _valid_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return name.isascii() and len(name) <= 253 and all(_LABEL.match(label) for label in labels)


def _convert(rrtype: str, result: Any) -> List[Answer]:
    from twisted.names import dns

    records = result[0] if isinstance(result, tuple) else result
    wanted = {"TXT": dns.TXT, "A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR}[rrtype]
    out: List[Answer] = []
    for record in records:
        if record.type != wanted:
            continue
        payload = record.payload
        if rrtype == "TXT":
            out.append(b"".join(payload.data))
        elif rrtype == "A":
            out.append(socket.inet_ntop(socket.AF_INET, payload.address))
        elif rrtype == "AAAA":
            out.append(socket.inet_ntop(socket.AF_INET6, payload.address))
        elif rrtype == "MX":
            out.append((payload.preference, payload.name.name.decode("ascii", "replace")))
        else:
            out.append(payload.name.name.decode("ascii", "replace"))
    return out


class MessageDNS:
    """
    The L{Lookup} of one transaction: C{await dns(name, rrtype)}.

    @param resolver: a C{twisted.names} C{IResolver}.
    @param clock: for the caps.
    @param timeout: seconds one query may take in all (its retries included).
    @param budget: queries this transaction may send; more raise L{DNSTempError}.
    """

    def __init__(self, resolver: IResolver, clock: IReactorTime, timeout: float = 5.0, budget: int = 50) -> None:
        self._resolver = resolver
        self._clock = clock
        self._timeout = timeout
        self._budget = budget
        self.queries = 0
        self._cache: Dict[Tuple[str, str], Any] = {}
        self._waiting: Dict[Tuple[str, str], List[Deferred[List[Answer]]]] = {}

    def __call__(self, name: str, rrtype: str) -> "Deferred[List[Answer]]":
        name = name.rstrip(".").lower()
        key = (name, rrtype)
        if key in self._cache:
            cached = self._cache[key]
            return fail(cached) if isinstance(cached, DNSTempError) else succeed(list(cached))
        if key in self._waiting:  # the same question is on its way: share its answer
            waiter: Deferred[List[Answer]] = Deferred()
            self._waiting[key].append(waiter)
            return waiter
        if not _valid_name(name):
            return succeed([])  # cannot exist: as NXDOMAIN
        if self.queries >= self._budget:
            return fail(DNSTempError(f"DNS budget of {self._budget} queries spent"))
        self.queries += 1
        method: Callable[..., Any] = {"TXT": self._resolver.lookupText, "A": self._resolver.lookupAddress,
                  "AAAA": self._resolver.lookupIPV6Address, "MX": self._resolver.lookupMailExchange,
                  "PTR": self._resolver.lookupPointer}[rrtype]
        # Two tries that end (and clean up) before the cap, which holds whatever the resolver does.
        d: Deferred[Any] = maybeDeferred(method, name, timeout=(self._timeout * 0.3, self._timeout * 0.6))
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(lambda result: _convert(rrtype, result), self._failed, errbackArgs=(name, rrtype))

        self._waiting[key] = []

        def remember(value: Any) -> Any:
            cached: Any = value
            if isinstance(value, Failure):
                cached = value.value if isinstance(value.value, DNSTempError) else DNSTempError(str(value.value))
            self._cache[key] = cached
            for waiter in self._waiting.pop(key, []):
                if isinstance(cached, DNSTempError):
                    waiter.errback(cached)
                else:
                    waiter.callback(list(cached))
            return value

        return d.addBoth(remember)

    @staticmethod
    def _failed(reason: Failure, name: str, rrtype: str) -> List[Answer]:
        from twisted.names import error

        # Every DNS*Error subclasses DomainError: only NXDOMAIN and an
        # authority's plain "no such name" mean the name does not exist.
        missing = reason.check(error.DNSNameError)
        if missing or reason.type in (error.DomainError, error.AuthoritativeDomainError):
            return []
        if reason.check(DNSTempError):
            reason.raiseException()
        why = reason.type.__name__ if reason.type is not None else "error"
        raise DNSTempError(f"{rrtype} {name}: {why}")
