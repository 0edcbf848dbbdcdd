# -*- test-case-name: tests.test_tls_closenotify -*-
"""
A client's TLS 1.3 close_notify before its FIN (RFC 8446 6.1: it closes
only the client's writing side) on the lean layer (L{txsmtpsrv._tlslayer}):
a half-close, as a TCP FIN is. The commands sent before it are answered,
also those whose replies come later (a hook, the data hook's verdict), then
our close_notify and TCP close. Mid-message nothing is stored; under TLS
1.2 (RFC 5246 7.2.1) the connection still ends at once. Real-client tests
over loopback (Python's C{ssl}, which sends close_notify and keeps reading;
STARTTLS and implicit TLS)
and deterministic ones on L{tests._tlswire.Wire}.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, List, Tuple

import pytest
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.test_halfclose import MESSAGE, TLSClient, LateHooks, read_reply, tls_half_close
from tests._tlswire import MESSAGE as WIRE_MESSAGE, Hooks, Wire, finals
from txsmtpsrv import SMTPServer, _tlslayer
from txsmtpsrv._testca import test_ca
from txsmtpsrv._sharedports import listen_endpoint

CLOSE_NOTIFY = b"<close_notify>"


def close_notify_only(port: int, commands: bytes) -> Tuple[bytes, bool]:
    """
    STARTTLS, C{commands}, then close_notify and no FIN: read until the
    server closes. Returns the application data and whether the server's
    close_notify came.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        sock.sendall(b"STARTTLS\r\n")
        read_reply(sock)
        client = TLSClient(sock, test_ca().client_context())
        client.handshake()
        client.tls.write(commands)
        with pytest.raises(ssl.SSLWantReadError):
            client.tls.unwrap()  # our close_notify written; the server's is still to come
        client._pump_out()  # the commands and the close_notify in one send
        data = b""
        while True:
            try:
                chunk = client.tls.read(65536)
            except ssl.SSLWantReadError:
                if client.eof:
                    return data, False
                client._pump_in()
                continue
            except ssl.SSLZeroReturnError:
                return data, True
            if not chunk:
                return data, True
            data += chunk


class RealClientTests(unittest.TestCase):
    """Python's C{ssl} as the client, over loopback, on the lean layer (STARTTLS on plain TCP)."""

    timeout = 60

    def serve(self, implicit: bool = False) -> "defer.Deferred[int]":
        self.hooks = LateHooks()
        server = SMTPServer(self.hooks, disable_reverse_lookup=True, name="mx.test", socket_timeout=30,
                            tls=test_ca().server_config())
        self.addCleanup(server.close)
        description = ("smtps:" if implicit else "") + "tcp:0:interface=127.0.0.1"
        endpoint = listen_endpoint(reactor, description, lambda: server.tls)
        return server.listen(endpoint).addCallback(lambda port: port.getHost().port)

    @defer.inlineCallbacks
    def test_close_notify_then_fin(self) -> Any:
        """
        A message (MAIL and RCPT hooks answer later, the data hook stores it
        later), close_notify, FIN: every reply arrives, the 250 for the
        message included, then the server closes.
        """
        port = yield self.serve()
        data, waited = yield deferToThread(tls_half_close, port, MESSAGE, True, True).addTimeout(30, reactor)
        self.assertEqual(finals(data), [b"220", b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])
        self.assertLess(waited, 5.0)  # closed once answered, not after socket_timeout (30 s)

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> Any:
        """The same on an smtps: listener, which runs on the lean layer too."""
        port = yield self.serve(implicit=True)
        data, waited = yield deferToThread(tls_half_close, port, MESSAGE, False, True).addTimeout(30, reactor)
        self.assertEqual(finals(data), [b"220", b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])
        self.assertLess(waited, 5.0)

    @defer.inlineCallbacks
    def test_close_notify_without_fin(self) -> Any:
        """The same with the socket left open: the replies, then the server's close_notify."""
        port = yield self.serve()
        data, closed_cleanly = yield deferToThread(close_notify_only, port, MESSAGE).addTimeout(30, reactor)
        self.assertEqual(finals(data), [b"250", b"250", b"250", b"354", b"250"])
        self.assertTrue(closed_cleanly)
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])

    @defer.inlineCallbacks
    def test_close_notify_mid_message(self) -> Any:
        """No end of message can come: no 250 for it, nothing stored, closed at once."""
        port = yield self.serve()
        data, waited = yield deferToThread(tls_half_close, port, MESSAGE[:-len(b".\r\n")], True,
                                           True).addTimeout(30, reactor)
        self.assertEqual(finals(data), [b"220", b"250", b"250", b"250", b"354"])
        self.assertEqual(self.hooks.messages, [])
        self.assertLess(waited, 5.0)


def _close_notify(wire: Wire) -> bytes:
    """The client's close_notify (its TLS side shut for writing), as ciphertext."""
    assert wire.tls is not None
    with pytest.raises(ssl.SSLWantReadError):
        wire.tls.unwrap()
    return wire.client_out()


class _Later:
    """A MAIL hook that answers when the test says."""

    def __init__(self) -> None:
        self.pending: List["defer.Deferred[Any]"] = []

    def on_mail_from(self, session: Any, address: Any) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d


class WireTests(unittest.SynchronousTestCase):
    """The edges, deterministic: the test plays the reactor (see L{Wire})."""

    def test_reply_after_close_notify(self) -> None:
        """A hook answers after the close_notify arrived: its reply and the next ones go out, then ours."""
        hooks = _Later()
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.read()
        wire.send(b"EHLO client.test\r\n")
        wire.read()
        wire.tls.write(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")  # type: ignore[union-attr]
        wire.feed(_close_notify(wire))
        self.assertFalse(wire.transport.disconnected)
        self.assertEqual(wire.read(), b"")
        hooks.pending[0].callback(None)
        wire.pump()
        data = wire.read()
        self.assertEqual(finals(data[:-len(CLOSE_NOTIFY)]), [b"250", b"250"])
        self.assertTrue(data.endswith(CLOSE_NOTIFY))
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionDone)

    def test_input_after_close_notify_is_discarded(self) -> None:
        """Bytes after the close_notify (and a FIN) are ignored: no TLS error, the answer still comes."""
        hooks = _Later()
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.send(b"EHLO client.test\r\n")
        wire.read()
        wire.tls.write(b"MAIL FROM:<a@example.test>\r\n")  # type: ignore[union-attr]
        wire.feed(_close_notify(wire) + b"\x17\x03\x03\x00\x05junk")
        wire.feed(b"QUIT\r\n")
        wire.fin()
        self.assertFalse(wire.transport.disconnected)
        hooks.pending[0].callback(None)
        wire.pump()
        data = wire.read()
        self.assertEqual(finals(data[:-len(CLOSE_NOTIFY)]), [b"250"])
        self.assertTrue(data.endswith(CLOSE_NOTIFY))
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionDone)

    def test_close_notify_behind_a_paused_protocol(self) -> None:
        """
        A message and the close_notify in one read, a data-hook reader that
        pauses after each chunk: the end of input waits behind the message
        (the ciphertext stays in OpenSSL's BIO); the message is stored and
        answered, then our close_notify.
        """
        hooks = Hooks(slow=True)
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.read()
        assert wire.tls is not None
        wire.tls.write(WIRE_MESSAGE)
        wire.feed(wire.client_out() + _close_notify(wire))
        self.assertTrue(wire.transport.protocol._paused)
        [reader] = hooks.readers
        for _ in range(100):
            if reader.done.called:
                break
            self.assertFalse(wire.transport.disconnected)
            reader.producer.resumeProducing()
            wire.pump()
        self.assertEqual(len(hooks.messages), 1)
        data = wire.read()
        self.assertEqual(finals(data[:-len(CLOSE_NOTIFY)]), [b"250", b"250", b"250", b"354", b"250"])
        self.assertTrue(data.endswith(CLOSE_NOTIFY))
        self.assertTrue(wire.transport.disconnected)

    def test_close_notify_mid_message(self) -> None:
        hooks = Hooks()
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.send(WIRE_MESSAGE[:-3])
        wire.feed(_close_notify(wire))
        self.assertNotIn(b"250 2.0.0", wire.read())
        self.assertEqual(hooks.messages, [])
        self.assertTrue(wire.transport.disconnected)

    def test_tls12_close_notify_ends_the_connection(self) -> None:
        """TLS 1.2 (RFC 5246 7.2.1: answer close_notify and close at once): as before, replies still to come are dropped."""
        hooks = _Later()
        wire = Wire(hooks)
        context = test_ca().client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        wire.starttls(context)
        wire.handshake(lambda data: [data] if data else [])
        wire.send(b"EHLO client.test\r\n")
        wire.read()
        wire.tls.write(b"MAIL FROM:<a@example.test>\r\n")  # type: ignore[union-attr]
        wire.feed(_close_notify(wire))
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionDone)
        self.assertEqual(wire.read(), CLOSE_NOTIFY)


class RaisingWayWireTests(WireTests):
    """The same without asking the BIOs' fill (another pyOpenSSL): a read after the close_notify raises again."""

    def setUp(self) -> None:
        self.patch(_tlslayer, "_held", None)
