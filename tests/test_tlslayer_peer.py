# -*- test-case-name: tests.test_tlslayer_peer -*-
"""
The lean STARTTLS layer (L{txsmtpsrv._tlslayer}): what the client does at the
TLS level inside a session, on a L{Wire} (C{tests/_tlswire.py}): a client
certificate, a TLS 1.3 KeyUpdate, a TLS 1.2 renegotiation (the last two with
a pyOpenSSL client, which Python's C{ssl} cannot be).
"""

from __future__ import annotations

from typing import Callable

import pytest
from OpenSSL import SSL
from twisted.trial import unittest

from tests._tlswire import Hooks, Wire, finals
from txsmtpsrv._tls import tls_info


def _key_update() -> Callable[[SSL.Connection], int]:
    """
    C{SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED)} for a pyOpenSSL client:
    no binding offers it; found as L{txsmtpsrv._tlsnative} finds its functions.
    """
    import ctypes

    from OpenSSL._util import ffi

    from txsmtpsrv import _tlsnative
    address = _tlsnative._locate("SSL_key_update")[0]["SSL_key_update"]
    function = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(address)
    return lambda conn: int(function(int(ffi.cast("uintptr_t", conn._ssl)), 1))


class _PyOpenSSLClient:
    """A pyOpenSSL client on a L{Wire} (renegotiation, KeyUpdate: what Python's ssl cannot do)."""

    def __init__(self, wire: Wire, max_version: int = SSL.TLS1_3_VERSION) -> None:
        self.wire = wire
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(max_version)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        wire.starttls()
        for _ in range(10):
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                self.exchange()
        self.exchange()

    def exchange(self) -> bytes:
        """The client's pending output to the server; the server's answer (raw) into the client."""
        try:
            out = self.conn.bio_read(1 << 16)
        except SSL.WantReadError:
            out = b""
        if out:
            self.wire.feed(out)
        data = self.wire.received()
        if data:
            self.conn.bio_write(data)
        return data

    def command(self, line: bytes) -> bytes:
        self.conn.send(line)
        self.exchange()
        return self.conn.recv(1 << 16)


class KeyUpdateTests(unittest.SynchronousTestCase):
    def test_key_update(self) -> None:
        """
        TLS 1.3 KeyUpdate asking for ours, between commands: OpenSSL reads it
        (answering with its own KeyUpdate before its next record, as RFC 8446
        4.6.3 allows) and the session goes on under the new keys, both ways.
        """
        key_update = _key_update()
        client = _PyOpenSSLClient(Wire(Hooks()))
        self.assertEqual(client.command(b"NOOP\r\n")[:3], b"250")
        for _ in range(2):
            self.assertEqual(key_update(client.conn), 1)
            client.conn.do_handshake()  # sends the KeyUpdate
            self.assertEqual(client.exchange(), b"")  # read; the server's comes with its next record
            for _ in range(2):
                self.assertEqual(client.command(b"NOOP\r\n")[:3], b"250")
        self.assertFalse(client.wire.transport.disconnected)


class ClientCertificateTests(unittest.SynchronousTestCase):
    def test_peer_certificate(self) -> None:
        """A client certificate: getPeerCertificate on the transport and tls_info see it, verified."""
        from tests._tls import client_context, material, mx_config
        wire = Wire(Hooks(), tls=mx_config(ca=material().ca.cert_pem, request_client_cert=True))
        wire.starttls(client_context(verify=False, cert="client"))
        wire.handshake()
        wire.send(b"NOOP\r\n")
        self.assertEqual(finals(wire.read()), [b"250"])
        self.assertIsNotNone(wire.transport.getPeerCertificate())
        info = tls_info(wire.transport)
        assert info is not None and info.peer_certificate is not None
        self.assertTrue(info.peer_certificate_verified)
        self.assertEqual(wire.protocol.session.tls, info)


class RenegotiationTests(unittest.SynchronousTestCase):
    def test_tls12_renegotiation_refused_and_answered(self) -> None:
        """
        A TLS 1.2 client asks to renegotiate: OpenSSL refuses with an alert
        written while reading, which must go out although the server has no
        reply to send; the session goes on.
        """
        wire = Wire(Hooks())
        client = _PyOpenSSLClient(wire, SSL.TLS1_2_VERSION).conn
        self.assertTrue(client.renegotiate())
        with pytest.raises(SSL.WantReadError):
            client.do_handshake()
        out = client.bio_read(1 << 16)
        wire.feed(out)
        answer = wire.received()
        self.assertTrue(answer, "OpenSSL's answer to the renegotiation was not sent")
        client.bio_write(answer)
        try:
            client.do_handshake()
        except SSL.Error:
            pass  # the client may give up on the refusal
        else:  # or carry on without it
            client.send(b"NOOP\r\n")
            wire.feed(client.bio_read(1 << 16))
            client.bio_write(wire.received())
            self.assertEqual(client.recv(1000)[:3], b"250")
