# -*- test-case-name: tests.test_proxy_endpoint -*-
"""
Tests for L{txsmtpsrv._proxy}'s endpoint: L{proxyEndpoint} and the
C{smtpproxy:} endpoint string (in memory), and the wrapper it listens with
on real TCP sockets on 127.0.0.1 (plain, STARTTLS, implicit TLS).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests._certs import self_signed
from tests._proxy import GreeterFactory, inet, tlv, v1, v2
from txsmtpsrv._proxy import (
    PP2_TYPE_UNIQUE_ID,
    ProxyEndpointParser,
    ProxyServerEndpoint,
    ProxyWrappingFactory,
    proxyEndpoint,
)


# ---------------------------------------------------------------------------
# endpoint and endpoint string


def test_proxy_endpoint_wraps_factory():
    """proxyEndpoint listens on the inner endpoint with a ProxyWrappingFactory."""
    memory = MemoryReactorClock()
    inner = GreeterFactory()
    ep = proxyEndpoint(TCP4ServerEndpoint(memory, 2525, interface="127.0.0.1"), trusted=["10.0.0.0/8"], timeout=3)
    ep.listen(inner)
    ((port, factory, backlog, interface),) = memory.tcpServers
    assert (port, interface) == (2525, "127.0.0.1")
    assert isinstance(factory, ProxyWrappingFactory) and factory.wrappedFactory is inner
    assert factory.timeout == 3 and [str(n) for n in factory.trusted] == ["10.0.0.0/8"]


def test_endpoint_string():
    """smtpproxy: strings (escaped IPv6 colons) build a ProxyServerEndpoint around the inner endpoint."""
    memory = MemoryReactorClock()
    ep = serverFromString(memory, r"smtpproxy:trusted=127.0.0.0/8,\:\:1:timeout=5:tcp:2525:interface=127.0.0.1")
    assert isinstance(ep, ProxyServerEndpoint)
    assert [str(n) for n in ep.trusted] == ["127.0.0.0/8", "::1/128"]
    assert ep.timeout == 5.0 and not ep.allow_untrusted
    ep.listen(GreeterFactory())
    ((port, factory, _, interface),) = memory.tcpServers
    assert (port, interface) == (2525, "127.0.0.1")
    assert factory.clock is memory


def test_endpoint_string_options():
    """Defaults, untrusted=pass, maxHeaderSize, timeout=0 and errors."""
    memory = MemoryReactorClock()
    parser = ProxyEndpointParser()
    ep = parser.parseStreamServer(memory, "tcp", "25")
    assert [str(n) for n in ep.trusted] == ["127.0.0.1/32", "::1/128"] and ep.timeout == 10.0
    ep = serverFromString(memory, "smtpproxy:untrusted=pass:maxHeaderSize=512:timeout=0:tcp6:25:interface=\\:\\:1")
    assert ep.allow_untrusted and ep.max_header_size == 512 and ep.timeout is None
    ep.listen(GreeterFactory())
    assert memory.tcpServers[0][3] == "::1"
    for bad in ("smtpproxy:trusted=127.0.0.1", "smtpproxy:timeout=x:tcp:25", "smtpproxy:timeout=nan:tcp:25", "smtpproxy:untrusted=maybe:tcp:25",
                "smtpproxy:trusted=banana:tcp:25", "smtpproxy:trusted=127.0.0.1/8:tcp:25",
                "smtpproxy:maxHeaderSize=big:tcp:25"):
        with pytest.raises(ValueError):
            serverFromString(memory, bad)


def test_endpoint_string_quotes_inner_arguments():
    """Inner arguments containing colons or equals signs survive re-quoting."""
    memory = MemoryReactorClock()
    ep = serverFromString(memory, r"smtpproxy:unix:/tmp/a\:b\=c.sock:mode=600")
    ep.listen(GreeterFactory())
    ((path, _factory, _backlog, mode, _lockfile),) = memory.unixServers
    assert path == "/tmp/a:b=c.sock" and mode == 0o600


# ---------------------------------------------------------------------------
# loopback through real sockets


class Client(Protocol):
    """Collects what the server sends; lets tests wait for a piece of it."""

    def __init__(self, on_connect: bytes = b"", tls: Any = None) -> None:
        self.on_connect = on_connect
        self.tls = tls
        self.received = b""
        self.waiting: list[tuple[bytes, Deferred[bytes]]] = []
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.on_connect:
            self.transport.write(self.on_connect)
        if self.tls is not None:
            self.transport.startTLS(self.tls)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self.waiting):
            needle, d = item
            if needle in self.received:
                self.waiting.remove(item)
                d.callback(self.received)

    def wait_for(self, needle: bytes, timeout: float = 10) -> Deferred[bytes]:
        if needle in self.received:
            d: Deferred[bytes] = Deferred()
            d.callback(self.received)
            return d
        d = Deferred()
        self.waiting.append((needle, d))
        d.addTimeout(timeout, reactor)
        return d

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class LoopbackTests(unittest.TestCase):
    """The wrapper on real TCP sockets on 127.0.0.1."""

    timeout = 30

    async def listen(self, endpoint_wrapper: Any = None, **kw: Any) -> tuple[GreeterFactory, int]:
        inner = GreeterFactory()
        ep: Any = proxyEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), **kw)
        if endpoint_wrapper is not None:
            ep = endpoint_wrapper(ep)
        port = await ep.listen(inner)
        self.addCleanup(port.stopListening)
        return inner, port.getHost().port

    async def connect(self, port: int, client: Client) -> Client:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), client)
        return client

    async def close(self, inner: GreeterFactory, client: Client) -> None:
        server_gone: Deferred[None] = Deferred()
        inner.lost_waiters.append(server_gone)
        if not inner.connected or inner.connected[-1].lost is not None:
            server_gone.callback(None)
        client.transport.loseConnection()
        await client.lost
        await server_gone.addTimeout(10, reactor)

    async def test_greets_with_proxied_address(self) -> None:
        """Over TCP, the greeting comes after the header and names the proxied client."""
        inner, port = await self.listen()
        header = v2(block=inet("198.51.100.20", "192.0.2.25", 61000, 25), tlvs=tlv(PP2_TYPE_UNIQUE_ID, b"x"))
        client = await self.connect(port, Client(header + b"HELLO\r\n"))
        data = await client.wait_for(b"250 HELLO\r\n")
        self.assertEqual(data, b"220 198.51.100.20 61000 192.0.2.25 25\r\n250 HELLO\r\n")
        (proto,) = inner.connected
        self.assertEqual(proto.info.proxy_address, "127.0.0.1")
        self.assertEqual(proto.info.unique_id, b"x")
        await self.close(inner, client)

    async def test_untrusted_peer_is_dropped(self) -> None:
        """A real connection from outside the trusted networks is closed unanswered."""
        inner, port = await self.listen(trusted=["10.0.0.0/8"])
        client = await self.connect(port, Client(v1("UNKNOWN")))
        await client.lost.addTimeout(10, reactor)
        self.assertEqual(client.received, b"")
        self.assertEqual(inner.built, [])

    async def test_starttls_through_wrapper(self) -> None:
        """STARTTLS works through the wrapper; the protocol sees ISSLTransport and a handshake."""
        leaf = self_signed("proxy.test")
        inner, port = await self.listen()
        inner.tls = ssl.CertificateOptions(privateKey=leaf.key, certificate=leaf.cert)
        client = await self.connect(port, Client(v1("TCP4", "203.0.113.5", "192.0.2.25", 4242, 25)))
        await client.wait_for(b"220 203.0.113.5 4242")
        client.transport.write(b"STARTTLS\r\n")
        await client.wait_for(b"220 go\r\n")
        trust = ssl.Certificate.loadPEM(leaf.cert_pem)
        client.transport.startTLS(ssl.optionsForClientTLS("proxy.test", trustRoot=trust))
        client.transport.write(b"INFO\r\n")
        data = await client.wait_for(b"hs=")
        self.assertIn(b"250 secure=True peer=203.0.113.5:4242 hs=1\r\n", data)
        await self.close(inner, client)

    async def test_implicit_tls_inside_proxy(self) -> None:
        """wrapServerTLS(proxyEndpoint(...)): header in clear, then TLS; the greeting names the client."""
        leaf = self_signed("proxy.test")
        opts = ssl.CertificateOptions(privateKey=leaf.key, certificate=leaf.cert)
        inner, port = await self.listen(endpoint_wrapper=lambda ep: wrapServerTLS(opts, ep))
        client_tls = ssl.optionsForClientTLS("proxy.test", trustRoot=ssl.Certificate.loadPEM(leaf.cert_pem))
        client = await self.connect(port, Client(v1("TCP6", "2001:db8::9", "2001:db8::1", 5555, 465), tls=client_tls))
        data = await client.wait_for(b"\r\n")
        self.assertEqual(data, b"220 2001:db8::9 5555 2001:db8::1 465\r\n")
        (proto,) = inner.connected
        self.assertEqual(proto.info.source_address, "2001:db8::9")  # proxy_info reachable through the TLS layer
        client.transport.write(b"INFO\r\n")
        data = await client.wait_for(b"hs=")
        self.assertIn(b"secure=True peer=2001:db8::9:5555 hs=1", data)
        await self.close(inner, client)
