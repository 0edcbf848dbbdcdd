# -*- test-case-name: tests.test_tls_close -*-
"""
Closing a connection whose TLS handshake is still under way: the goodbye is
delivered and the connection really ends (it must not wait for a producer).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import SMTPError, SMTPServer

from tests._certs import unverified_client_context


def read_until_eof(port: int, send: bytes = b"") -> bytes:
    """Implicit-TLS client: everything the server sends until it closes (10 s at most), C{send} sent first."""
    context = unverified_client_context()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(send)
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    return data
                data += chunk


class ImplicitTLSCloseTests(unittest.TestCase):
    """A refused implicit-TLS client is closed, not left open."""

    timeout = 30

    @defer.inlineCallbacks
    def refuse(self, code: int, send: bytes = b"") -> Any:
        """What an implicit-TLS client refused by on_connect with C{code} reads until EOF; on_secure never runs."""
        secured = []

        class Hooks:
            def on_connect(self, session):
                raise SMTPError(code, "go away", "5.7.1")

            def on_secure(self, session):
                secured.append(session)

        server = SMTPServer(Hooks(), name="mx.test", secure=True, socket_timeout=60,
                            disable_reverse_lookup=True)
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.close)
        data = yield deferToThread(read_until_eof, port.getHost().port, send)
        self.assertEqual(secured, [])
        return data

    @defer.inlineCallbacks
    def test_refused_at_connect_is_closed(self):
        """on_connect refusing with 521 under implicit TLS (RFC 7504: no wait for QUIT): the 521, then EOF."""
        data = yield self.refuse(521)
        self.assertEqual(data, b"521 5.7.1 go away\r\n")

    @defer.inlineCallbacks
    def test_refused_554_closes_after_quit(self):
        """With 554 (RFC 5321 3.1) the client's NOOP gets 503 and its QUIT 221, then EOF."""
        data = yield self.refuse(554, b"NOOP\r\nQUIT\r\n")
        self.assertEqual(data, b"554 5.7.1 go away\r\n503 5.5.1 Error: connection refused, send QUIT\r\n"
                               b"221 2.0.0 Bye\r\n")
