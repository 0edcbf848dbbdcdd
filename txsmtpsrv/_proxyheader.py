# -*- test-case-name: tests.test_proxy_parser -*-
"""
The PROXY protocol header (v1 and v2), sans-IO: L{ProxyHeaderParser} takes
bytes split at any point and returns the parsed L{ProxyInfo} and the bytes
after the header, or raises L{ProxyHeaderError}. The Twisted wrapper that
uses it (trusted peers, timeout, connecting the wrapped protocol) is
L{txsmtpsrv._proxy}.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from ._ipaddr import canonical_ip

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID",
    "PP2_TYPE_SSL",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_TYPE_NETNS",
    "PP2_CLIENT_SSL",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyInfo",
    "ProxySSLInfo",
    "crc32c",
    "parse_proxy_header",
]

#: Largest header we buffer.  v1 lines are capped at 107 bytes by the spec;
#: this limits v2 (16 bytes + payload).  HAProxy's headers, even with SSL and
#: unique-id TLVs, are a few hundred bytes.
DEFAULT_MAX_HEADER_SIZE = 4096

V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "

# v2 TLV types (section 2.2 of the PROXY protocol specification).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

# family nibble -> (name, size of the address block)
_V2_FAMILIES = {0x0: ("UNSPEC", 0), 0x1: ("INET", 12), 0x2: ("INET6", 36), 0x3: ("UNIX", 216)}
_V2_STREAM_OK = (0x0, 0x1)  # transport nibble: UNSPEC or STREAM (DGRAM makes no sense here)

TLV = tuple[int, bytes]


class ProxyHeaderError(ValueError):
    """
    The bytes received are not a valid PROXY protocol header.

    The message says what is wrong; the connection must then be closed
    without sending anything (the peer is a proxy, not the client).
    """


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), used by the optional v2 checksum TLV; the stdlib lacks it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class ProxySSLInfo:
    """
    The v2 C{PP2_TYPE_SSL} TLV: how the client talked to the proxy.

    C{client} is the bit field (C{PP2_CLIENT_*}), C{verify} is 0 when a
    presented client certificate was verified; C{tlvs} are the sub-TLVs.
    """

    client: int
    verify: int
    tlvs: tuple[TLV, ...] = ()

    def _text(self, kind: int) -> str | None:
        for t, v in self.tlvs:
            if t == kind:
                return v.decode("utf-8", "replace")
        return None

    @property
    def ssl(self) -> bool:
        """The client used TLS to reach the proxy."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def cert_in_connection(self) -> bool:
        """The client presented a certificate on this connection."""
        return bool(self.client & PP2_CLIENT_CERT_CONN)

    @property
    def cert_in_session(self) -> bool:
        """The client presented a certificate at least once in this TLS session."""
        return bool(self.client & PP2_CLIENT_CERT_SESS)

    @property
    def verified(self) -> bool:
        """A presented client certificate was verified by the proxy."""
        return self.verify == 0 and (self.cert_in_connection or self.cert_in_session)

    @property
    def version(self) -> str | None:
        """TLS version string, e.g. C{"TLSv1.3"}."""
        return self._text(PP2_SUBTYPE_SSL_VERSION)

    @property
    def cn(self) -> str | None:
        """Common name of the client certificate's subject."""
        return self._text(PP2_SUBTYPE_SSL_CN)

    @property
    def cipher(self) -> str | None:
        """Cipher name, e.g. C{"TLS_AES_256_GCM_SHA384"}."""
        return self._text(PP2_SUBTYPE_SSL_CIPHER)

    @property
    def sig_alg(self) -> str | None:
        """Signature algorithm of the client certificate."""
        return self._text(PP2_SUBTYPE_SSL_SIG_ALG)

    @property
    def key_alg(self) -> str | None:
        """Key algorithm of the client certificate."""
        return self._text(PP2_SUBTYPE_SSL_KEY_ALG)


@dataclass(frozen=True)
class ProxyInfo:
    """
    A parsed PROXY header.

    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"} (addresses given, or C{PROXY UNKNOWN}) or
        C{"LOCAL"} (v2 only: the proxy's own connection, e.g. a health check).
    @ivar family: C{"INET"}, C{"INET6"}, C{"UNIX"} or C{"UNSPEC"} (v1
        C{TCP4}/C{TCP6}/C{UNKNOWN} map to the first two and the last).
    @ivar source_address: the client's IP (compressed form) or UNIX path, or
        C{None} when the header carries no usable address (UNSPEC, LOCAL).
    @ivar source_port: the client's port (C{None} for UNIX / no address).
    @ivar dest_address: the address the client connected to on the proxy.
    @ivar dest_port: its port.
    @ivar tlvs: v2 TLVs in arrival order as C{(type, value)} pairs.
    @ivar proxy_address: the real socket peer (the proxy) as an IP string, or
        the UNIX socket name; filled in by the wrapper, C{None} from the parser.
    @ivar proxy_port: the real socket peer's port, if any.
    @ivar ssl: the decoded C{PP2_TYPE_SSL} TLV, if present.
    """

    version: int
    command: str
    family: str
    source_address: str | None = None
    source_port: int | None = None
    dest_address: str | None = None
    dest_port: int | None = None
    tlvs: tuple[TLV, ...] = ()
    proxy_address: str | None = None
    proxy_port: int | None = None
    ssl: ProxySSLInfo | None = field(default=None)

    @property
    def proxied(self) -> bool:
        """The header names the client (else the real socket addresses apply)."""
        return self.source_address is not None

    def tlv(self, kind: int) -> bytes | None:
        """Value of the first TLV of type C{kind}, or C{None}."""
        for t, v in self.tlvs:
            if t == kind:
                return v
        return None

    @property
    def alpn(self) -> bytes | None:
        """Application protocol negotiated between client and proxy."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """Host name the client asked the proxy for (usually the TLS SNI)."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def unique_id(self) -> bytes | None:
        """Opaque connection id assigned by the proxy (HAProxy C{unique-id})."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """Network namespace name the proxy accepted the connection in."""
        value = self.tlv(PP2_TYPE_NETNS)
        return None if value is None else value.decode("utf-8", "replace")


def _ip(text: str, version: int) -> str:
    if "%" in text:
        raise ProxyHeaderError(f"scoped address not allowed: {text!r}")
    try:
        addr = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError(f"invalid IPv{version} address {text!r}") from None
    return canonical_ip(addr)


def _port(text: str) -> int:
    if not (1 <= len(text) <= 5 and text.isascii() and text.isdigit()):
        raise ProxyHeaderError(f"invalid port {text!r}")
    value = int(text)
    if value > 65535:
        raise ProxyHeaderError(f"port out of range: {value}")
    return value


def _parse_v1(line: bytes) -> ProxyInfo:
    """Parse one v1 line (without its CRLF)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("non-ASCII byte in PROXY v1 line") from None
    if not text.isprintable():
        raise ProxyHeaderError("control character in PROXY v1 line")
    parts = text.split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyHeaderError("PROXY v1 line must start with 'PROXY '")
    proto = parts[1]
    if proto == "UNKNOWN":
        # The rest of the line, if any, must be ignored (spec 2.1).
        return ProxyInfo(version=1, command="PROXY", family="UNSPEC")
    if proto not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"unsupported PROXY v1 protocol {proto!r}")
    if len(parts) != 6:
        raise ProxyHeaderError("PROXY v1 line needs exactly 4 fields after the protocol")
    version = 4 if proto == "TCP4" else 6
    return ProxyInfo(
        version=1,
        command="PROXY",
        family="INET" if version == 4 else "INET6",
        source_address=_ip(parts[2], version),
        dest_address=_ip(parts[3], version),
        source_port=_port(parts[4]),
        dest_port=_port(parts[5]),
    )


def _parse_tlvs(data: bytes, base: int) -> list[tuple[int, bytes, int]]:
    """Split C{data} into (type, value, offset of value in the header)."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise ProxyHeaderError("truncated TLV header")
        kind = data[i]
        (length,) = struct.unpack_from("!H", data, i + 1)
        start = i + 3
        if start + length > len(data):
            raise ProxyHeaderError(f"TLV 0x{kind:02x} longer than the header")
        out.append((kind, data[start : start + length], base + start))
        i = start + length
    return out


def _parse_ssl(value: bytes) -> ProxySSLInfo:
    if len(value) < 5:
        raise ProxyHeaderError("PP2_TYPE_SSL TLV too short")
    client = value[0]
    (verify,) = struct.unpack_from("!I", value, 1)
    subs = tuple((t, v) for t, v, _ in _parse_tlvs(value[5:], 0))
    return ProxySSLInfo(client=client, verify=verify, tlvs=subs)


_PATH_CONTROL = re.compile(rb"[\x01-\x1f\x7f]")


def _unix_path(raw: bytes) -> str:
    """
    One 108-byte AF_UNIX address of a v2 header, as a C{str}.

    Like C{sun_path}, the path ends at its first NUL (what follows is padding
    and is ignored); a Linux abstract address (a leading NUL) is shown as
    C{"@name"}, as C{ss} shows it. A control byte in what remains is refused,
    not stripped: only a trusted proxy sends these addresses, so one is broken
    or tampered with, and the header is malformed like any other (the
    connection is dropped). Rewriting it instead would hand hooks and logs an
    identity the proxy never sent; keeping it would put raw control bytes
    into them (issue 10). Non-UTF-8 bytes stay surrogate-escaped.

    @raise ProxyHeaderError: for a control byte in the address.
    """
    if raw[:1] == b"\x00":
        path = b"@" + raw[1:].rstrip(b"\x00")
    else:
        path = raw.split(b"\x00", 1)[0]
    if b"\x00" in path or _PATH_CONTROL.search(path):
        raise ProxyHeaderError("control byte in a PROXY v2 UNIX address")
    text = path.decode("utf-8", "surrogateescape")
    if any("\x80" <= c <= "\x9f" for c in text):  # C1 controls, once decoded
        raise ProxyHeaderError("control character in a PROXY v2 UNIX address")
    return text


def _parse_v2(header: bytes) -> ProxyInfo:
    """Parse one complete v2 header (16 bytes + payload)."""
    ver_cmd, fam_proto = header[12], header[13]
    command = "LOCAL" if ver_cmd & 0x0F == 0 else "PROXY"
    family_nibble, transport = fam_proto >> 4, fam_proto & 0x0F
    payload = header[16:]
    known = _V2_FAMILIES.get(family_nibble)

    if command == "LOCAL":
        # Spec: accept, use the real endpoints, ignore the address block.
        # TLVs are kept when they parse; a LOCAL header is never rejected for them.
        family = known[0] if known else "UNSPEC"
        tlvs: list[tuple[int, bytes, int]] = []
        if known and len(payload) >= known[1]:
            try:
                tlvs = _parse_tlvs(payload[known[1] :], 16 + known[1])
            except ProxyHeaderError:
                tlvs = []
        try:
            return _finish_v2(header, "LOCAL", family, None, None, None, None, tlvs)
        except ProxyHeaderError:  # a TLV that does not decode (e.g. a short SSL TLV)
            return _finish_v2(header, "LOCAL", family, None, None, None, None, [])

    if known is None:
        raise ProxyHeaderError(f"unsupported PROXY v2 address family {family_nibble}")
    if transport not in _V2_STREAM_OK:
        raise ProxyHeaderError(f"unsupported PROXY v2 transport protocol {transport}")
    family, size = known
    if len(payload) < size:
        raise ProxyHeaderError(f"PROXY v2 header too short for a {family} address block")
    block, rest = payload[:size], payload[size:]
    tlvs = _parse_tlvs(rest, 16 + size)
    src = dst = None
    sport = dport = None
    if family == "INET":
        src = str(ipaddress.IPv4Address(block[0:4]))
        dst = str(ipaddress.IPv4Address(block[4:8]))
        sport, dport = struct.unpack_from("!HH", block, 8)
    elif family == "INET6":
        src = canonical_ip(ipaddress.IPv6Address(block[0:16]))
        dst = canonical_ip(ipaddress.IPv6Address(block[16:32]))
        sport, dport = struct.unpack_from("!HH", block, 32)
    elif family == "UNIX":
        src, dst = _unix_path(block[:108]), _unix_path(block[108:216])
    return _finish_v2(header, "PROXY", family, src, sport, dst, dport, tlvs)


def _finish_v2(
    header: bytes,
    command: str,
    family: str,
    src: str | None,
    sport: int | None,
    dst: str | None,
    dport: int | None,
    tlvs: list[tuple[int, bytes, int]],
) -> ProxyInfo:
    ssl = None
    for kind, value, offset in tlvs:
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise ProxyHeaderError("PP2_TYPE_CRC32C TLV must be 4 bytes")
            zeroed = header[:offset] + b"\x00\x00\x00\x00" + header[offset + 4 :]
            if crc32c(zeroed) != struct.unpack("!I", value)[0]:
                raise ProxyHeaderError("PROXY v2 header checksum mismatch")
        elif kind == PP2_TYPE_SSL and ssl is None:
            ssl = _parse_ssl(value)
    return ProxyInfo(
        version=2,
        command=command,
        family=family,
        source_address=src,
        source_port=sport,
        dest_address=dst,
        dest_port=dport,
        tlvs=tuple((k, v) for k, v, _ in tlvs),
        ssl=ssl,
    )


class ProxyHeaderParser:
    """
    Incremental (sans-IO) parser for one PROXY v1 or v2 header.

    Call L{feed} with whatever arrived; it returns C{None} until the header is
    complete, then C{(ProxyInfo, remaining_bytes)} exactly once.  Invalid
    input raises L{ProxyHeaderError} as early as it can be detected.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        if max_size < 16:
            raise ValueError("max_size must allow at least the 16-byte v2 preamble")
        self.max_size = max_size
        self._buffer = b""
        self._done = False

    def feed(self, data: bytes) -> tuple[ProxyInfo, bytes] | None:
        """Add C{data}; return the header and what followed it once complete."""
        if self._done:
            raise ProxyHeaderError("header already parsed")
        buf = self._buffer = self._buffer + data
        if not buf:
            return None
        if buf[0] == V2_SIGNATURE[0]:
            result = self._feed_v2(buf)
        elif buf[0] == _V1_PREFIX[0]:
            result = self._feed_v1(buf)
        else:
            raise ProxyHeaderError("data does not start with a PROXY header")
        if result is not None:
            self._done = True
            self._buffer = b""
        return result

    def _feed_v1(self, buf: bytes) -> tuple[ProxyInfo, bytes] | None:
        head = buf[: len(_V1_PREFIX)]
        if head != _V1_PREFIX[: len(head)]:
            raise ProxyHeaderError("data does not start with a PROXY header")
        end = buf.find(b"\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buf) >= V1_MAX_LENGTH:
                raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
            if b"\r" in buf[:-1]:
                raise ProxyHeaderError("CR not followed by LF in PROXY v1 line")
            return None
        if end == 0 or buf[end - 1] != 0x0D:
            raise ProxyHeaderError("PROXY v1 line must end with CRLF")
        return _parse_v1(buf[: end - 1]), buf[end + 1 :]

    def _feed_v2(self, buf: bytes) -> tuple[ProxyInfo, bytes] | None:
        head = buf[:12]
        if head != V2_SIGNATURE[: len(head)]:
            raise ProxyHeaderError("data does not start with a PROXY header")
        if len(buf) >= 13:
            if buf[12] >> 4 != 2:
                raise ProxyHeaderError(f"unsupported PROXY v2 version {buf[12] >> 4}")
            if buf[12] & 0x0F not in (0, 1):
                raise ProxyHeaderError(f"unsupported PROXY v2 command {buf[12] & 0x0F}")
        if len(buf) < 16:
            return None
        (length,) = struct.unpack_from("!H", buf, 14)
        total = 16 + length
        if total > self.max_size:
            raise ProxyHeaderError(f"PROXY v2 header of {total} bytes exceeds the {self.max_size}-byte limit")
        if len(buf) < total:
            return None
        return _parse_v2(buf[:total]), buf[total:]


def parse_proxy_header(data: bytes, max_size: int = DEFAULT_MAX_HEADER_SIZE) -> tuple[ProxyInfo, bytes]:
    """Parse a complete header at the start of C{data}; incomplete input is an error."""
    result = ProxyHeaderParser(max_size).feed(data)
    if result is None:
        raise ProxyHeaderError("incomplete PROXY header")
    return result
