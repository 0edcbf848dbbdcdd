# -*- test-case-name: tests.test_proxy -*-
"""
PROXY protocol (v1 and v2) in front of any stream server, SMTP included.

A load balancer such as HAProxy connects to us on behalf of a client and
prepends a small header naming the client's real address.  Twisted ships a
wrapper for this (C{twisted.protocols.haproxy}), but it connects the wrapped
protocol before the header has arrived, so a server-speaks-first protocol
greets, and reads C{getPeer()}, too early; it also trusts any peer, has no
header timeout, rejects C{PROXY UNKNOWN} and drops the v2 TLVs.  This module
is our own implementation:

  - L{ProxyHeaderParser}: a sans-IO parser for both versions that accepts its
    input split at any byte, caps the header size and raises
    L{ProxyHeaderError} for anything malformed.
  - L{ProxyInfo}: the parsed header (frozen), plus the real socket peer.
  - L{ProxyWrappingFactory} / L{ProxyProtocolWrapper}: a Twisted wrapper that
    lets only trusted peers (CIDR list) speak PROXY, buffers until the whole
    header is in (with a timeout), and only I{then} builds and connects the
    wrapped protocol, passing it the proxied address.
  - L{proxyEndpoint}: wraps any C{IStreamServerEndpoint}, like Twisted's
    function of the same name.
  - L{ProxyEndpointParser}: the C{smtpproxy:} endpoint-string prefix.

What the wrapped protocol sees on C{self.transport}:

  - C{getPeer()} / C{getHost()}: the client and the address it connected to,
    as C{IPv4Address}/C{IPv6Address} (C{UNIXAddress} for AF_UNIX); for
    C{PROXY UNKNOWN}, v2 C{LOCAL} and v2 C{UNSPEC}, the real socket addresses.
  - C{proxy_info}: the L{ProxyInfo}, or C{None} when the connection came
    from an untrusted peer that was let through without a header
    (C{allow_untrusted=True}).  Read it with
    C{getattr(self.transport, "proxy_info", None)}: that also works on plain
    transports and through further wrappers (e.g. implicit TLS inside).
  - STARTTLS: C{self.transport.startTLS(ctx)} works through the wrapper;
    afterwards C{ISSLTransport.providedBy(self.transport)} is true (as on a
    plain TCP transport) and, if the wrapped protocol provides
    C{IHandshakeListener}, its C{handshakeCompleted()} is called once the
    handshake is done.  C{self.transport.getHandle()} and
    C{getPeerCertificate()} reach the TLS connection as usual.

Implicit TLS (port 465) behind a proxy: the header travels in clear before
the TLS handshake, so TLS must sit I{inside} the PROXY wrapper:
C{wrapServerTLS(options, proxyEndpoint(TCP4ServerEndpoint(...)))}.

Endpoint string syntax (see L{ProxyEndpointParser})::

    smtpproxy:[trusted=CIDR,CIDR...:][timeout=SECONDS:][untrusted=reject|pass:]
              [maxHeaderSize=BYTES:]<any server endpoint description>

e.g. C{smtpproxy:trusted=10.0.0.0/8,fd00\\:\\:/8:timeout=5:tcp:2525:interface=0.0.0.0}.
Colons inside IPv6 networks must be escaped with a backslash (Twisted's
endpoint grammar splits on every unescaped colon).
"""

from __future__ import annotations

import ipaddress
import math
import re
import struct
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence, Union, cast

from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
    ITLSTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from ._rdns import canonical_ip

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_TRUSTED",
    "ProxyEndpointParser",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyInfo",
    "ProxyProtocolWrapper",
    "ProxyServerEndpoint",
    "ProxySSLInfo",
    "ProxyWrappingFactory",
    "parse_proxy_header",
    "proxyEndpoint",
]

#: Networks allowed to send a PROXY header unless told otherwise.
DEFAULT_TRUSTED: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

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


# ---------------------------------------------------------------------------
# Twisted wrapper

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _networks(trusted: Iterable[str | Network] | str) -> tuple[Network, ...]:
    if isinstance(trusted, str):
        trusted = [t for t in trusted.split(",") if t.strip()]
    nets = []
    for item in trusted:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            nets.append(item)
        else:
            try:
                nets.append(ipaddress.ip_network(str(item).strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an IP network: {item!r}") from None
    return tuple(nets)


def _to_address(family: str, host: str, port: int | None) -> IAddress:
    if family == "INET":
        return IPv4Address("TCP", host, port or 0)
    if family == "INET6":
        return IPv6Address("TCP", host, port or 0)
    return UNIXAddress(host.encode("utf-8", "surrogateescape"))


def _peer_ip(addr: IAddress) -> tuple[str | None, int | None]:
    host = getattr(addr, "host", None)
    if isinstance(addr, (IPv4Address, IPv6Address)) and isinstance(host, str):
        try:
            return canonical_ip(host), addr.port
        except ValueError:
            return host, addr.port
    if isinstance(addr, UNIXAddress):
        name = addr.name
        if isinstance(name, bytes):
            return name.decode("utf-8", "surrogateescape"), None
        return name, None
    return None, None


_AWAITING, _CONNECTED, _CLOSED = "awaiting-header", "connected", "closed"


@implementer(IHandshakeListener)
class ProxyProtocolWrapper(ProtocolWrapper):
    """
    Transport-side half of the PROXY support: reads the header, then becomes
    a transparent wrapper whose C{getPeer()}/C{getHost()} report the proxied
    addresses.  See the module docstring for what the wrapped protocol sees.

    The wrapped protocol is built (C{wrappedFactory.buildProtocol(addr)} with
    the I{proxied} client address) only once the header is complete, so
    per-client limits in C{buildProtocol} apply to the real client; returning
    C{None} from it closes the connection.
    """

    log = Logger()
    factory: ProxyWrappingFactory
    proxy_info: ProxyInfo | None = None
    # None until the header is in, unlike ProtocolWrapper's.
    wrappedProtocol: IProtocol | None  # type: ignore[assignment]

    def __init__(self, factory: ProxyWrappingFactory, wrappedProtocol: IProtocol | None = None) -> None:
        # wrappedProtocol stays None until the header is in (see class docstring).
        ProtocolWrapper.__init__(self, factory, wrappedProtocol)  # type: ignore[arg-type]
        self.proxy_info = None
        self._state = _AWAITING
        self._parser = ProxyHeaderParser(factory.max_header_size)
        self._timer: IDelayedCall | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None

    def logPrefix(self) -> str:
        """Name the wrapped protocol once there is one."""
        if self.wrappedProtocol is None:
            return f"{self.factory.logPrefix()} (PROXY)"
        prefix: str = ProtocolWrapper.logPrefix(self)
        return prefix

    def _real(self) -> ITransport:
        """The real transport (set by L{makeConnection}, before any use)."""
        assert self.transport is not None
        return self.transport

    # -- connection setup -------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """Adopt the transport's interfaces and register, but don't connect the wrapped protocol yet."""
        directlyProvides(self, providedBy(transport))
        self.factory.registerProtocol(self)
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        """Decide by the real peer whether to expect a header, pass through, or close."""
        peer = self._real().getPeer()
        host, port = _peer_ip(peer)
        if self.factory.is_trusted(peer):
            if self.factory.timeout:
                self._timer = self.factory.clock.callLater(self.factory.timeout, self._timedOut)
            return
        if self.factory.allow_untrusted:
            self.log.debug(
                "PROXY: untrusted peer {peer}:{port} passed through without a header",
                peer=host,
                port=port,
            )
            self._connectWrapped(b"")
            return
        self.log.warn(
            "PROXY: connection from untrusted peer {peer}:{port} closed",
            peer=host,
            port=port,
            proxy_error="untrusted",
        )
        self._close()

    def _timedOut(self) -> None:
        self._timer = None
        if self._state is not _AWAITING:
            return
        host, port = _peer_ip(self._real().getPeer())
        self.log.warn(
            "PROXY: no complete header from {peer}:{port} within {timeout}s; closing",
            peer=host,
            port=port,
            timeout=self.factory.timeout,
            proxy_error="timeout",
        )
        self._close()

    def _close(self) -> None:
        self._state = _CLOSED
        self._cancelTimer()
        self._real().loseConnection()

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _headerReceived(self, info: ProxyInfo, rest: bytes) -> None:
        self._cancelTimer()
        real_host, real_port = _peer_ip(self._real().getPeer())
        info = replace(info, proxy_address=real_host, proxy_port=real_port)
        self.proxy_info = info
        if info.source_address is not None:
            self._peer = _to_address(info.family, info.source_address, info.source_port)
        if info.dest_address is not None:
            self._host = _to_address(info.family, info.dest_address, info.dest_port)
        if info.source_address is None:  # LOCAL (health check) or UNSPEC: no client to name
            self.log.debug("PROXY v{version} {command} from {proxy}", version=info.version,
                           command=info.command, proxy=real_host)
        else:
            self.log.debug(
                "PROXY v{version} {command} from {proxy}: client {client}:{client_port}",
                version=info.version,
                command=info.command,
                proxy=real_host,
                client=info.source_address,
                client_port=info.source_port,
            )
        self._connectWrapped(rest)

    def _connectWrapped(self, rest: bytes) -> None:
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._close()
            return
        self.wrappedProtocol = protocol
        self._state = _CONNECTED
        protocol.makeConnection(self)
        if rest and self._state is _CONNECTED and not self._closing():
            protocol.dataReceived(rest)

    def _closing(self) -> bool:
        return bool(self.disconnecting or getattr(self.transport, "disconnecting", False))

    # -- IProtocol --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Feed the header parser until it completes, then relay."""
        if self._state is _CONNECTED:
            assert self.wrappedProtocol is not None
            self.wrappedProtocol.dataReceived(data)
            return
        if self._state is _CLOSED:
            return
        try:
            result = self._parser.feed(data)
        except ProxyHeaderError as e:
            host, port = _peer_ip(self._real().getPeer())
            self.log.warn(
                "PROXY: invalid header from {peer}:{port}: {reason}; closing",
                peer=host,
                port=port,
                reason=str(e),
                proxy_error="malformed",
            )
            self._close()
            return
        if result is not None:
            self._headerReceived(*result)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Tell the wrapped protocol, if it was ever connected."""
        self._cancelTimer()
        self.factory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        connected = self._state is _CONNECTED
        self._state = _CLOSED
        if connected and protocol is not None:
            protocol.connectionLost(reason)

    # -- IHandshakeListener -----------------------------------------------

    def handshakeCompleted(self) -> None:
        """Forward the TLS handshake notification (lost through Twisted's own wrapper)."""
        protocol = self.wrappedProtocol
        if protocol is not None and IHandshakeListener.providedBy(protocol):
            protocol.handshakeCompleted()

    # -- transport --------------------------------------------------------

    def getPeer(self) -> IAddress:
        """The proxied client address, or the real peer when the header gave none."""
        if self._peer is not None:
            return self._peer
        return self._real().getPeer()

    def getHost(self) -> IAddress:
        """The address the client connected to on the proxy, or our real one."""
        if self._host is not None:
            return self._host
        return self._real().getHost()

    def startTLS(self, contextFactory: Any, *args: Any, **kwargs: Any) -> None:
        """Start TLS on the real transport and advertise C{ISSLTransport}, like C{tcp.Server} does."""
        cast(ITLSTransport, self._real()).startTLS(contextFactory, *args, **kwargs)
        alsoProvides(self, ISSLTransport)


class ProxyWrappingFactory(WrappingFactory[ProxyProtocolWrapper]):
    """
    Wraps a server factory so that its connections must start with a PROXY
    header from a trusted peer.

    @param wrappedFactory: the real server factory.
    @param trusted: networks (strings like C{"10.0.0.0/8"}, a comma-separated
        string, or C{ipaddress} network objects) whose connections carry a
        header.  Peers on a UNIX socket are always trusted (the socket's file
        permissions decide who may connect).
    @param timeout: seconds to wait for the complete header; 0/None disables.
    @param reactor: supplies C{callLater} (an C{IReactorTime}, e.g. a Clock).
    @param allow_untrusted: let untrusted peers through I{without} a header
        (then C{proxy_info} is C{None}) instead of closing their connections.
    @param max_header_size: cap on a v2 header (v1 is always <= 107 bytes).
    """

    protocol = ProxyProtocolWrapper

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        trusted: Iterable[str | Network] | str = DEFAULT_TRUSTED,
        timeout: float | None = 10.0,
        reactor: IReactorTime | None = None,
        allow_untrusted: bool = False,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.clock: IReactorTime = reactor
        self.trusted = _networks(trusted)
        if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a finite number of seconds >= 0")
        self.timeout = timeout
        self.allow_untrusted = allow_untrusted
        if max_header_size < 16:
            raise ValueError("max_header_size must be at least 16")
        self.max_header_size = max_header_size

    def registerProtocol(self, p: ProxyProtocolWrapper) -> None:
        """Track C{p} (as C{WrappingFactory} does; typed here)."""
        super().registerProtocol(p)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def unregisterProtocol(self, p: ProxyProtocolWrapper) -> None:
        """Forget C{p} (as C{WrappingFactory} does; typed here)."""
        super().unregisterProtocol(p)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def logPrefix(self) -> str:
        """Mark the wrapped factory's prefix as PROXY-wrapped."""
        inner = self.wrappedFactory
        prefix = inner.logPrefix() if hasattr(inner, "logPrefix") else type(inner).__name__
        return f"{prefix} (PROXY)"

    def buildProtocol(self, addr: IAddress | None) -> ProxyProtocolWrapper:
        """Build only the wrapper; the wrapped protocol comes after the header."""
        return self.protocol(self, None)

    def is_trusted(self, addr: IAddress) -> bool:
        """Whether the real peer C{addr} may send a PROXY header."""
        if isinstance(addr, UNIXAddress):
            return True
        if not isinstance(addr, (IPv4Address, IPv6Address)):
            return False
        try:
            ip = ipaddress.ip_address(addr.host.split("%", 1)[0])
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.trusted if c.version == net.version)


@implementer(IStreamServerEndpoint)
class ProxyServerEndpoint:
    """An C{IStreamServerEndpoint} whose connections go through L{ProxyWrappingFactory}."""

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        trusted: Iterable[str | Network] | str = DEFAULT_TRUSTED,
        timeout: float | None = 10.0,
        reactor: IReactorTime | None = None,
        allow_untrusted: bool = False,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        self.endpoint = endpoint
        # validate early, not at listen time
        self.trusted = _networks(trusted)
        if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a finite number of seconds >= 0")
        if max_header_size < 16:
            raise ValueError("max_header_size must be at least 16")
        self.timeout = timeout
        self.reactor = reactor
        self.allow_untrusted = allow_untrusted
        self.max_header_size = max_header_size

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint with the factory wrapped for PROXY."""
        return self.endpoint.listen(
            ProxyWrappingFactory(
                protocolFactory,
                trusted=self.trusted,
                timeout=self.timeout,
                reactor=self.reactor,
                allow_untrusted=self.allow_untrusted,
                max_header_size=self.max_header_size,
            )
        )


def proxyEndpoint(
    endpoint: IStreamServerEndpoint,
    trusted: Iterable[str | Network] | str = DEFAULT_TRUSTED,
    timeout: float | None = 10.0,
    reactor: IReactorTime | None = None,
    allow_untrusted: bool = False,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
) -> ProxyServerEndpoint:
    """
    Wrap C{endpoint} so its connections must begin with a PROXY v1/v2 header
    from a C{trusted} peer; see L{ProxyWrappingFactory} for the options.
    """
    return ProxyServerEndpoint(
        endpoint,
        trusted=trusted,
        timeout=timeout,
        reactor=reactor,
        allow_untrusted=allow_untrusted,
        max_header_size=max_header_size,
    )


# ---------------------------------------------------------------------------
# endpoint string plugin


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _unparse(args: Sequence[object], kwargs: dict[str, object]) -> str:
    parts = [_quote(str(a)) for a in args]
    parts += [f"{_quote(str(k))}={_quote(str(v))}" for k, v in kwargs.items()]
    return ":".join(parts)


_TRUE = {"1", "yes", "true", "on", "pass", "allow"}
_FALSE = {"0", "no", "false", "off", "reject", "close"}


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ProxyEndpointParser:
    """
    The C{smtpproxy:} server endpoint string prefix.

    Syntax: C{smtpproxy:} followed by any other server endpoint description,
    with these extra keyword options (taken out before the rest is handed to
    C{serverFromString}; inner endpoints can therefore not use these names):

      - C{trusted=NET,NET...}: comma-separated networks or addresses allowed
        to send a header (default C{127.0.0.1/32,::1/128}).  Escape the
        colons of IPv6 networks: C{trusted=10.0.0.0/8,fd00\\:\\:/8}.
      - C{timeout=SECONDS}: header timeout (default 10; 0 disables).
      - C{untrusted=reject|pass}: close connections from other peers
        (default) or let them through without a header.
      - C{maxHeaderSize=BYTES}: cap on a v2 header (default 4096).

    Example: C{smtpproxy:trusted=127.0.0.1/8,\\:\\:1:timeout=5:tcp:2525:interface=127.0.0.1}.
    """

    prefix = "smtpproxy"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> ProxyServerEndpoint:
        """Split off our options and build the inner endpoint from the rest."""
        options = dict(kwargs)
        trusted = str(options.pop("trusted", ",".join(DEFAULT_TRUSTED)))
        timeout_text = str(options.pop("timeout", "10"))
        untrusted = str(options.pop("untrusted", "reject")).lower()
        max_text = str(options.pop("maxHeaderSize", str(DEFAULT_MAX_HEADER_SIZE)))
        if not args:
            raise ValueError("smtpproxy: needs an inner endpoint, e.g. smtpproxy:tcp:2525")
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise ValueError(f"smtpproxy: timeout must be a number of seconds, not {timeout_text!r}") from None
        if untrusted in _TRUE:
            allow = True
        elif untrusted in _FALSE:
            allow = False
        else:
            raise ValueError(f"smtpproxy: untrusted must be 'reject' or 'pass', not {untrusted!r}")
        try:
            max_size = int(max_text)
        except ValueError:
            raise ValueError(f"smtpproxy: maxHeaderSize must be an integer, not {max_text!r}") from None
        inner = serverFromString(reactor, _unparse(args, options))
        return proxyEndpoint(
            inner,
            trusted=trusted,
            timeout=timeout or None,
            reactor=reactor,
            allow_untrusted=allow,
            max_header_size=max_size,
        )
