# -*- test-case-name: tests.test_tlsgather -*-
"""
Tiny TLS records on every path: the records of one read reach the SMTP
dialogue (and a data hook's reader) together, as a plain TCP read would,
not one chunk per record. The lean layer gathers them itself
(C{tests/test_review14c.py}); these tests pin the other paths with a real
server on loopback and a client that sends its body as one-byte records:
implicit TLS (C{smtps:}), STARTTLS behind the PROXY wrapper, C{smtps:}
over C{smtpproxy:}, and STARTTLS on plain TCP with the lean layer switched
off (Twisted's layer); and, deterministically, on Twisted's layer over a
C{StringTransport} (the handshake's end and the records of its read, the
handover every C{GATHER} bytes).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from zope.interface import directlyProvides

from txsmtpsrv import SMTPServer, _tlslayer
from txsmtpsrv._tls import TLSContextHolder
from txsmtpsrv._tlsgather import GATHER, gather_records
from txsmtpsrv._testca import test_ca
from txsmtpsrv._sharedports import listen_endpoint

IO_TIMEOUT = 10.0
PROXY_HEADER = b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 465\r\n"
#: 20,000 bytes: 20,000 one-byte records, ~460 KB of ciphertext, several 64 KiB reads.
BODY = (b"x" * 78 + b"\r\n") * 250


class MemoryClient:
    """
    An SMTP client over a blocking socket whose TLS runs on memory BIOs
    (Python's C{ssl.SSLObject}), so that the test decides what makes a
    record and what makes a send.
    """

    def __init__(self, port: int, proxy: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        if proxy:
            self.sock.sendall(PROXY_HEADER)
        self.tls: Optional[ssl.SSLObject] = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("server closed")
        if self.tls is None:
            self.buffer += data
        else:
            self.incoming.write(data)

    def _push(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def start_tls(self) -> None:
        context = test_ca().client_context()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                self._recv()
        self._push()

    def secure(self, starttls: bool) -> List[bytes]:
        """
        Up to the first command under TLS, shared by every path: the greeting,
        EHLO and STARTTLS then the handshake, or (implicit TLS) the handshake
        then the greeting. The reply codes so far.
        """
        got: List[bytes] = []
        if starttls:
            got += self.replies(1)
            self.send(b"EHLO client.test\r\n")
            got += self.replies(1)
            self.send(b"STARTTLS\r\n")
            got += self.replies(1)
        self.start_tls()
        if not starttls:
            got += self.replies(1)
        return got

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
        else:
            self.tls.write(data)
            self._push()

    def replies(self, count: int) -> List[bytes]:
        """The codes of the next C{count} final reply lines."""
        codes: List[bytes] = []
        while len(codes) < count:
            while b"\r\n" in self.buffer and len(codes) < count:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    codes.append(line[:3])
            if len(codes) >= count:
                break
            if self.tls is None:
                self._recv()
                continue
            try:
                self.buffer += self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                self._push()
                self._recv()
        return codes


def tiny_records(port: int, proxy: bool, starttls: bool) -> List[bytes]:
    """One message whose body goes as one-byte TLS records, all sent at once; the final replies."""
    client = MemoryClient(port, proxy)
    try:
        got = client.secure(starttls)
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        got += client.replies(4)
        assert client.tls is not None
        for i in range(len(BODY)):
            client.tls.write(BODY[i:i + 1])
        client._push()
        client.send(b".\r\nQUIT\r\n")
        got += client.replies(2)
        return got
    finally:
        client.close()


class TinyRecordTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def check(self, endpoint: str, proxy: bool, starttls: bool) -> Any:
        chunks: List[int] = []

        class Collecting:
            def on_data(self, session: Any, stream: Any) -> Any:
                return stream.collect(lambda chunk: chunks.append(len(chunk)))

        server = SMTPServer(Collecting(), name="mx.test", tls=test_ca().server_config(), disable_reverse_lookup=True)
        self.addCleanup(server.close)
        port = yield server.listen(listen_endpoint(reactor, endpoint, lambda: server.tls))
        got = yield deferToThread(tiny_records, port.getHost().port, proxy, starttls).addTimeout(30, reactor)
        codes = [b"220", b"250", b"220"] if starttls else [b"220"]
        self.assertEqual(got, codes + [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual(sum(chunks), len(BODY))
        # One chunk per record would be 20,000; one per read is a few dozen at most.
        self.assertLess(len(chunks), 500)

    def test_implicit_tls(self) -> Any:
        return self.check("smtps:tcp:0:interface=127.0.0.1", proxy=False, starttls=False)

    def test_starttls_behind_the_proxy_wrapper(self) -> Any:
        return self.check("smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1", proxy=True,
                          starttls=True)

    def test_implicit_tls_over_the_proxy_wrapper(self) -> Any:
        return self.check("smtps:smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1", proxy=True,
                          starttls=False)

    def test_starttls_on_twisteds_layer(self) -> Any:
        self.patch(_tlslayer, "ENABLED", False)
        return self.check("tcp:0:interface=127.0.0.1", proxy=False, starttls=True)

    def test_starttls_on_the_lean_layer(self) -> Any:
        return self.check("tcp:0:interface=127.0.0.1", proxy=False, starttls=True)


def quit_then_fin(port: int, proxy: bool, starttls: bool) -> Tuple[List[bytes], float]:
    """QUIT, its 221, then a TCP FIN (no close_notify): the replies and how long until the server closed."""
    client = MemoryClient(port, proxy)
    try:
        got = client.secure(starttls)
        client.send(b"NOOP\r\nQUIT\r\n")
        got += client.replies(2)
        client.sock.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        while client.sock.recv(1 << 16):
            pass
        return got, time.monotonic() - start
    finally:
        client.close()


class Paths:
    """The endpoints of every TLS path: (endpoint, PROXY header, STARTTLS)."""

    lean = ("tcp:0:interface=127.0.0.1", False, True)
    implicit = ("smtps:tcp:0:interface=127.0.0.1", False, False)
    proxy_starttls = ("smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1", True, True)
    implicit_over_proxy = ("smtps:smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1", True, False)


class FinAfterQuitTests(unittest.TestCase):
    """
    After QUIT the server sent its close_notify; a client that then shuts
    down its sending side without one (a FIN) can send nothing more: the
    server closes at once, not when a timer gives up on it.
    """

    timeout = 60

    @defer.inlineCallbacks
    def check(self, endpoint: str, proxy: bool, starttls: bool) -> Any:
        closed: List[str] = []

        class Closing:
            def on_close(self, session: Any) -> None:
                closed.append(session.id)

        server = SMTPServer(Closing(), name="mx.test", tls=test_ca().server_config(), disable_reverse_lookup=True,
                            socket_timeout=30)
        self.addCleanup(server.close)
        port = yield server.listen(listen_endpoint(reactor, endpoint, lambda: server.tls))
        got, waited = yield deferToThread(quit_then_fin, port.getHost().port, proxy, starttls).addTimeout(
            45, reactor)
        codes = [b"220", b"250", b"220"] if starttls else [b"220"]
        self.assertEqual(got, codes + [b"250", b"221"])
        self.assertLess(waited, 5.0)  # socket_timeout is 30 s
        self.assertEqual(len(closed), 1)

    def test_lean_layer(self) -> Any:
        return self.check(*Paths.lean)

    def test_implicit_tls(self) -> Any:
        return self.check(*Paths.implicit)

    def test_starttls_behind_the_proxy_wrapper(self) -> Any:
        return self.check(*Paths.proxy_starttls)

    def test_implicit_tls_over_the_proxy_wrapper(self) -> Any:
        return self.check(*Paths.implicit_over_proxy)

    def test_starttls_on_twisteds_layer(self) -> Any:
        self.patch(_tlslayer, "ENABLED", False)
        return self.check(*Paths.lean)


class _Recording:
    """The protocol under Twisted's TLS layer: what reaches it, in order."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, bytes]] = []
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def handshakeCompleted(self) -> None:
        self.events.append(("handshake", b""))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Any) -> None:
        self.events.append(("lost", b""))


class InMemoryTests(unittest.SynchronousTestCase):
    """
    L{gather_records} on Twisted's C{TLSMemoryBIOProtocol} over a
    C{StringTransport}, the client on memory BIOs: what one read's records
    make of the protocol's input, deterministically.
    """

    def setUp(self) -> None:
        self.protocol = _Recording()
        directlyProvides(self.protocol, IHandshakeListener)
        factory = TLSMemoryBIOFactory(TLSContextHolder(test_ca().server_config()), False, None)
        self.tls = factory.protocol(factory, self.protocol)
        self.wire = StringTransport()
        self.tls.makeConnection(self.wire)
        gather_records(self.tls)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = test_ca().client_context().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def exchange(self) -> None:
        """The server's bytes to the client."""
        self.incoming.write(self.wire.value())
        self.wire.clear()

    def handshake_until_finished(self) -> bytes:
        """The client's handshake up to (not including) sending its Finished: those bytes."""
        with self.assertRaises(ssl.SSLWantReadError):
            self.client.do_handshake()
        self.tls.dataReceived(self.outgoing.read())  # ClientHello
        self.exchange()
        self.client.do_handshake()  # (TLS 1.3: done on the client's side once it has sent its Finished)
        return self.outgoing.read()

    def test_finished_and_records_in_one_read(self) -> None:
        """The client's Finished and ten small records in one read: the handshake, then one chunk, in order."""
        finished = self.handshake_until_finished()
        for i in range(10):
            self.client.write(b"line %d\r\n" % i)
        self.tls.dataReceived(finished + self.outgoing.read())
        self.assertEqual(self.protocol.events,
                         [("handshake", b""), ("data", b"".join(b"line %d\r\n" % i for i in range(10)))])

    def test_handed_over_at_gather_bytes(self) -> None:
        """
        A read of 300 records of 100 bytes: chunks of GATHER bytes (give or
        take a record) as they fill, the rest at the end of the read,
        everything in order.
        """
        self.tls.dataReceived(self.handshake_until_finished())
        payload = bytes(range(100)) * 300
        for i in range(300):
            self.client.write(payload[i * 100:(i + 1) * 100])
        self.tls.dataReceived(self.outgoing.read())
        chunks = [data for kind, data in self.protocol.events if kind == "data"]
        self.assertEqual(b"".join(chunks), payload)
        self.assertEqual(len(chunks), -(-len(payload) // (GATHER + 100 - GATHER % 100)))
        for chunk in chunks[:-1]:
            self.assertTrue(GATHER <= len(chunk) < GATHER + 100, len(chunk))
