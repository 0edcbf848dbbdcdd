# -*- test-case-name: tests.test_proxy -*-
"""
Tests for L{txsmtpsrv._proxy}: PROXY v1/v2 parsing, the wrapper, the endpoint.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, ssl
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import directlyProvides, implementer

from tests._certs import self_signed
from txsmtpsrv._proxy import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    ProxyEndpointParser,
    ProxyHeaderError,
    ProxyHeaderParser,
    ProxyInfo,
    ProxyServerEndpoint,
    ProxyWrappingFactory,
    crc32c,
    parse_proxy_header,
    proxyEndpoint,
)
from txsmtpsrv._rdns import canonical_ip

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


def feed_chunks(data: bytes, cuts: list[int], max_size: int = 4096) -> tuple[ProxyInfo, bytes]:
    """Feed C{data} cut at C{cuts}; return the header and everything after it."""
    parser = ProxyHeaderParser(max_size)
    points = [0, *sorted(set(cuts)), len(data)]
    chunks = [data[a:b] for a, b in zip(points, points[1:])]
    for i, chunk in enumerate(chunks):
        result = parser.feed(chunk)
        if result is not None:
            info, rest = result
            return info, rest + b"".join(chunks[i + 1 :])
    raise AssertionError("header never completed")


# ---------------------------------------------------------------------------
# parser: valid headers


def test_v1_tcp4():
    """A v1 TCP4 line yields addresses, ports and the rest of the data."""
    info, rest = parse_proxy_header(v1("TCP4", "192.0.2.1", "198.51.100.2", 56324, 25) + b"EHLO x\r\n")
    assert (info.version, info.command, info.family) == (1, "PROXY", "INET")
    assert (info.source_address, info.source_port) == ("192.0.2.1", 56324)
    assert (info.dest_address, info.dest_port) == ("198.51.100.2", 25)
    assert info.proxied and info.tlvs == ()
    assert rest == b"EHLO x\r\n"


def test_v1_tcp6_compressed():
    """v1 IPv6 text is normalised to the compressed form."""
    info, _ = parse_proxy_header(v1("TCP6", "2001:DB8:0:0:0:0:0:7", "::ffff:192.0.2.1", 1, 2))
    assert info.family == "INET6"
    assert info.source_address == "2001:db8::7"
    assert info.dest_address == "::ffff:192.0.2.1"  # mixed notation on every Python version


def test_v1_unknown():
    """PROXY UNKNOWN (with or without the ignored rest) means: use the real addresses."""
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        info, rest = parse_proxy_header(line + b"x")
        assert (info.version, info.family, info.source_address) == (1, "UNSPEC", None)
        assert not info.proxied
        assert rest == b"x"


def test_v1_longest_line():
    """A v1 line of exactly 107 bytes is accepted."""
    line = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(line) == 107
    info, _ = parse_proxy_header(line)
    assert info.family == "UNSPEC"


def test_v2_inet_and_tlvs():
    """A v2 IPv4 header with TLVs exposes the TLVs raw and decoded."""
    tlvs = (
        tlv(PP2_TYPE_ALPN, b"smtp")
        + tlv(PP2_TYPE_AUTHORITY, "mx.exämple.test".encode())
        + tlv(PP2_TYPE_UNIQUE_ID, b"id-42")
        + tlv(PP2_TYPE_NETNS, b"blue")
        + tlv(PP2_TYPE_NOOP, b"\0\0")
        + tlv(0xEA, b"vpce-1")
        + ssl_tlv(
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
            0,
            tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3")
            + tlv(PP2_SUBTYPE_SSL_CN, b"client.test")
            + tlv(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_128_GCM_SHA256"),
        )
    )
    info, rest = parse_proxy_header(v2(block=inet("203.0.113.9", "192.0.2.25", 40000, 587), tlvs=tlvs) + b"!")
    assert (info.version, info.command, info.family) == (2, "PROXY", "INET")
    assert (info.source_address, info.source_port, info.dest_address, info.dest_port) == (
        "203.0.113.9", 40000, "192.0.2.25", 587,
    )
    assert rest == b"!"
    assert info.alpn == b"smtp"
    assert info.authority == "mx.exämple.test"
    assert info.unique_id == b"id-42"
    assert info.netns == "blue"
    assert info.tlv(0xEA) == b"vpce-1"
    assert info.tlv(0x99) is None
    assert [t for t, _ in info.tlvs] == [0x01, 0x02, 0x05, 0x30, 0x04, 0xEA, 0x20]
    assert info.ssl is not None
    assert info.ssl.ssl and info.ssl.cert_in_connection and not info.ssl.cert_in_session
    assert info.ssl.verified
    assert (info.ssl.version, info.ssl.cn, info.ssl.cipher) == ("TLSv1.3", "client.test", "TLS_AES_128_GCM_SHA256")
    assert info.ssl.sig_alg is None and info.ssl.key_alg is None


def test_v2_inet6_compressed():
    """v2 IPv6 addresses come out compressed (Twisted's wrapper leaves them exploded)."""
    info, _ = parse_proxy_header(v2(family=2, block=inet("2001:db8::7", "2001:db8::1", 1, 25)))
    assert (info.family, info.source_address, info.dest_address) == ("INET6", "2001:db8::7", "2001:db8::1")


def test_v2_unix():
    """v2 AF_UNIX carries NUL-padded paths and no ports."""
    block = b"/run/client".ljust(108, b"\0") + b"/run/smtp.sock".ljust(108, b"\0")
    info, _ = parse_proxy_header(v2(family=3, block=block))
    assert (info.family, info.source_address, info.dest_address) == ("UNIX", "/run/client", "/run/smtp.sock")
    assert info.source_port is None and info.dest_port is None


def test_v2_local_and_unspec():
    """LOCAL (health checks) and PROXY over UNSPEC carry no client address."""
    local, _ = parse_proxy_header(v2(command=0, family=1, block=inet("1.2.3.4", "5.6.7.8", 1, 2)))
    assert (local.command, local.family, local.source_address) == ("LOCAL", "INET", None)
    local_unspec, _ = parse_proxy_header(v2(command=0, family=0, transport=0))
    assert (local_unspec.command, local_unspec.family) == ("LOCAL", "UNSPEC")
    # LOCAL with an unknown family and junk is still accepted (spec: ignore the block)
    odd, _ = parse_proxy_header(v2(command=0, family=9, transport=7, block=b"\xff" * 5))
    assert (odd.command, odd.family, odd.tlvs) == ("LOCAL", "UNSPEC", ())
    # ... and so is LOCAL with a TLV that does not decode (its TLVs are dropped).
    short_ssl, _ = parse_proxy_header(v2(command=0, family=1, block=inet("1.2.3.4", "5.6.7.8", 1, 2),
                                         tlvs=tlv(0x20, b"\x01")))
    assert (short_ssl.command, short_ssl.tlvs) == ("LOCAL", ())
    unspec, _ = parse_proxy_header(v2(family=0, transport=0, tlvs=tlv(PP2_TYPE_UNIQUE_ID, b"u")))
    assert (unspec.command, unspec.family, unspec.proxied, unspec.unique_id) == ("PROXY", "UNSPEC", False, b"u")


def test_v2_crc32c_verified():
    """A correct CRC32C TLV is accepted, a wrong one rejected."""
    good = v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(PP2_TYPE_UNIQUE_ID, b"abc"), crc=True)
    info, _ = parse_proxy_header(good)
    assert info.unique_id == b"abc"
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ProxyHeaderError, match="checksum"):
        parse_proxy_header(bad)
    tampered = good[:17] + bytes([good[17] ^ 1]) + good[18:]
    with pytest.raises(ProxyHeaderError, match="checksum"):
        parse_proxy_header(tampered)


def test_crc32c_check_value():
    """crc32c matches the standard check value."""
    assert crc32c(b"123456789") == 0xE3069283


def test_every_split_point():
    """Splitting headers at every byte, or byte by byte, gives the same result."""
    headers = [
        v1("TCP4", "192.0.2.1", "192.0.2.2", 1, 2),
        v1("TCP6", "::1", "::2", 65535, 0),
        v1("UNKNOWN"),
        v2(block=inet("1.2.3.4", "5.6.7.8", 9, 10), tlvs=tlv(2, b"a.test"), crc=True),
        v2(command=0, family=0, transport=0),
    ]
    for header in headers:
        data = header + b"EHLO a\r\n"
        expected = parse_proxy_header(data)
        for cut in range(len(data) + 1):
            assert feed_chunks(data, [cut]) == expected
        assert feed_chunks(data, list(range(len(data)))) == expected


def test_parser_is_single_use():
    """After a complete header the parser refuses more input."""
    parser = ProxyHeaderParser()
    assert parser.feed(v1("UNKNOWN")) is not None
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"x")


def test_incomplete_is_error_for_one_shot():
    """parse_proxy_header wants the whole header."""
    with pytest.raises(ProxyHeaderError, match="incomplete"):
        parse_proxy_header(b"PROXY TCP4 1.2.3.4")
    with pytest.raises(ProxyHeaderError, match="incomplete"):
        parse_proxy_header(b"")


# ---------------------------------------------------------------------------
# parser: hypothesis


ports = st.integers(0, 65535)


@st.composite
def v1_headers(draw: Any) -> tuple[bytes, dict[str, Any]]:
    """Valid v1 lines and what they should parse to."""
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        junk = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
        line = b"PROXY UNKNOWN" + (b" " + junk.encode() if junk else b"") + b"\r\n"
        return line, {"family": "UNSPEC", "source_address": None}
    version = 4 if kind == "TCP4" else 6
    src, dst = draw(st.ip_addresses(v=version)), draw(st.ip_addresses(v=version))
    exploded = draw(st.booleans())
    text = (lambda a: a.exploded) if exploded else str
    sport, dport = draw(ports), draw(ports)
    line = v1(kind, text(src), text(dst), sport, dport)
    return line, {
        "family": "INET" if version == 4 else "INET6",
        "source_address": canonical_ip(src),
        "source_port": sport,
        "dest_address": canonical_ip(dst),
        "dest_port": dport,
    }


tlv_lists = st.lists(
    st.tuples(
        st.integers(0, 255).filter(lambda t: t not in (0x03, 0x20)),
        st.binary(max_size=40),
    ),
    max_size=5,
)


@st.composite
def v2_headers(draw: Any) -> tuple[bytes, dict[str, Any]]:
    """Valid v2 headers and what they should parse to."""
    command = draw(st.sampled_from([0, 1]))
    family = draw(st.sampled_from([0, 1, 2, 3]))
    transport = 0 if family == 0 else draw(st.sampled_from([0, 1]))
    expected: dict[str, Any] = {"command": "LOCAL" if command == 0 else "PROXY"}
    if family in (1, 2):
        version = 4 if family == 1 else 6
        src, dst = draw(st.ip_addresses(v=version)), draw(st.ip_addresses(v=version))
        sport, dport = draw(ports), draw(ports)
        block = inet(str(src), str(dst), sport, dport)
        if command == 1:
            expected.update(source_address=canonical_ip(src), source_port=sport, dest_address=canonical_ip(dst))
    elif family == 3:
        # Paths without NUL or control bytes (those are refused since issue 10).
        path = draw(st.binary(min_size=1, max_size=107).filter(
            lambda p: not re.search(r"[\x00-\x1f\x7f-\x9f]", p.decode("utf-8", "surrogateescape"))))
        block = path.ljust(108, b"\0") + b"/srv".ljust(108, b"\0")
        if command == 1:
            expected.update(source_address=path.decode("utf-8", "surrogateescape"), source_port=None)
    else:
        block = b""
    pairs = draw(tlv_lists)
    crc = draw(st.booleans())
    header = v2(command, family, transport, block, b"".join(tlv(t, v) for t, v in pairs), crc=crc)
    if command == 0:
        expected["source_address"] = None
    expected["tlv_types"] = [t for t, _ in pairs] + ([0x03] if crc else [])
    return header, expected


def check_expected(info: ProxyInfo, expected: dict[str, Any]) -> None:
    """Compare selected fields of C{info} with C{expected}."""
    for key, value in expected.items():
        if key == "tlv_types":
            assert [t for t, _ in info.tlvs] == value
        else:
            assert getattr(info, key) == value, key


@settings(max_examples=300)
@given(v1_headers(), st.binary(max_size=30), st.lists(st.integers(0, 200), max_size=8))
def test_v1_any_split_same_result(case, tail, cuts):
    """Property: a valid v1 header split anywhere parses to the same ProxyInfo and remainder."""
    header, expected = case
    data = header + tail
    info, rest = parse_proxy_header(data)
    check_expected(info, expected)
    assert rest == tail
    assert feed_chunks(data, [c for c in cuts if c <= len(data)]) == (info, rest)


@settings(max_examples=300)
@given(v2_headers(), st.binary(max_size=30), st.lists(st.integers(0, 600), max_size=8))
def test_v2_any_split_same_result(case, tail, cuts):
    """Property: a valid v2 header split anywhere parses to the same ProxyInfo and remainder."""
    header, expected = case
    data = header + tail
    info, rest = parse_proxy_header(data)
    check_expected(info, expected)
    assert rest == tail
    assert feed_chunks(data, [c for c in cuts if c <= len(data)]) == (info, rest)


@settings(max_examples=300)
@given(
    st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: V2_SIGNATURE + b)),
    st.lists(st.integers(0, 300), max_size=6),
)
def test_garbage_only_raises_proxy_header_error(data, cuts):
    """Property: arbitrary input never raises anything but ProxyHeaderError."""
    parser = ProxyHeaderParser(256)
    points = [0, *sorted(c for c in set(cuts) if c <= len(data)), len(data)]
    try:
        for a, b in zip(points, points[1:]):
            if parser.feed(data[a:b]) is not None:
                break
    except ProxyHeaderError:
        pass


# ---------------------------------------------------------------------------
# parser: malformed input

MALFORMED = {
    "http": b"GET / HTTP/1.0\r\n",
    "smtp": b"EHLO client\r\n",
    "lowercase": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "bare LF": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "CR alone": b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
    "too long": b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",
    "no CRLF in 107": b"PROXY UNKNOWN " + b"x" * 200,
    "bad proto": b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    "v6 in TCP4": b"PROXY TCP4 ::1 ::2 1 2\r\n",
    "v4 in TCP6": b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "leading zero octet": b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    "scoped v6": b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n",
    "port too big": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "negative port": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "port with sign": b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    "empty port": b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n",
    "missing field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "extra field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "double space": b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "tab": b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
    "no proto": b"PROXY \r\n",
    "8bit": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xb2\r\n",
    "v2 bad signature": b"\r\n\r\n\x00\r\nQUIX\n!\x11\x00\x00",
    "v2 version 1": v2(version=1, block=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 version 3": v2(version=3, block=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 command 2": v2(command=2, block=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 family 4": v2(family=4, block=b"x" * 12),
    "v2 dgram": v2(transport=2, block=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 transport 3": v2(transport=3, block=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 short inet": v2(block=b"\x01" * 11),
    "v2 short inet6": v2(family=2, block=b"\x01" * 35),
    "v2 short unix": v2(family=3, block=b"/x" * 100),
    "v2 truncated tlv header": v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x05\x00"),
    "v2 tlv overruns": v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x05\x00\x09abc"),
    "v2 short ssl tlv": v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x20, b"\x01\0\0")),
    "v2 bad ssl sub-tlv": v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=ssl_tlv(1, 0, b"\x21\x00\x05ab")),
    "v2 crc wrong size": v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x03, b"\0\0\0")),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed(data):
    """Malformed headers raise ProxyHeaderError however they are split."""
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)
    with pytest.raises(ProxyHeaderError):
        parser = ProxyHeaderParser()
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
        raise AssertionError("no error at the end")  # pragma: no cover


def test_rejects_early():
    """Garbage is rejected on its first byte, a wrong v2 version on its 13th."""
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"E")
    parser = ProxyHeaderParser()
    assert parser.feed(V2_SIGNATURE) is None
    with pytest.raises(ProxyHeaderError, match="version"):
        parser.feed(b"\x11")
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"PROXX")


def test_v2_size_cap():
    """A v2 header longer than the cap fails as soon as its length is known."""
    parser = ProxyHeaderParser(max_size=100)
    with pytest.raises(ProxyHeaderError, match="exceeds"):
        parser.feed(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 85))
    ok = v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(5, b"x" * 69))
    assert len(ok) == 100
    assert ProxyHeaderParser(max_size=100).feed(ok) is not None
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_size=15)


# ---------------------------------------------------------------------------
# wrapper, in memory

PROXY_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
OUR_HOST = IPv4Address("TCP", "127.0.0.1", 2525)


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


def test_local_header_log_names_no_client():
    """A v2 LOCAL header (health check) is logged without a 'client None:None'."""
    from twisted.logger import formatEvent

    with capturedLogs() as events:
        inner, _, wrapper, transport, _ = connect()
        wrapper.dataReceived(v2(command=0, family=0, transport=0))
    texts = [formatEvent(e) for e in events if "PROXY v" in e.get("log_format", "")]
    assert texts == ["PROXY v2 LOCAL from 127.0.0.1"]
