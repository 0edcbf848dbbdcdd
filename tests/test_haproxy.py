# -*- test-case-name: tests.test_haproxy -*-
"""
End-to-end: a real HAProxy (Debian's /usr/sbin/haproxy) sends PROXY v1/v2 to our wrapper.

Each test writes a config into a temp dir and hands HAProxy an already
listening socket (C{bind fd@N}), so no fixed or guessed ports are used and
there is no start-up race: the kernel queues the client until HAProxy
accepts.  The client connects from 127.0.0.2 (or ::1) so the address the
server reports is visibly the client's, not HAProxy's.  Missing HAProxy
skips these tests locally but fails them when C{CI} is set.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests._certs import self_signed, write_pem
from tests._support import HAProxyTestCase
from txsmtpsrv._proxy import ProxyInfo, proxyEndpoint


class Greeter(Protocol):
    """Server-speaks-first protocol that greets with the peer it sees."""

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.info: ProxyInfo | None = getattr(self.transport, "proxy_info", None)
        self.factory.seen.append(self)
        self.factory.changed()
        self.transport.write(f"220 {self.peer.host} {self.peer.port}\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class GreeterFactory(Factory):
    """Keeps every connected Greeter; lets a test wait for a condition on them."""

    protocol = Greeter

    def __init__(self) -> None:
        self.seen: list[Greeter] = []
        self.waiters: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def changed(self) -> None:
        for item in list(self.waiters):
            check, d = item
            value = check()
            if value:
                self.waiters.remove(item)
                d.callback(value)

    def wait_for(self, check: Callable[[], Any], timeout: float = 10) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiters.append((check, d))
        self.changed()
        return d.addTimeout(timeout, reactor)


class Client(Protocol):
    """Reads the greeting line; optionally starts TLS first."""

    def __init__(self, tls: Any = None) -> None:
        self.tls = tls
        self.received = b""
        self.greeting: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.tls is not None:
            self.transport.startTLS(self.tls)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n" in self.received and not self.greeting.called:
            self.greeting.callback(self.received)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.greeting.called:
            self.greeting.errback(reason)
        self.lost.callback(None)


class HAProxyTests(HAProxyTestCase):
    """Real HAProxy in front of proxyEndpoint on loopback."""

    async def start(
        self, server_options: str, bind_options: str = "", family: int = socket.AF_INET
    ) -> tuple[GreeterFactory, int]:
        """Listen with proxyEndpoint, start HAProxy in front; return (factory, frontend port)."""
        inner = GreeterFactory()
        port = await proxyEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")).listen(inner)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.drain, port.factory)
        proxy = self.start_haproxy(port.getHost().port, server_options, bind_options=bind_options, family=family)
        return inner, proxy.port

    async def connect(self, endpoint: Any, client: Client) -> bytes:
        """Connect, return the greeting; include HAProxy's log in any failure."""
        try:
            await connectProtocol(endpoint, client).addTimeout(10, reactor)
            greeting = await client.greeting.addTimeout(10, reactor)
        except Exception as e:
            self.fail(f"no greeting through haproxy ({e!r}); haproxy log:\n{self.haproxy_log()}")
        self.addCleanup(lambda: client.lost)
        self.addCleanup(client.transport.loseConnection)
        return greeting

    async def connect_from_127_0_0_2(self, fport: int, tls: Any = None) -> tuple[Client, bytes]:
        """Connect to HAProxy's frontend from 127.0.0.2 (optionally with TLS); return the client and greeting."""
        client = Client(tls=tls)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", fport, timeout=5, bindAddress=("127.0.0.2", 0))
        return client, await self.connect(endpoint, client)

    async def test_send_proxy_v1(self) -> None:
        """send-proxy: the server sees the client's real IPv4 address and port."""
        inner, fport = await self.start("send-proxy")
        client, greeting = await self.connect_from_127_0_0_2(fport)
        me = client.transport.getHost()
        self.assertEqual(greeting, f"220 127.0.0.2 {me.port}\r\n".encode())
        (proto,) = inner.seen
        info = proto.info
        assert info is not None
        self.assertEqual((info.version, info.command, info.family), (1, "PROXY", "INET"))
        self.assertEqual((info.source_address, info.source_port), ("127.0.0.2", me.port))
        self.assertEqual((info.dest_address, info.dest_port), ("127.0.0.1", fport))
        self.assertEqual(info.proxy_address, "127.0.0.1")
        self.assertNotEqual(info.proxy_port, me.port)

    async def test_send_proxy_v2_with_tlvs(self) -> None:
        """send-proxy-v2 with unique-id and crc32c TLVs: real address, id and checksum come through."""
        inner, fport = await self.start("send-proxy-v2 proxy-v2-options unique-id,crc32c")
        client, greeting = await self.connect_from_127_0_0_2(fport)
        me = client.transport.getHost()
        self.assertEqual(greeting, f"220 127.0.0.2 {me.port}\r\n".encode())
        (proto,) = inner.seen
        info = proto.info
        assert info is not None
        self.assertEqual((info.version, info.command, info.family), (2, "PROXY", "INET"))
        self.assertEqual((info.source_address, info.source_port), ("127.0.0.2", me.port))
        self.assertEqual(info.dest_port, fport)
        self.assertIsNotNone(info.tlv(0x03))  # CRC32C present (and verified by the parser)
        self.assertTrue((info.unique_id or b"").startswith(f"7F000002:{me.port:04X}_".encode()), info.unique_id)

    async def test_send_proxy_v2_ipv6_client(self) -> None:
        """An IPv6 client behind HAProxy shows up as an IPv6Address with a compressed host."""
        try:
            socket.socket(socket.AF_INET6).close()
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback")
        inner, fport = await self.start("send-proxy-v2", family=socket.AF_INET6)
        client = Client()
        greeting = await self.connect(TCP6ClientEndpoint(reactor, "::1", fport, timeout=5), client)
        me = client.transport.getHost()
        self.assertEqual(greeting, f"220 ::1 {me.port}\r\n".encode())
        (proto,) = inner.seen
        self.assertEqual(proto.info.family, "INET6")
        self.assertEqual(type(proto.peer).__name__, "IPv6Address")

    async def test_tls_terminated_by_haproxy(self) -> None:
        """HAProxy terminating TLS passes SSL, authority (SNI) and ALPN TLVs."""
        leaf = self_signed("proxy.test")
        pem_path = write_pem(self.tmp, "proxy.pem", leaf.cert_pem, leaf.key_pem)
        inner, fport = await self.start(
            "send-proxy-v2 proxy-v2-options ssl,ssl-cipher,authority,crc32c",
            bind_options=f" ssl crt {pem_path} alpn smtp",
        )
        tls = ssl.optionsForClientTLS(
            "proxy.test", trustRoot=ssl.Certificate.loadPEM(leaf.cert_pem), acceptableProtocols=[b"smtp"]
        )
        client, greeting = await self.connect_from_127_0_0_2(fport, tls)
        me = client.transport.getHost()
        self.assertEqual(greeting, f"220 127.0.0.2 {me.port}\r\n".encode())
        (proto,) = inner.seen
        info = proto.info
        assert info is not None and info.ssl is not None
        self.assertTrue(info.ssl.ssl)
        self.assertFalse(info.ssl.cert_in_connection)
        self.assertTrue((info.ssl.version or "").startswith("TLSv1."))
        self.assertTrue(info.ssl.cipher)
        self.assertEqual(info.authority, "proxy.test")
        self.assertEqual(info.alpn, b"smtp")

    async def test_health_check_sends_local(self) -> None:
        """HAProxy's health checks with send-proxy-v2 use the LOCAL command; the real peer is kept."""
        inner, _ = await self.start("send-proxy-v2 check inter 200ms")
        proto = await inner.wait_for(lambda: next((p for p in inner.seen if p.info and p.info.command == "LOCAL"), None))
        self.assertEqual(proto.peer.host, "127.0.0.1")
        self.assertFalse(proto.info.proxied)
