# -*- test-case-name: tests.test_review14c -*-
"""
Review of the lean STARTTLS layer (L{txsmtpsrv._tlslayer}, branch leantls14):
what its own tests did not pin. Plaintext in the reads that carry the
client's handshake never reaches the SMTP dialogue; a closed connection
whose client never reads is still aborted by L{txsmtpsrv._deadlines.Linger};
a TLS failure toward such a client is bounded too; every kind of OpenSSL
error ends the connection instead of escaping into the reactor.
"""

from __future__ import annotations

import ssl
from typing import Any, Callable, List

import pytest

from OpenSSL import SSL
from twisted.logger import capturedLogs
from twisted.trial import unittest

from tests._tlswire import Hooks, Wire, finals

#: A plaintext command an attacker would inject (CVE-2011-0411).
INJECTED = b"MAIL FROM:<injected@attacker.test>\r\n"


def _never_reads(wire: Wire) -> None:
    """From now on the client reads nothing: the kernel takes no more, everything queues in the transport."""
    wire.transport.protocol._raw.stop()  # as after a full socket once
    wire.transport.writeSomeData = lambda data: 0  # type: ignore[method-assign]


def _client_hello(wire: Wire, read: Callable[[bytes], bytes]) -> None:
    """The client's first flight, made into one read by C{read}."""
    assert wire.tls is not None
    with pytest.raises(ssl.SSLWantReadError):
        wire.tls.do_handshake()
    wire.feed(read(wire.client_out()))


class InjectionTests(unittest.SynchronousTestCase):
    def _assert_hello_read_rejected(self, read: Callable[[bytes], bytes]) -> None:
        """The ClientHello made into one read by C{read}: a broken handshake, nothing handed to the dialogue."""
        hooks = Hooks()
        wire = Wire(hooks)
        wire.starttls()
        handed = wire.watch()
        _client_hello(wire, read)
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, SSL.Error)
        self.assertEqual((handed, hooks.secure), ([], []))

    def test_plaintext_before_the_client_hello_in_one_read(self) -> None:
        """Plaintext, then the ClientHello, in one read: a broken handshake, nothing handed to the dialogue."""
        self._assert_hello_read_rejected(lambda hello: INJECTED + hello)

    def test_plaintext_after_the_client_hello_in_one_read(self) -> None:
        """The ClientHello, then plaintext, in one read: the same."""
        self._assert_hello_read_rejected(lambda hello: hello + INJECTED)

    def test_plaintext_after_the_finished_in_one_read(self) -> None:
        """
        The client's Finished and plaintext in one read: the handshake
        completes, the plaintext is a bad record, the connection closes; not
        a byte of it reaches the dialogue.
        """
        wire = Wire(Hooks())
        wire.starttls()
        handed = wire.watch()
        flights: List[int] = []

        def inject_into_the_second(data: bytes) -> List[bytes]:
            flights.append(len(data))
            return [data + INJECTED] if len(flights) == 2 else [data]
        wire.handshake(inject_into_the_second)
        self.assertEqual(len(flights), 2)  # ClientHello; Finished (TLS 1.3)
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, SSL.Error)
        self.assertEqual(handed, [])

    def test_no_plaintext_after_the_220(self) -> None:
        """Whatever is written after the 220 (through the transport, the old writer) leaves encrypted or not at all."""
        wire = Wire(Hooks())
        wire.feed(b"EHLO client.test\r\n")
        wire.feed(b"STARTTLS\r\n")
        wire.plain_reply()
        wire.transport.write(b"250 plaintext?\r\n")
        wire.transport.writeSequence([b"250 ", b"plaintext?\r\n"])
        wire.protocol._out.write(b"250 plaintext?\r\n")
        self.assertEqual(wire.received(), b"")  # held for the handshake, not sent in the clear
        wire.plain = b""
        wire.client_tls()
        wire.handshake()
        self.assertEqual(wire.read(), b"250 plaintext?\r\n" * 3)


class ClosingTests(unittest.SynchronousTestCase):
    def test_linger_aborts_after_quit_when_the_client_never_reads(self) -> None:
        """QUIT from a client that reads nothing more: close_notify queued, the connection aborted socket_timeout later."""
        wire = Wire(Hooks(), socket_timeout=30)
        wire.starttls()
        wire.handshake()
        wire.read()
        _never_reads(wire)
        assert wire.tls is not None
        wire.tls.write(b"NOOP\r\nQUIT\r\n")
        wire.transport.protocol.dataReceived(wire.client_out())
        layer, t = wire.transport.protocol, wire.transport
        self.assertTrue(layer._over and t.disconnecting and not t.disconnected)
        self.assertGreater(len(t.dataBuffer) + t._tempDataLen, 0)  # replies and close_notify wait
        wire.clock.advance(29.9)
        self.assertFalse(t.disconnected)
        wire.clock.advance(0.2)
        wire.clock.advance(0)  # the abort's connectionLost
        self.assertTrue(t.disconnected)
        self.assertEqual(len(wire.lost), 1)

    def test_corrupt_record_from_a_client_that_never_reads_is_bounded(self) -> None:
        """
        A TLS failure toward a client that reads nothing: the alert and TCP
        close wait in the transport, the dialogue's own timeout and then
        its linger abort the connection (at most twice socket_timeout).
        """
        wire = Wire(Hooks(), socket_timeout=30)
        wire.starttls()
        wire.handshake()
        wire.read()
        _never_reads(wire)
        assert wire.tls is not None
        wire.tls.write(b"NOOP\r\n")
        record = bytearray(wire.client_out())
        record[-1] ^= 1
        wire.transport.protocol.dataReceived(bytes(record))
        t = wire.transport
        self.assertTrue(t.disconnecting and not t.disconnected)
        with capturedLogs():
            for _ in range(61):
                wire.clock.advance(1)
                wire.clock.advance(0)
        self.assertTrue(t.disconnected)
        self.assertIsInstance(wire.lost[0].value, SSL.Error)

    def test_every_openssl_error_ends_the_connection(self) -> None:
        """
        Any OpenSSL error from a read under TLS (WantWrite, X509 lookup, a
        system call, close_notify, a protocol error) ends the connection; none
        escapes into the reactor; the protocol hears of it once.
        """
        errors: List[Any] = [SSL.WantWriteError(), SSL.WantX509LookupError(), SSL.SysCallError(-1, "Unexpected EOF"),
                             SSL.SysCallError(104, "ECONNRESET"), SSL.ZeroReturnError(),
                             SSL.Error([("SSL routines", "", "bad record mac")])]
        for error in errors:
            wire = Wire(Hooks())
            wire.starttls()
            wire.handshake()
            wire.read()
            layer = wire.transport.protocol

            def failing(size: int, error: Any = error) -> bytes:
                raise error
            layer._conn.recv = failing
            wire.send(b"NOOP\r\n")  # feed: an exception would propagate here
            self.assertTrue(wire.transport.disconnected, error)
            self.assertEqual(len(wire.lost), 1, error)
            self.assertIsNone(wire.protocol._tls_timer)

    def test_every_openssl_error_in_the_handshake_ends_the_connection(self) -> None:
        """The same from the handshake; the handshake timer is cancelled, the "tls" event told once."""
        for error in [SSL.WantWriteError(), SSL.WantX509LookupError(), SSL.ZeroReturnError(),
                      SSL.SysCallError(104, "ECONNRESET"), SSL.Error([("SSL routines", "", "no shared cipher")])]:
            wire = Wire(Hooks())
            events: List[Any] = []
            wire.server.observe("tls", lambda *args: events.append(args))
            wire.starttls()
            layer = wire.transport.protocol

            def failing(error: Any = error) -> None:
                raise error
            layer._conn.do_handshake = failing
            timer = wire.protocol._tls_timer
            wire.feed(b"\x16\x03\x01\x00\x05hello")
            self.assertTrue(wire.transport.disconnected, error)
            self.assertEqual((len(wire.lost), len(events)), (1, 1), error)
            self.assertFalse(timer.active())

    def test_pause_keeps_close_notify_behind_the_data(self) -> None:
        """Commands and close_notify in one read, the protocol paused in between: every command answered first."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        wire.read()
        wire.transport.pauseProducing()
        assert wire.tls is not None
        wire.tls.write(b"NOOP\r\n")
        wire.tls.write(b"NOOP\r\n")
        try:
            wire.tls.unwrap()
        except Exception:
            pass  # (wants our close_notify: sent anyway)
        wire.feed(wire.client_out())
        self.assertFalse(wire.transport.disconnecting)  # nothing decrypted while paused
        wire.transport.resumeProducing()
        wire.pump()
        self.assertTrue(wire.transport.disconnected)
        wire.client_in()
        data = b""
        try:
            while True:
                chunk = wire.tls.read(1 << 16)
                if not chunk:
                    break
                data += chunk
        except Exception:
            pass
        self.assertEqual(finals(data), [b"250", b"250"])


class TinyRecordTests(unittest.SynchronousTestCase):
    def test_tiny_records_are_handed_over_together(self) -> None:
        """
        A body sent as one-byte TLS records (23 bytes of ciphertext each,
        ~2,800 in one 64 KiB read): the records of a read reach the dialogue
        together, as a plain TCP read would, not one chunk per record (each
        chunk costs ~40 bytes more in a reader that keeps them, such as
        C{stream.content()}: a message of C{size} bytes would take 40 times
        that).
        """
        chunks: List[int] = []

        class Collecting:
            def on_data(self, session: Any, stream: Any) -> Any:
                return stream.collect(lambda chunk: chunks.append(len(chunk)))
        wire = Wire(Collecting())
        wire.starttls()
        wire.handshake()
        wire.send(b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        self.assertEqual(finals(wire.read()), [b"250", b"250", b"250", b"354"])
        assert wire.tls is not None
        body = (b"x" * 78 + b"\r\n") * 250  # 20,000 bytes
        for i in range(len(body)):
            wire.tls.write(body[i:i + 1])
        ciphertext = wire.client_out()
        for i in range(0, len(ciphertext), 1 << 16):  # the reads the reactor would make
            wire.feed(ciphertext[i:i + (1 << 16)])
        wire.send(b".\r\n")
        self.assertEqual(finals(wire.read()), [b"250"])
        self.assertEqual(sum(chunks), len(body))
        self.assertLess(len(chunks), 50)  # ~8 reads
