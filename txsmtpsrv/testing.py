# -*- test-case-name: tests.test_testing -*-
"""
Test your hooks without sockets::

    from txsmtpsrv import SMTPServer
    from txsmtpsrv.testing import TestClient, make_server

    server, clock = make_server(MyHooks(), size=1000)
    client = TestClient(server)
    client.command("EHLO client.test")          # -> Reply(250, ...)
    replies = client.sendmail("a@x.test", ["b@y.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    assert replies[-1].code == 250
    clock.advance(60)                           # drive timeouts

The client talks to a real server protocol over an in-memory transport;
hooks that return Deferreds fire when you fire them, so every interleaving
can be tested deterministically.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, List, Optional, Tuple, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from ._errors import Reply
from ._server import SMTPServer

__all__ = ["FakeResolver", "TestClient", "make_server", "parse_replies", "dot_stuff"]

_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3}) ")


def make_server(hooks: Optional[object] = None, *, resolver: Any = None,
                **options: Any) -> Tuple[SMTPServer, Clock]:
    """
    A server on a fake clock: C{clock.advance(seconds)} drives its timers.

    Reverse DNS is off unless a C{resolver} (e.g. L{FakeResolver}) is given,
    so no test depends on real DNS.
    """
    clock = Clock()
    options.setdefault("name", "mx.test")
    if resolver is None:
        options.setdefault("disable_reverse_lookup", True)
    return SMTPServer(hooks, reactor=clock, resolver=resolver, **options), clock


class FakeResolver:
    """
    An C{IResolver} stand-in answering PTR queries from a dict of
    C{ip: name}; other addresses get NXDOMAIN. Set C{hang=True} to never
    answer (to test the lookup time limit).
    """

    def __init__(self, names: Optional[dict] = None, hang: bool = False) -> None:
        self.names = dict(names or {})
        self.hang = hang
        self.queries: List[str] = []

    def lookupPointer(self, name: Union[str, bytes], timeout: Any = None) -> "Deferred[Any]":
        from twisted.internet.defer import Deferred, fail, succeed
        from twisted.names import dns, error

        name = name.decode("ascii") if isinstance(name, bytes) else name
        self.queries.append(name)
        if self.hang:
            return Deferred()
        for ip, host in self.names.items():
            if ipaddress.ip_address(ip).reverse_pointer == name:
                rr = dns.RRHeader(name=name, type=dns.PTR, payload=dns.Record_PTR(host))
                return succeed(([rr], [], []))
        return fail(error.DNSNameError(name))


def parse_replies(data: bytes) -> Tuple[List[Reply], bytes]:
    """
    Split server output into complete replies (multi-line ones joined).

    @return: the replies and the bytes of any incomplete trailing reply.
    """
    replies: List[Reply] = []
    lines: List[str] = []
    enhanced: Optional[str] = None
    pos = done = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return replies, data[done:]
        m = _LINE.match(data[pos:end])
        if m is None:
            raise ValueError(f"not an SMTP reply line: {data[pos:end]!r}")
        text = m.group(3).decode("utf-8")
        e = _ENHANCED.match(text)
        if e:
            enhanced = e.group(1)
            text = text[e.end():]
        lines.append(text)
        pos = end + 2
        if m.group(2) == b" ":
            code = int(m.group(1))
            replies.append(Reply(code, lines, enhanced if enhanced and enhanced[0] == str(code)[0] else None))
            lines, enhanced, done = [], None, pos


def dot_stuff(body: bytes) -> bytes:
    """Prepare a body for DATA: CRLF-terminated, leading dots doubled, with the final dot."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class TestClient:
    """
    An in-memory SMTP client connected to C{server}.

    @ivar transport: the C{StringTransport} the server writes to.
    @ivar protocol: the server's protocol for this connection.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, server: SMTPServer, peer: Union[Tuple[str, int], IPv4Address, IPv6Address]
                 = ("192.0.2.10", 40000), host: Tuple[str, int] = ("192.0.2.1", 25),
                 greeting: bool = True) -> None:
        if isinstance(peer, tuple):
            peer = (IPv6Address if ":" in peer[0] else IPv4Address)("TCP", *peer)  # type: ignore[arg-type]
        host_addr = (IPv6Address if ":" in host[0] else IPv4Address)("TCP", *host)  # type: ignore[arg-type]
        self.transport = StringTransport(hostAddress=host_addr, peerAddress=peer)
        self.protocol = server.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self._pending = b""
        self.greeting: Optional[Reply] = None
        if greeting:
            replies = self.replies()
            self.greeting = replies[0] if replies else None

    @property
    def closed(self) -> bool:
        """Whether the server closed (or is closing) the connection."""
        return bool(self.transport.disconnecting)

    def send(self, data: Union[bytes, str]) -> None:
        """Send raw bytes (a str is UTF-8 encoded)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)

    def read(self) -> bytes:
        """Everything the server wrote since the last read."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def replies(self) -> List[Reply]:
        """The complete replies the server sent since the last call."""
        replies, self._pending = parse_replies(self._pending + self.read())
        return replies

    def codes(self) -> List[Tuple[int, Optional[str]]]:
        """C{(code, enhanced)} of each complete reply since the last read: compact to assert on."""
        return [(r.code, r.enhanced) for r in self.replies()]

    def command(self, line: Union[bytes, str]) -> Reply:
        """Send one command; return its reply (which must have arrived)."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        replies = self.replies()
        if len(replies) != 1:
            raise AssertionError(f"expected one reply to {line!r}, got {replies!r}")
        return replies[0]

    def sendmail(self, mail_from: str, rcpt_to: Iterable[str], body: bytes,
                 mail_params: str = "", ehlo: Optional[str] = "client.test") -> List[Reply]:
        """
        Run a whole transaction, pipelined in one write; EHLO first unless
        C{ehlo} is None. Returns every reply in order (the last is the
        verdict on the message, if the server got that far).
        """
        lines = []
        if ehlo is not None:
            lines.append(f"EHLO {ehlo}")
        lines.append(f"MAIL FROM:<{mail_from}>" + (f" {mail_params}" if mail_params else ""))
        lines.extend(f"RCPT TO:<{r}>" for r in rcpt_to)
        lines.append("DATA")
        self.send("".join(line + "\r\n" for line in lines).encode("utf-8") + dot_stuff(body))
        return self.replies()

    def disconnect(self) -> None:
        """The client vanishes (connection lost)."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        self.protocol.connectionLost(Failure(ConnectionLost()))
