# -*- test-case-name: tests.test_testing -*-
"""
Test helpers: your hooks in memory, and a real server for code that sends mail.

In memory (no sockets, no threads), for hooks::

    from txsmtpsrv import SMTPServer
    from txsmtpsrv.testing import TestClient, make_server

    server, clock = make_server(MyHooks(), size=1000)
    client = TestClient(server)
    client.command("EHLO client.test")          # -> Reply(250, ...)
    replies = client.sendmail("a@x.test", ["b@y.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    assert replies[-1].code == 250
    clock.advance(60)                           # drive timeouts

The client talks to a real server protocol over an in-memory transport;
hooks that return Deferreds fire when you fire them (L{Pending} keeps them
for you), so every interleaving can be tested deterministically.
C{TestClient(server, tls="starttls")} adds an in-memory STARTTLS
(L{TestClient.starttls}); an LMTP server is spoken to in LMTP.

Over loopback, for code outside Twisted (C{smtplib}, C{aiosmtplib}, web
frameworks, task queues): L{ThreadedServer} runs in a background reactor
thread and captures what it accepts; the pytest plugin registered by this
package wraps it in the C{smtp_server}, C{smtps_server} and
C{smtp_server_factory} fixtures.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from ._capture import CapturedMessage, MessagesNotReceived
from ._errors import Reply
from ._server import SMTPServer
from ._testca import TestCA, test_ca
from ._threaded import ThreadedServer

__all__ = [
    "CapturedMessage", "FakeResolver", "ImplicitTLSStringTransport", "MessagesNotReceived", "Pending", "Replies",
    "TLSStringTransport", "TestCA", "TestClient", "ThreadedServer", "dot_stuff", "make_server", "parse_replies",
    "test_ca",
]

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

    def __init__(self, names: Optional[Dict[str, Any]] = None, hang: bool = False) -> None:
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


class Pending:
    """
    Hooks whose C{hook} (e.g. C{"on_rcpt_to"}) answers with a Deferred that
    you fire when you like: a slow hook, under your control::

        hooks = Pending("on_rcpt_to")
        client = TestClient(make_server(hooks)[0])
        ...
        hooks.deferreds[0].callback(None)      # accept the first RCPT now

    @ivar calls: the arguments of each call, in order.
    @ivar deferreds: the Deferred returned to each call, in order.
    """

    def __init__(self, hook: str) -> None:
        self.calls: List[Tuple[Any, ...]] = []
        self.deferreds: List[Deferred[Any]] = []

        def answer(*args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.calls.append(args)
            self.deferreds.append(d)
            return d

        setattr(self, hook, answer)


# The interface (through ITCPTransport) also lists TCP socket options that
# this fake does not need.
@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]
    """
    A C{StringTransport} that can start TLS, in pretence: C{startTLS}
    records the context factory it is given (C{tls_contexts}) and what had
    been written before (C{written_before_tls}), and from then on the
    transport provides C{ISSLTransport}. No crypto runs; the handshake ends
    when the test says so (L{TestClient.starttls}).
    """

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self.tls_contexts: List[Any] = []
        self.written_before_tls = b""

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_contexts.append(contextFactory)
        self.written_before_tls = self.value()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        directlyProvides(self, ITLSTransport, ISSLTransport)


class ImplicitTLSStringTransport(StringTransport):
    """A C{StringTransport} that is TLS from the start, as one under C{wrapServerTLS} (port 465)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        directlyProvides(self, ISSLTransport)


_TRANSPORTS: Dict[Any, Callable[..., StringTransport]] = {
    None: StringTransport, False: StringTransport, "starttls": TLSStringTransport,
    "implicit": ImplicitTLSStringTransport,
}
_HELLO_VERBS = ("EHLO ", "HELO ", "LHLO ")


class Replies(list[Reply]):
    """
    The replies to a L{TestClient.sendmail}, in order (a list), plus
    C{recipients}: C{(address, final reply)} for each accepted recipient —
    in LMTP the reply for that recipient, in SMTP the one reply to the
    message. Empty while the final replies have not all arrived.
    """

    recipients: List[Tuple[str, Reply]]


class TestClient:
    """
    An in-memory SMTP or LMTP client connected to C{server}: it follows the
    server's mode (LHLO and one final reply per recipient for LMTP).

    @param tls: C{None} (a plain transport, no STARTTLS offered),
        C{"starttls"} (a L{TLSStringTransport}: STARTTLS is offered, see
        L{starttls}) or C{"implicit"} (an L{ImplicitTLSStringTransport}; the
        pretend handshake completes after the greeting unless
        C{handshake=False}).
    @ivar transport: the transport the server writes to.
    @ivar protocol: the server's protocol for this connection.
    @ivar lmtp: whether the server speaks LMTP.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, server: SMTPServer, peer: Union[Tuple[str, int], IPv4Address, IPv6Address]
                 = ("192.0.2.10", 40000), host: Tuple[str, int] = ("192.0.2.1", 25),
                 greeting: bool = True, tls: Optional[str] = None, handshake: bool = True) -> None:
        if tls not in _TRANSPORTS:
            raise ValueError(f"tls must be None, 'starttls' or 'implicit', not {tls!r}")
        if isinstance(peer, tuple):
            peer = (IPv6Address if ":" in peer[0] else IPv4Address)("TCP", *peer)
        host_addr = (IPv6Address if ":" in host[0] else IPv4Address)("TCP", *host)
        self.server = server
        self.lmtp = bool(server.options.lmtp)
        self.transport = _TRANSPORTS[tls](hostAddress=host_addr, peerAddress=peer)
        self.protocol: Any = server.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self._pending = b""
        self.greeting: Optional[Reply] = None
        if greeting:
            replies = self.replies()
            self.greeting = replies[0] if replies else None
        if tls == "implicit" and handshake:
            self.handshake()

    @property
    def session(self) -> Any:
        """The server's L{Session} for this connection, as hooks see it."""
        return self.protocol.session

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
        data: bytes = self.transport.value()
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

    def _hello_line(self, name: str) -> str:
        if name[:5].upper() in _HELLO_VERBS:
            return name  # the caller spelled the command out
        return f"{'LHLO' if self.lmtp else 'EHLO'} {name}"

    def ehlo(self, name: str = "client.test") -> Reply:
        """Send EHLO, or LHLO to an LMTP server; return the reply."""
        return self.command(self._hello_line(name))

    def starttls(self, handshake: bool = True) -> Reply:
        """
        Send STARTTLS; on C{220}, start the pretend TLS and (unless
        C{handshake=False}, to test what happens before it ends) complete
        its handshake. Returns the reply, whatever it is.
        """
        if not ITLSTransport.providedBy(self.transport) and not ISSLTransport.providedBy(self.transport):
            raise RuntimeError("this TestClient cannot start TLS: create it with tls='starttls'")
        reply = self.command("STARTTLS")
        if reply.code == 220 and handshake:
            self.handshake()
        return reply

    def handshake(self) -> None:
        """Complete the pretend TLS handshake: the server learns TLS is up (C{on_secure} runs)."""
        if IHandshakeListener.providedBy(self.protocol):
            self.protocol.handshakeCompleted()

    def sendmail(self, mail_from: str, rcpt_to: Iterable[str], body: bytes,
                 mail_params: str = "", ehlo: Optional[str] = "client.test") -> Replies:
        """
        Run a whole transaction, pipelined in one write; EHLO (LHLO for an
        LMTP server) first unless C{ehlo} is None (C{ehlo} may also be a
        whole command such as C{"HELO x"}). Returns every reply in order:
        the last one is the verdict on the message (in LMTP, the last
        I{n}, one per accepted recipient), if the server got that far; see
        L{Replies.recipients}.
        """
        rcpts = list(rcpt_to)
        lines = []
        if ehlo is not None:
            lines.append(self._hello_line(ehlo))
        lines.append(f"MAIL FROM:<{mail_from}>" + (f" {mail_params}" if mail_params else ""))
        lines.extend(f"RCPT TO:<{r}>" for r in rcpts)
        lines.append("DATA")
        self.send("".join(line + "\r\n" for line in lines).encode("utf-8") + dot_stuff(body))
        replies = Replies(self.replies())
        replies.recipients = self._recipients(replies, rcpts, 1 if ehlo is not None else 0)
        return replies

    def _recipients(self, replies: List[Reply], rcpts: List[str], first: int) -> List[Tuple[str, Reply]]:
        answers = replies[first + 1:first + 1 + len(rcpts)]
        data_at = first + 1 + len(rcpts)
        if len(answers) < len(rcpts) or len(replies) <= data_at or replies[data_at].code != 354:
            return []
        accepted = [r for r, reply in zip(rcpts, answers) if reply.code < 300]
        finals = replies[data_at + 1:]
        if self.lmtp:
            return list(zip(accepted, finals)) if len(finals) >= len(accepted) else []
        return [(r, finals[0]) for r in accepted] if finals else []

    def disconnect(self) -> None:
        """The client vanishes (connection lost)."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        self.protocol.connectionLost(Failure(ConnectionLost()))
