# -*- test-case-name: tests.test_proxy_parser,tests.test_proxy_wrapper,tests.test_proxy_endpoint,tests.test_real_client_proxy -*-
"""
What the PROXY protocol tests (C{tests/test_proxy_*.py}) share: builders of
v1 and v2 headers, and a server-speaks-first protocol (L{Greeter}) with its
factory to put behind the wrapper. C{tests/test_real_client_proxy.py} builds
its TLVs with L{tlv} too.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpsrv._proxy import V2_SIGNATURE, crc32c

# ---------------------------------------------------------------------------
# header builders


def v1(proto: str, src: str = "", dst: str = "", sport: int = 0, dport: int = 0) -> bytes:
    """Build a v1 line."""
    if proto == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    """Encode one TLV."""
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    block: bytes = b"",
    tlvs: bytes = b"",
    crc: bool = False,
    version: int = 2,
) -> bytes:
    """Build a v2 header; C{crc} appends a correct CRC32C TLV."""
    body = block + tlvs + (tlv(0x03, b"\0\0\0\0") if crc else b"")
    header = V2_SIGNATURE + bytes([(version << 4) | command, (family << 4) | transport])
    header += struct.pack("!H", len(body)) + body
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A v2 AF_INET or AF_INET6 address block."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return a.packed + b.packed + struct.pack("!HH", sport, dport)


def ssl_tlv(client: int, verify: int, subs: bytes) -> bytes:
    """A PP2_TYPE_SSL TLV."""
    return tlv(0x20, bytes([client]) + struct.pack("!I", verify) + subs)


# ---------------------------------------------------------------------------
# a protocol to wrap


class Greeter(LineReceiver):
    """Server-speaks-first test protocol: greets with what it sees, echoes lines."""

    delimiter = b"\n"

    def __init__(self, factory: GreeterFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.lines: list[bytes] = []
        self.lost: Failure | None = None
        self.handshakes = 0

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.info = getattr(self.transport, "proxy_info", None)
        self.factory.connected.append(self)
        peer, host = self.peer, self.host
        if isinstance(peer, UNIXAddress):
            self.transport.write(b"220 " + peer.name + b" " + host.name + b"\r\n")
        else:
            self.transport.write(f"220 {peer.host} {peer.port} {host.host} {host.port}\r\n".encode())

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        self.lines.append(line)
        if line == b"STARTTLS":
            self.transport.write(b"220 go\r\n")
            self.transport.startTLS(self.factory.tls)
        elif line == b"INFO":
            secure = ISSLTransport.providedBy(self.transport)
            peer = self.transport.getPeer()
            self.transport.write(f"250 secure={secure} peer={peer.host}:{peer.port} hs={self.handshakes}\r\n".encode())
        else:
            self.transport.write(b"250 " + line + b"\r\n")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason
        for d in self.factory.lost_waiters:
            if not d.called:
                d.callback(None)


@implementer(IHandshakeListener)
class HandshakeGreeter(Greeter):
    """Greeter that also counts TLS handshakes."""

    def handshakeCompleted(self) -> None:
        self.handshakes += 1


class GreeterFactory(Factory):
    """Records built protocols and the addresses they were built for."""

    def __init__(self, protocol: type = HandshakeGreeter, refuse: bool = False) -> None:
        self.protocol_class = protocol
        self.refuse = refuse
        self.built: list[Greeter] = []
        self.connected: list[Greeter] = []
        self.lost_waiters: list[Deferred[None]] = []
        self.tls: Any = None

    def buildProtocol(self, addr: Any) -> Greeter | None:
        if self.refuse:
            return None
        p = self.protocol_class(self, addr)
        self.built.append(p)
        return p
