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
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
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
    def hold_open(self, connect: Any) -> Any:
        """Connect in a thread (C{connect} returns after the greeting), read the flags, then let go."""
        client = yield deferToThread(connect).addTimeout(30, reactor)
        try:
            flags = self.flags()
        finally:
            yield deferToThread(client.close).addTimeout(30, reactor)
        return flags

    @defer.inlineCallbacks
    def test_plain_tcp(self) -> None:
        port = yield self.serve()

        def connect() -> smtplib.SMTP:
            s = smtplib.SMTP("127.0.0.1", port, timeout=10)
            s.ehlo("client.test")
            return s

        flags = yield self.hold_open(connect)
        self.assertEqual(len(flags), 1)
        self.assertTrue(flags[0])

    @defer.inlineCallbacks
    def test_through_the_proxy_wrapper(self) -> None:
        port = yield self.serve("smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1")

        def connect() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
            greeting = b""
            while not greeting.endswith(b"\r\n"):
                chunk = s.recv(1024)
                assert chunk, "closed before the greeting"
                greeting += chunk
            assert greeting.startswith(b"220 "), greeting
            return s

        flags = yield self.hold_open(connect)
        self.assertEqual(len(flags), 1)
        self.assertTrue(flags[0])

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> None:
        port = yield self.serve(tls=TLSConfig(), secure=True)

        def connect() -> ssl.SSLSocket:
            s = unverified_client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
            greeting = s.recv(1024)
            assert greeting.startswith(b"220 "), greeting
            return s

        flags = yield self.hold_open(connect)
        self.assertEqual(len(flags), 1)
        self.assertTrue(flags[0])
