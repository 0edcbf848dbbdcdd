# -*- test-case-name: tests.test_proxy_wrapper -*-
"""
Tests for L{txsmtpsrv._proxy}: L{ProxyWrappingFactory} in memory, on a
C{StringTransport}: the wrapped protocol built and greeting only after the
header, the addresses it then sees, trusted networks, the header timeout,
malformed and oversized headers, STARTTLS through the wrapper, the logs.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

from tests._proxy import Greeter, GreeterFactory, inet, tlv, v1, v2
from txsmtpsrv._proxy import PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID, ProxyWrappingFactory, proxyEndpoint


# ---------------------------------------------------------------------------
# wrapper, in memory

PROXY_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
OUR_HOST = IPv4Address("TCP", "127.0.0.1", 2525)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """StringTransport with a recording startTLS."""

    tls_context: Any = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_context = contextFactory
        directlyProvides(self, ITLSTransport, ISSLTransport)


def connect(
    peer: Any = PROXY_PEER, host: Any = OUR_HOST, transport_class: type = TLSStringTransport, **kw: Any
) -> tuple[GreeterFactory, ProxyWrappingFactory, Any, StringTransport, Clock]:
    """Wire a wrapper to a StringTransport and return all the pieces."""
    clock = Clock()
    inner = kw.pop("inner", None) or GreeterFactory()
    factory = ProxyWrappingFactory(inner, reactor=clock, **kw)
    wrapper = factory.buildProtocol(peer)
    transport = transport_class(hostAddress=host, peerAddress=peer)
    wrapper.makeConnection(transport)
    return inner, factory, wrapper, transport, clock


def test_greeting_only_after_header():
    """The wrapped protocol is built and greets only once the whole header is in."""
    inner, factory, wrapper, transport, clock = connect()
    header = v1("TCP4", "203.0.113.7", "192.0.2.25", 51000, 25)
    assert inner.built == [] and transport.value() == b""
    wrapper.dataReceived(header[:10])
    wrapper.dataReceived(header[10:-1])
    assert inner.built == [] and transport.value() == b""
    wrapper.dataReceived(header[-1:] + b"EHLO a\r\nNO")
    assert transport.value() == b"220 203.0.113.7 51000 192.0.2.25 25\r\n250 EHLO a\r\n"
    (proto,) = inner.built
    assert proto.addr == IPv4Address("TCP", "203.0.113.7", 51000)  # buildProtocol saw the client
    assert proto.peer == IPv4Address("TCP", "203.0.113.7", 51000)
    assert proto.host == IPv4Address("TCP", "192.0.2.25", 25)
    assert proto.info is wrapper.proxy_info
    assert proto.info.proxy_address == "127.0.0.1" and proto.info.proxy_port == 40000
    wrapper.dataReceived(b"OP\r\n")
    assert proto.lines == [b"EHLO a", b"NOOP"]
    assert clock.getDelayedCalls() == []  # header timer cancelled
    assert factory.protocols == {wrapper: 1}
    wrapper.connectionLost(Failure(Exception("bye")))
    assert proto.lost is not None
    assert factory.protocols == {}


def test_ipv6_and_tlvs_visible():
    """getPeer/getHost become IPv6Address and TLVs reach the wrapped protocol."""
    header = v2(
        family=2,
        block=inet("2001:db8::7", "2001:db8::25", 1234, 25),
        tlvs=tlv(PP2_TYPE_AUTHORITY, b"mx.test") + tlv(PP2_TYPE_UNIQUE_ID, b"u1"),
    )
    inner, _, wrapper, transport, _ = connect()
    wrapper.dataReceived(header)
    (proto,) = inner.built
    assert proto.peer == IPv6Address("TCP", "2001:db8::7", 1234)
    assert proto.host == IPv6Address("TCP", "2001:db8::25", 25)
    assert proto.transport.proxy_info.authority == "mx.test"
    assert proto.transport.proxy_info.unique_id == b"u1"


def test_unknown_and_local_keep_real_addresses():
    """PROXY UNKNOWN and v2 LOCAL leave getPeer/getHost at the real socket addresses."""
    for header in (v1("UNKNOWN"), v2(command=0, family=0, transport=0)):
        inner, _, wrapper, transport, _ = connect()
        wrapper.dataReceived(header)
        (proto,) = inner.built
        assert proto.peer == PROXY_PEER and proto.host == OUR_HOST
        assert proto.info is not None and not proto.info.proxied
        assert transport.value().startswith(b"220 127.0.0.1 40000")


def test_unix_source_address():
    """A v2 AF_UNIX header makes getPeer a UNIXAddress."""
    block = b"/run/c".ljust(108, b"\0") + b"/run/s".ljust(108, b"\0")
    inner, _, wrapper, transport, _ = connect()
    wrapper.dataReceived(v2(family=3, block=block))
    assert transport.value() == b"220 /run/c /run/s\r\n"
    assert wrapper.getPeer() == UNIXAddress(b"/run/c")
    assert wrapper.getHost() == UNIXAddress(b"/run/s")


def test_untrusted_peer_closed():
    """A peer outside the trusted networks is disconnected and logged; nothing is built."""
    with capturedLogs() as events:
        inner, factory, wrapper, transport, clock = connect(peer=IPv4Address("TCP", "192.0.2.66", 3333))
    assert transport.disconnecting
    assert transport.value() == b"" and inner.built == []
    assert clock.getDelayedCalls() == []
    assert [e["proxy_error"] for e in events if "proxy_error" in e] == ["untrusted"]
    assert any(e.get("peer") == "192.0.2.66" for e in events)
    wrapper.dataReceived(v1("UNKNOWN"))  # late data is ignored
    assert inner.built == []
    wrapper.connectionLost(Failure(Exception("closed")))
    assert factory.protocols == {}


def test_untrusted_peer_allowed_through():
    """allow_untrusted lets other peers in without a header, greeted at once."""
    peer = IPv4Address("TCP", "192.0.2.66", 3333)
    inner, _, wrapper, transport, clock = connect(peer=peer, allow_untrusted=True)
    (proto,) = inner.built
    assert transport.value() == b"220 192.0.2.66 3333 127.0.0.1 2525\r\n"
    assert proto.info is None and wrapper.proxy_info is None
    assert clock.getDelayedCalls() == []
    wrapper.dataReceived(v1("TCP4", "1.2.3.4", "5.6.7.8", 1, 2))  # not special: reaches the protocol
    assert proto.lines == [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"]
    assert wrapper.getPeer() == peer


def test_trusted_networks():
    """CIDRs, IPv4-mapped peers and UNIX peers count as trusted."""
    factory = ProxyWrappingFactory(GreeterFactory(), trusted="10.0.0.0/8, 192.0.2.1", reactor=Clock())
    assert factory.is_trusted(IPv4Address("TCP", "10.1.2.3", 1))
    assert factory.is_trusted(IPv4Address("TCP", "192.0.2.1", 1))
    assert not factory.is_trusted(IPv4Address("TCP", "192.0.2.2", 1))
    assert factory.is_trusted(IPv6Address("TCP", "::ffff:10.0.0.1", 1))
    assert not factory.is_trusted(IPv6Address("TCP", "::1", 1))
    assert factory.is_trusted(UNIXAddress(b"/run/x"))
    assert not factory.is_trusted(object())  # type: ignore[arg-type]
    v6 = ProxyWrappingFactory(GreeterFactory(), trusted=["fd00::/8"], reactor=Clock())
    assert v6.is_trusted(IPv6Address("TCP", "fd12::5", 1))
    assert v6.is_trusted(IPv6Address("TCP", "fd12::5%eth0", 1))
    with pytest.raises(ValueError):
        ProxyWrappingFactory(GreeterFactory(), trusted=["nonsense"], reactor=Clock())


@pytest.mark.parametrize("trusted", ["10.0.0.1/8", ["10.0.0.1/8"], "127.0.0.0/8, 10.0.0.1/8", ["fd00::1/8"]])
def test_trusted_networks_with_host_bits_are_refused(trusted: Any) -> None:
    """
    As the server's network lists refuse them (one parser, _ipaddr.parse_networks):
    10.0.0.1/8 trusted all of 10.0.0.0/8 where one address may have been meant.
    """
    with pytest.raises(ValueError, match="has host bits set: write (10.0.0.0/8|fd00::/8) for the network"):
        ProxyWrappingFactory(GreeterFactory(), trusted=trusted, reactor=Clock())
    with pytest.raises(ValueError, match="has host bits set"):
        proxyEndpoint(TCP4ServerEndpoint(MemoryReactorClock(), 2525), trusted=trusted)


def test_trusted_networks_read_as_the_server_lists_read_them() -> None:
    """Spaces separate too, and an IPv4-mapped network is the IPv4 network it is."""
    factory = ProxyWrappingFactory(GreeterFactory(), trusted="192.0.2.1 ::ffff:10.0.0.0/104", reactor=Clock())
    assert [str(n) for n in factory.trusted] == ["192.0.2.1/32", "10.0.0.0/8"]
    assert factory.is_trusted(IPv4Address("TCP", "10.9.9.9", 1))
    assert factory.is_trusted(IPv6Address("TCP", "::ffff:10.9.9.9", 1))


def test_header_timeout():
    """Without a complete header within the timeout the connection is closed and logged."""
    with capturedLogs() as events:
        inner, _, wrapper, transport, clock = connect(timeout=5)
        wrapper.dataReceived(b"PROXY TCP4 ")
        clock.advance(4.9)
        assert not transport.disconnecting
        clock.advance(0.2)
    assert transport.disconnecting and inner.built == []
    assert [e["proxy_error"] for e in events if "proxy_error" in e] == ["timeout"]


def test_default_timeout_is_ten_seconds():
    """The default header timeout is 10 s; None disables it."""
    _, _, _, transport, clock = connect()
    clock.advance(9.99)
    assert not transport.disconnecting
    clock.advance(0.02)
    assert transport.disconnecting
    _, _, _, transport, clock = connect(timeout=None)
    assert clock.getDelayedCalls() == []


def test_malformed_header_closes():
    """A malformed header closes the connection without sending anything."""
    with capturedLogs() as events:
        inner, _, wrapper, transport, clock = connect()
        wrapper.dataReceived(b"EHLO me\r\n")
    assert transport.disconnecting and transport.value() == b""
    assert inner.built == [] and clock.getDelayedCalls() == []
    (event,) = [e for e in events if "proxy_error" in e]
    assert event["proxy_error"] == "malformed" and "PROXY header" in event["reason"]
    assert "EHLO" not in repr(event)  # client bytes are never logged


def test_oversized_header_closes():
    """The wrapper's size cap applies."""
    inner, _, wrapper, transport, _ = connect(max_header_size=64)
    wrapper.dataReceived(v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(5, b"x" * 100)))
    assert transport.disconnecting and inner.built == []


def test_refused_by_wrapped_factory():
    """If buildProtocol returns None for the client, the connection is closed."""
    inner, _, wrapper, transport, _ = connect(inner=GreeterFactory(refuse=True))
    wrapper.dataReceived(v1("TCP4", "1.2.3.4", "5.6.7.8", 1, 2))
    assert transport.disconnecting and transport.value() == b""


class Closer(Greeter):
    """Hangs up in connectionMade."""

    def connectionMade(self) -> None:
        Greeter.connectionMade(self)
        self.transport.loseConnection()


def test_no_data_after_wrapped_closes():
    """Bytes after the header are not delivered to a protocol that closed in connectionMade."""
    inner, _, wrapper, transport, _ = connect(inner=GreeterFactory(Closer))
    wrapper.dataReceived(v1("UNKNOWN") + b"EHLO x\r\n")
    (proto,) = inner.built
    assert proto.lines == [] and transport.disconnecting


def test_header_and_data_split_anywhere():
    """Header plus pipelined data split at every byte gives the same conversation."""
    data = v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), crc=True) + b"A\r\nB\r\n"
    outputs = set()
    for cut in range(len(data) + 1):
        inner, _, wrapper, transport, _ = connect()
        wrapper.dataReceived(data[:cut])
        wrapper.dataReceived(data[cut:])
        outputs.add(transport.value())
    assert outputs == {b"220 1.2.3.4 1 5.6.7.8 2\r\n250 A\r\n250 B\r\n"}


def test_starttls_and_handshake_through_wrapper():
    """startTLS reaches the real transport, ISSLTransport shows up, handshakeCompleted is forwarded."""
    inner, _, wrapper, transport, _ = connect()
    inner.tls = object()
    assert ITLSTransport.providedBy(wrapper) and IHandshakeListener.providedBy(wrapper)
    wrapper.dataReceived(v1("TCP4", "1.2.3.4", "5.6.7.8", 1, 2) + b"STARTTLS\r\n")
    assert transport.tls_context is inner.tls
    assert ISSLTransport.providedBy(wrapper)
    wrapper.handshakeCompleted()
    wrapper.dataReceived(b"INFO\r\n")
    assert transport.value().endswith(b"250 secure=True peer=1.2.3.4:1 hs=1\r\n")


def test_handshake_not_forwarded_to_non_listener():
    """handshakeCompleted is harmless before the header and for protocols that don't listen."""
    inner, _, wrapper, _, _ = connect(inner=GreeterFactory(Greeter))
    wrapper.handshakeCompleted()
    wrapper.dataReceived(v1("UNKNOWN"))
    wrapper.handshakeCompleted()
    assert inner.built[0].handshakes == 0


def test_log_prefix():
    """The log prefix names the PROXY layer before and after the header."""
    _, factory, wrapper, _, _ = connect()
    assert "(PROXY)" in factory.logPrefix() and "(PROXY)" in wrapper.logPrefix()
    wrapper.dataReceived(v1("UNKNOWN"))
    assert "HandshakeGreeter" in wrapper.logPrefix()


def test_local_header_log_names_no_client():
    """A v2 LOCAL header (health check) is logged without a 'client None:None'."""
    from twisted.logger import formatEvent

    with capturedLogs() as events:
        inner, _, wrapper, transport, _ = connect()
        wrapper.dataReceived(v2(command=0, family=0, transport=0))
    texts = [formatEvent(e) for e in events if "PROXY v" in e.get("log_format", "")]
    assert texts == ["PROXY v2 LOCAL from 127.0.0.1"]
