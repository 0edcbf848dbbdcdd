# -*- test-case-name: tests.test_tlslayer_flow -*-
"""
The lean STARTTLS layer (L{txsmtpsrv._tlslayer}): flow control, on a L{Wire}
(C{tests/_tlswire.py}): a slow reader pausing with decrypted data pending,
pause and resume while handing over, and a client that does not read its
replies (the layer decrypts no more until it does).
"""

from __future__ import annotations

import socket

from twisted.trial import unittest

from tests._tlswire import MESSAGE, MESSAGE_BODY_LEN, Hooks, Wire, finals


class PauseTests(unittest.SynchronousTestCase):
    def test_pause_with_decrypted_data_pending(self) -> None:
        """
        A slow reader pauses the stream: from that record on nothing more is
        decrypted (the ciphertext waits in OpenSSL's BIO), the socket is not
        read; each resume hands over more, and the message arrives whole.
        """
        hooks = Hooks(slow=True)
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.read()
        layer = wire.transport.protocol
        handed = wire.watch()
        wire.send(MESSAGE + b"QUIT\r\n")  # one read: the whole message in four records
        self.assertFalse(wire.reading)
        self.assertTrue(layer._paused)
        first = len(handed)
        self.assertLess(first, 4)
        [reader] = hooks.readers
        rounds = 0
        while not reader.done.called:
            rounds += 1
            self.assertLess(rounds, 100)
            self.assertFalse(wire.reading)  # paused: the socket is not read
            reader.producer.resumeProducing()
            wire.pump()
        self.assertEqual([(m[0], m[1]) for m in hooks.messages], [("a@example.test", MESSAGE_BODY_LEN)])
        data = wire.read()
        self.assertEqual(finals(data[:-len(b"<close_notify>")]), [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual(sum(map(len, handed)), len(MESSAGE) - len(b"EHLO client.test\r\n") + len(b"QUIT\r\n")
                         + len(b"EHLO client.test\r\n"))

    def test_pause_and_resume_while_handing_over(self) -> None:
        """A reader that pauses and resumes at once, inside each chunk: the socket is read again afterwards."""
        hooks = Hooks(slow=True)
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.read()
        wire.send(MESSAGE[:len(MESSAGE) // 2])
        [reader] = hooks.readers
        reader.dataReceived = lambda data: (reader.chunks.append(data), reader.producer.pauseProducing(),
                                            reader.producer.resumeProducing())
        reader.producer.resumeProducing()
        wire.send(MESSAGE[len(MESSAGE) // 2:])
        self.assertTrue(wire.reading)
        self.assertFalse(wire.transport.protocol._paused)
        self.assertEqual([(m[0], m[1]) for m in hooks.messages], [("a@example.test", MESSAGE_BODY_LEN)])

    def test_resume_reads_the_socket_again(self) -> None:
        """Paused and resumed by the protocol: the transport reads again once nothing is pending."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        layer = wire.transport.protocol
        wire.transport.pauseProducing()
        self.assertFalse(wire.reading)
        wire.send(b"NOOP\r\n")  # a read the reactor had already made
        self.assertEqual(wire.read(), b"")  # not handed over while paused
        wire.transport.resumeProducing()
        self.assertTrue(wire.reading)
        self.assertEqual(finals(wire.read()), [b"250"])
        self.assertFalse(layer._paused)


class BackpressureTests(unittest.SynchronousTestCase):
    def test_a_client_that_does_not_read(self) -> None:
        """
        Pipelined commands from a client that does not read the replies: once
        the transport holds more than its buffer, the SMTP protocol pauses and
        the layer decrypts no more commands (their ciphertext waits); as the
        client reads, the rest is answered, every reply in order.
        """
        wire = Wire(Hooks(), max_junk_commands=0)  # NOOPs without end are fine here
        wire.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        wire.client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        wire.starttls()
        wire.handshake()
        wire.read()
        layer = wire.transport.protocol
        n = 40000
        assert wire.tls is not None
        wire.tls.write(b"NOOP\r\n" * n)
        ciphertext = wire.client_out()
        wire.transport.protocol.dataReceived(ciphertext)  # not pumped: the client reads nothing
        self.assertTrue(layer._paused)
        self.assertFalse(wire.reading)
        self.assertFalse(layer._raw.direct)  # the socket was full: the transport queues
        queued = len(wire.transport.dataBuffer) + wire.transport._tempDataLen
        self.assertLess(queued, 3 * wire.transport.bufferSize)  # not n replies' worth
        self.assertLess(queued, n * len(b"250 2.0.0 OK\r\n") // 4)
        data = b""
        for _ in range(10000):
            data += wire.read()
            if data.count(b"\r\n") >= n:
                break
        self.assertEqual(data, b"250 2.0.0 OK\r\n" * n)
        self.assertTrue(wire.reading)
        self.assertFalse(layer._paused)
