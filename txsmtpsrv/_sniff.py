# -*- test-case-name: tests.test_sniff -*-
"""
Recognise clients that speak another protocol to our SMTP port: a browser
or HTTP proxy client (cross-protocol attacks: a web page making the browser
POST to port 25, a scanner probing for open proxies) and a TLS client on a
plaintext port (implicit-TLS client pointed at 25 or 587).

Such a client gets no SMTP dialogue: an HTTP request line C{421}, TLS bytes
a plain close (a reply would only be garbage to its TLS stack) — what
Postfix's C{smtpd_forbidden_commands} does for C{GET}, C{POST} and
C{CONNECT}.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["HTTP_METHODS", "is_http_request_line", "looks_like_tls"]

#: RFC 9110 methods, WebDAV's common ones and HTTP/2's connection preface (C{PRI * HTTP/2.0}).
HTTP_METHODS = frozenset({
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
})

_VERSION = re.compile(rb"HTTP/[0-9](?:\.[0-9])?")


def is_http_request_line(line: bytes) -> bool:
    """
    Whether C{line} (one line, without its CRLF) is an HTTP request line:
    a method, a target and C{HTTP/1.x} (or C{HTTP/2.0}), space separated.
    No SMTP command has that shape, so there is no false alarm on mail.
    """
    if len(line) > 8192:
        return False
    parts = line.split()
    return (len(parts) == 3 and parts[0].upper() in HTTP_METHODS
            and _VERSION.fullmatch(parts[2].upper()) is not None)


def looks_like_tls(first: bytes) -> Optional[bool]:
    """
    Whether the first bytes of a connection are a TLS (or SSLv2-compatible)
    ClientHello: C{True}, C{False}, or C{None} while too few bytes have come
    to tell (fewer than three that could still be one).

    A TLS record starts with content type 22 (handshake), then the legacy
    version 3.0-3.4 (C{16 03 0x}); an SSLv2-framed hello has the high bit set
    in its first byte and message type 1 in its third. An SMTP command is
    printable ASCII, so none of these can start one.
    """
    if not first:
        return None
    b0 = first[0]
    if b0 == 0x16:
        if len(first) >= 2 and first[1] != 0x03:
            return False
        if len(first) >= 3:
            return first[2] <= 0x04
        return None
    if b0 & 0x80:
        if len(first) >= 3:
            return first[2] == 0x01
        return None
    return False
