# -*- test-case-name: tests.test_workers_wrapped -*-
"""
The C{adopted:FD:FAMILY} server endpoint string: a listening socket this
process inherited on file descriptor C{FD} (C{FAMILY} one of INET, INET6,
UNIX; INET by default).

C{--workers} uses it so that a worker builds a wrapped listener exactly as
the parent does from the same string, only around the inherited socket:
C{smtpproxy:trusted=10.0.0.0/8:adopted:3:INET} or C{smtps:adopted:4:INET}.
Kept tiny: every plugin module is imported whenever an endpoint string is
parsed.
"""

from __future__ import annotations

import socket
from typing import Any, Dict

from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["AdoptedEndpointParser", "FAMILIES"]

#: The FAMILY names of C{adopted:} strings (also C{--adopt FD:FAMILY} and the worker pool's).
FAMILIES: Dict[str, int] = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


@implementer(IPlugin, IStreamServerEndpointStringParser)
class AdoptedEndpointParser:
    """Parses C{adopted:FD[:FAMILY]} (or C{fd=FD:family=FAMILY})."""

    prefix = "adopted"

    def parseStreamServer(self, reactor: Any, fd: str = "", family: str = "INET") -> AdoptedStreamServerEndpoint:  # type: ignore[override]  # named parameters, as Twisted's own parsers
        try:
            number = int(fd)
        except ValueError:
            raise ValueError(f"adopted: wants a file descriptor number, not {fd!r}") from None
        if family.upper() not in FAMILIES:
            raise ValueError(f"adopted: family must be INET, INET6 or UNIX, not {family!r}")
        return AdoptedStreamServerEndpoint(reactor, number, FAMILIES[family.upper()])
