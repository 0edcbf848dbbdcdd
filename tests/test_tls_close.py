# -*- test-case-name: tests.test_tls_close -*-
"""
Closing a connection whose TLS handshake is still under way: the goodbye is
delivered and the connection really ends (it must not wait for a producer).
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import SMTPError, SMTPServer

from tests._certs import unverified_client_context


def read_until_eof(port: int) -> bytes:
    """Implicit-TLS client: everything the server sends until it closes (10 s at most)."""
    context = unverified_client_context()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    return data
                data += chunk


class ImplicitTLSCloseTests(unittest.TestCase):
    """A refused implicit-TLS client is closed, not left open."""

    timeout = 30

    @defer.inlineCallbacks
    def test_refused_at_connect_is_closed(self):
        """on_connect refusing under implicit TLS: the client reads the 554, then EOF; on_secure is not run."""
        secured = []

        class Hooks:
            def on_connect(self, session):
                raise SMTPError(554, "go away", "5.7.1")

            def on_secure(self, session):
                secured.append(session)

        server = SMTPServer(Hooks(), name="mx.test", secure=True, socket_timeout=60,
                            disable_reverse_lookup=True)
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.close)
        data = yield deferToThread(read_until_eof, port.getHost().port)
        self.assertEqual(data, b"554 5.7.1 go away\r\n")
        self.assertEqual(secured, [])
