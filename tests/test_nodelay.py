# -*- test-case-name: tests.test_nodelay -*-
"""
Nagle's algorithm is off on every TCP connection the server answers
(L{txsmtpsrv._sendnow.no_delay}).

Why it matters: a reply that a hook gives later (an asynchronous
C{on_rcpt_to} behind a pipelined MAIL) is a
second small segment sent while the first is unacknowledged; under Nagle it
waits for the client's delayed ACK, 40 ms per pipelined group on Linux
(C{bench/pipeline_async.py}; timings are measured there, not asserted here).
The tests check the socket option itself, over loopback, on each way a
connection reaches the protocol: plain TCP, our PROXY wrapper, implicit TLS.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from typing import Any, List

from twisted.internet import defer, reactor
from twisted.internet.tcp import Connection, Server
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import Hooks, SMTPServer, TLSConfig
from txsmtpsrv._sendnow import no_delay

from tests._certs import unverified_client_context


class Recording(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: List[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.calls.append(enabled)


def test_no_delay_asks_the_transport() -> None:
    transport = Recording()
    no_delay(transport)
    assert transport.calls == [True]


def test_no_delay_without_the_method_does_nothing() -> None:
    """An in-memory transport (no C{setTcpNoDelay}) is left alone, without an error."""
    no_delay(StringTransport())


def tcp_socket(transport: Any) -> socket.socket:
    """The TCP socket under whatever wraps the protocol's transport (TLS, PROXY)."""
    while not isinstance(transport, Connection):
        transport = transport.transport
    return transport.socket


PROXY_HEADER = b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n"
PROXIED = "smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1"


def greeted(sock: Any) -> Any:
    """C{sock} once its whole 220 greeting line has been read (a plain or a TLS socket)."""
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        assert chunk, "closed before the greeting"
        greeting += chunk
    assert greeting.startswith(b"220 "), greeting
    return sock


class LoopbackTests(unittest.TestCase):
    timeout = 60

    def serve(self, endpoint: str = "tcp:0:interface=127.0.0.1", **options: Any) -> "defer.Deferred[int]":
        options.setdefault("name", "mx.test")
        self.server = SMTPServer(Hooks(), disable_reverse_lookup=True, **options)
        self.addCleanup(self.server.close)
        return self.server.listen(endpoint).addCallback(lambda port: port.getHost().port)

    def flags(self) -> List[int]:
        """TCP_NODELAY of every server-side connection now open."""
        return [tcp_socket(p.transport).getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for p in self.server._connections]

    @defer.inlineCallbacks
    def assert_no_delay(self, connect: Any) -> Any:
        """
        Connect in a thread (C{connect} returns after the greeting): the one
        server-side connection has TCP_NODELAY on; then let the client go.
        """
        client = yield deferToThread(connect).addTimeout(30, reactor)
        try:
            flags = self.flags()
        finally:
            yield deferToThread(client.close).addTimeout(30, reactor)
        self.assertEqual(len(flags), 1)
        self.assertTrue(flags[0])

    @defer.inlineCallbacks
    def test_plain_tcp(self) -> None:
        port = yield self.serve()

        def connect() -> smtplib.SMTP:
            s = smtplib.SMTP("127.0.0.1", port, timeout=10)
            s.ehlo("client.test")
            return s

        yield self.assert_no_delay(connect)

    @defer.inlineCallbacks
    def test_through_the_proxy_wrapper(self) -> None:
        port = yield self.serve(PROXIED)

        def connect() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(PROXY_HEADER)
            return greeted(s)

        yield self.assert_no_delay(connect)

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> None:
        port = yield self.serve(tls=TLSConfig(), secure=True)

        def connect() -> ssl.SSLSocket:
            return greeted(unverified_client_context().wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10)))

        yield self.assert_no_delay(connect)

    @defer.inlineCallbacks
    def test_implicit_tls_through_the_proxy_wrapper(self) -> None:
        """Twisted's TLS over our PROXY wrapper (the path implicit TLS keeps on Twisted's layer)."""
        port = yield self.serve(PROXIED, tls=TLSConfig(), secure=True)

        def connect() -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            raw.sendall(PROXY_HEADER)
            return greeted(unverified_client_context().wrap_socket(raw))

        yield self.assert_no_delay(connect)


class _Refusing:
    """A TCP socket as macOS has it once the client reset: C{setsockopt} fails with C{EINVAL}."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.asked = 0

    def setsockopt(self, *args: Any) -> None:
        self.asked += 1
        raise OSError(22, "Invalid argument")


class QuietFailureTests(unittest.TestCase):
    """
    A refused option is no error worth a line: macOS refuses C{TCP_NODELAY}
    (C{EINVAL}) on a socket the client has already reset (a port scanner, a
    health check), and Twisted's C{setTcpNoDelay} would log a traceback for it.
    """

    def setUp(self) -> None:
        from twisted.logger import globalLogPublisher
        self.events: List[Any] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        accepted, addr = listener.accept()
        accepted.setblocking(False)
        for s in (listener, client, accepted):
            self.addCleanup(s.close)
        self.server = Server(accepted, None, addr, None, 1, MemoryReactor())  # (it watches the socket: not ours)
        self.refusing = _Refusing()
        self.server.socket = self.refusing

    def assertQuiet(self) -> None:
        self.assertEqual(self.refusing.asked, 1)
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None or e.get("isError")], [])

    def test_tcp(self) -> None:
        no_delay(self.server)
        self.assertQuiet()

    def test_through_wrappers(self) -> None:
        """Through the PROXY wrapper and Twisted's TLS alike (both C{ProtocolWrapper}s)."""
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
        outer = self.server
        for _ in range(2):
            wrapper = ProtocolWrapper(WrappingFactory(None), None)
            wrapper.transport = outer
            outer = wrapper
        no_delay(outer)
        self.assertQuiet()

    def test_gone(self) -> None:
        """After C{connectionLost} Twisted's connection has no socket: nothing to do, nothing raised."""
        del self.server.socket
        asked: List[bool] = []
        self.server.setTcpNoDelay = asked.append  # (Twisted's would raise: no socket)
        no_delay(self.server)
        self.assertEqual(asked, [])
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None or e.get("isError")], [])


def test_unix_socket_quiet() -> None:
    """A UNIX connection (a C{tcp.Server} subclass): its refusal of the TCP option (EOPNOTSUPP) is no error."""
    from twisted.internet.unix import Server as UNIXServer
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        server = UNIXServer(a, None, None, None, 1, MemoryReactor())
        no_delay(server)
    finally:
        a.close()
        b.close()
