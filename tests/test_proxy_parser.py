# -*- test-case-name: tests.test_proxy_parser -*-
"""
Tests for L{txsmtpsrv._proxyheader}: parsing PROXY v1/v2 headers, sans-IO:
valid headers (addresses, TLVs, CRC32C), any split point, properties over
generated headers and garbage, and malformed input refused early.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._proxy import inet, ssl_tlv, tlv, v1, v2
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
    ProxyHeaderError,
    ProxyHeaderParser,
    ProxyInfo,
    crc32c,
    parse_proxy_header,
)
from txsmtpsrv._rdns import canonical_ip


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


def assert_any_split_same_result(case, tail, cuts):
    """A header and what follows it, parsed whole and fed in pieces cut at C{cuts}: the same result."""
    header, expected = case
    data = header + tail
    info, rest = parse_proxy_header(data)
    check_expected(info, expected)
    assert rest == tail
    assert feed_chunks(data, [c for c in cuts if c <= len(data)]) == (info, rest)


@settings(max_examples=300)
@given(v1_headers(), st.binary(max_size=30), st.lists(st.integers(0, 200), max_size=8))
def test_v1_any_split_same_result(case, tail, cuts):
    """Property: a valid v1 header split anywhere parses to the same ProxyInfo and remainder."""
    assert_any_split_same_result(case, tail, cuts)


@settings(max_examples=300)
@given(v2_headers(), st.binary(max_size=30), st.lists(st.integers(0, 600), max_size=8))
def test_v2_any_split_same_result(case, tail, cuts):
    """Property: a valid v2 header split anywhere parses to the same ProxyInfo and remainder."""
    assert_any_split_same_result(case, tail, cuts)


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
