"""
A test DNS zone, served by C{twisted.names.server} on 127.0.0.1 (or used
directly as an C{IResolver} in the in-memory tests).

Zone data is a plain dictionary, lower-case owner name to a list of
C{(type, value)}: TXT (a str, split into 255-octet strings), A, AAAA, MX
(C{(preference, host)}), PTR, CNAME; the pseudo-types SERVFAIL (the name
answers SERVFAIL) and HANG (no answer ever). Names not in the zone are
NXDOMAIN. Run as a program (C{python -m tests._dnszone ZONE.json HOST
PORT}) it serves a zone file until killed (port 0: it prints the one it got): the OpenDKIM cross-check runs it
inside a network namespace on port 53.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import common, dns, error, server

Zone = Dict[str, List[Tuple[str, Any]]]

_TYPES = {"TXT": dns.TXT, "A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "CNAME": dns.CNAME}


def _payload(rtype: str, value: Any) -> Any:
    if rtype == "TXT":
        data = value.encode() if isinstance(value, str) else value
        return dns.Record_TXT(*[data[i:i + 255] for i in range(0, max(len(data), 1), 255)], ttl=60)
    if rtype == "A":
        return dns.Record_A(value, ttl=60)
    if rtype == "AAAA":
        return dns.Record_AAAA(value, ttl=60)
    if rtype == "MX":
        return dns.Record_MX(value[0], value[1], ttl=60)
    if rtype == "PTR":
        return dns.Record_PTR(value, ttl=60)
    return dns.Record_CNAME(value, ttl=60)


class ZoneResolver(common.ResolverBase):
    """An C{IResolver} answering from a L{Zone}; counts the queries it got."""

    def __init__(self, zone: Zone) -> None:
        super().__init__()
        self.zone = {name.lower().rstrip("."): records for name, records in zone.items()}
        self.queries: List[Tuple[str, int]] = []
        self.hanging: List[Deferred[Any]] = []

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any) -> "Deferred[Any]":
        text = (name.decode("ascii") if isinstance(name, bytes) else str(name)).lower().rstrip(".")
        self.queries.append((text, type))
        records = self.zone.get(text)
        if records is None:
            return fail(error.DNSNameError(text))
        kinds = {r for r, _ in records}
        if "SERVFAIL" in kinds:
            return fail(error.DNSServerError(text))
        if "HANG" in kinds:
            d: Deferred[Any] = Deferred()
            self.hanging.append(d)
            return d
        answers = []
        for rtype, value in records:
            code = _TYPES[rtype]
            if code == type or (rtype == "CNAME" and type != dns.CNAME):
                answers.append(dns.RRHeader(text, code, dns.IN, 60, _payload(rtype, value), auth=True))
        return succeed((answers, [], []))


class _QuietFactory(server.DNSServerFactory):
    """Answers SERVFAIL without logging an error (the tests ask for it)."""

    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        # Every DNS*Error subclasses DomainError: only these mean "no such name".
        missing = failure.check(error.DNSNameError) or failure.type in (error.DomainError,
                                                                         error.AuthoritativeDomainError)
        rcode = dns.ENAME if missing else dns.ESERVER
        self.sendReply(protocol, self._responseFromMessage(message=message, rCode=rcode), address)


def serve(zone: Zone, reactor: Any, host: str = "127.0.0.1", port: int = 0) -> Tuple[Any, ZoneResolver]:
    """Serve C{zone} over UDP (the test answers all fit); returns C{(udp_port, resolver)}."""
    resolver = ZoneResolver(zone)
    factory = _QuietFactory(authorities=[resolver])
    udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=host)
    return udp, resolver


def main(argv: List[str]) -> None:
    from twisted.internet import reactor

    with open(argv[0]) as f:
        zone = {name: [tuple(r) for r in records] for name, records in json.load(f).items()}
    udp, _resolver = serve(zone, reactor, argv[1], int(argv[2]))
    print(f"ready {udp.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])


class ZoneProcess:
    """
    L{main} in a subprocess, for programs that need a DNS server while the
    test itself runs no reactor (twistd, spfquery). Use as a context manager;
    C{port} is its UDP port on 127.0.0.1.
    """

    def __init__(self, zone: Zone, directory: str) -> None:
        import os
        import subprocess

        path = os.path.join(directory, "zone.json")
        with open(path, "w") as f:
            json.dump(zone, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests._dnszone", path, "127.0.0.1", "0"], cwd=root,
                                     env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready "):
            self.proc.kill()
            raise AssertionError(f"the DNS server did not start: {line!r}")
        self.port = int(line.split()[1])

    def __enter__(self) -> "ZoneProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
