# -*- test-case-name: tests.test_tlslayer_dialogue,tests.test_tlslayer_flow,tests.test_tlslayer_peer -*-
"""
L{Wire}: one server connection on a real loopback socket whose reactor is the
test, for deterministic tests of the lean STARTTLS layer
(L{txsmtpsrv._tlslayer}): C{tests/test_tlslayer_*.py}, C{test_tlsflight.py},
C{test_review14c.py} and C{test_tls_closenotify.py}.

The server side is a real C{twisted.internet.tcp.Server} with a
C{MemoryReactorClock}: the test plays the reactor (it hands the client's
ciphertext to the connection in pieces of its choosing, flushes queued
writes, delivers the end of input) and a Python C{ssl} client over memory
BIOs plays the client, so every edge (chunk boundaries, pause with decrypted
data pending, close_notify, truncation, a failed or stalled handshake) is
deterministic. L{Hooks} records the messages and TLS facts.
"""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.tcp import Server
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txsmtpsrv import SMTPServer
from txsmtpsrv._protocol import SMTPServerProtocol
from txsmtpsrv._testca import test_ca

#: What a blocking client waits at most.
IO_TIMEOUT = 10.0


class _Port:
    """What tcp.Server wants of its listening port (its repr)."""

    _realPortNumber = 25


class Hooks:
    """Records messages (streamed, with a hash) and TLS facts; a slow reader on request."""

    def __init__(self, slow: bool = False) -> None:
        self.messages: List[Tuple[str, int, str]] = []
        self.secure: List[Any] = []
        self.closed = 0
        self.slow = slow
        self.readers: List[Any] = []

    def on_secure(self, session: Any) -> None:
        self.secure.append(session.tls)

    def on_data(self, session: Any, stream: Any) -> Any:
        sender = session.envelope.mail_from.address
        if not self.slow:
            return stream.content().addCallback(
                lambda body: self.messages.append((sender, len(body), hashlib.sha256(body).hexdigest())))
        reader = _SlowReader(stream)
        self.readers.append(reader)
        return reader.done.addCallback(lambda body: self.messages.append(
            (sender, len(body), hashlib.sha256(body).hexdigest())))

    def on_close(self, session: Any) -> None:
        self.closed += 1


class _SlowReader:
    """A data-hook reader that pauses the stream after every chunk until the test resumes it."""

    def __init__(self, stream: Any) -> None:
        self.chunks: List[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.producer: Any = None
        stream.deliver_body(self)

    def makeConnection(self, producer: Any) -> None:
        self.producer = producer

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.producer.pauseProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(b"".join(self.chunks))


class _Recording(SMTPServerProtocol):
    """The SMTP connection, noting the reasons its connectionLost gets."""

    lost: List[Failure]

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.lost.append(reason)  # type: ignore[arg-type]
        super().connectionLost(reason)


class Wire:
    """
    One server connection on a real TCP socket whose reactor is the test.

    The server side is a real C{tcp.Server} (so the lean layer takes it);
    the reactor is a C{MemoryReactorClock}: reads are handed over by
    L{feed}, queued writes flushed by L{pump}, timers run by L{advance}.
    """

    def __init__(self, hooks: Any = None, server: Optional[SMTPServer] = None, **options: Any) -> None:
        # (C{server}: a second connection to a server already made, which may resume its sessions)
        if server is None:
            self.clock = MemoryReactorClock()
            options.setdefault("name", "mx.test")
            options.setdefault("tls", test_ca().server_config())
            server = SMTPServer(hooks, reactor=self.clock, disable_reverse_lookup=True, **options)
        else:
            self.clock = server.reactor
        self.server = server
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.client_sock = socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT)
        server_sock, peer = listener.accept()
        listener.close()
        server_sock.setblocking(False)
        self.client_sock.setblocking(False)
        self.lost: List[Failure] = []
        self.protocol = _Recording(self.server._context)
        self.protocol.factory = self.server
        self.protocol.lost = self.lost
        self.transport = Server(server_sock, self.protocol, peer, _Port(), 1, self.clock)  # type: ignore[arg-type]
        self.tls: Optional[ssl.SSLObject] = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.plain = b""  # what the client read before TLS
        self.closed_by_server = False
        self.reset = False
        self.start()

    def start(self) -> None:
        """Make the connection as C{tcp:} does: plain SMTP (a subclass may start TLS at once instead)."""
        self.protocol.makeConnection(self.transport)

    # -- the reactor's part ------------------------------------------------------------

    @property
    def reading(self) -> bool:
        return self.transport in self.clock.getReaders()

    def pump(self) -> None:
        """Let the transport write what it queued (as the reactor would), and end it if it closed."""
        t = self.transport
        for _ in range(1000):
            if t.disconnected or t not in self.clock.getWriters():
                return
            before = (len(t.dataBuffer) - t.offset + t._tempDataLen, t.producerPaused)
            why = t.doWrite()
            if why is not None:
                t.connectionLost(Failure(why))
                return
            if before == (len(t.dataBuffer) - t.offset + t._tempDataLen, t.producerPaused):
                # No room: as the reactor would, wait (briefly) for the socket to take more.
                if not select.select([], [t.socket], [], 0.01)[1]:
                    return  # the client must read first
        raise AssertionError("the transport never finished writing")

    def feed(self, data: bytes) -> None:
        """A read: C{data} to the connection's protocol (the TLS layer after STARTTLS)."""
        assert not self.transport.disconnected
        self.transport.protocol.dataReceived(data)
        self.pump()

    def fin(self) -> None:
        """The client's FIN, as the reactor reports it."""
        self.transport.readConnectionLost(Failure(ConnectionDone()))
        self.pump()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.clock.advance(0)  # callLater(0)s, e.g. an abort's connectionLost
        self.pump()

    # -- the client's part ----------------------------------------------------------------

    def received(self) -> bytes:
        """What the server sent that the client has not read yet (raw bytes)."""
        self.pump()
        data = b""
        while True:
            try:
                chunk = self.client_sock.recv(1 << 20)
            except BlockingIOError:
                return data
            except ConnectionResetError:  # an abort (SO_LINGER 0)
                self.reset = True
                chunk = b""
            if not chunk:
                self.closed_by_server = True
                return data
            data += chunk

    def plain_reply(self) -> bytes:
        self.plain += self.received()
        return self.plain

    def starttls(self, context: Optional[ssl.SSLContext] = None) -> None:
        self.feed(b"EHLO client.test\r\n")
        self.feed(b"STARTTLS\r\n")
        assert self.plain_reply().endswith(b"220 2.0.0 Ready to start TLS\r\n"), self.plain
        self.plain = b""
        self.client_tls(context)

    def client_tls(self, context: Optional[ssl.SSLContext] = None) -> None:
        """The client's TLS side, ready for L{handshake} (by default trusting the test CA)."""
        self.tls = (context or test_ca().client_context()).wrap_bio(self.incoming, self.outgoing,
                                                                    server_hostname="localhost")

    def watch(self) -> List[bytes]:
        """What the SMTP protocol receives from now on (the layer's handovers), one item per handover."""
        handed: List[bytes] = []
        original = self.protocol.dataReceived

        def recording(data: bytes) -> None:
            handed.append(data)
            original(data)
        self.protocol.dataReceived = recording  # type: ignore[method-assign]  # an instance dict: _Recording
        return handed

    def client_out(self) -> bytes:
        return self.outgoing.read()

    def client_in(self) -> None:
        data = self.received()
        if data:
            self.incoming.write(data)

    def handshake(self, chunks: Callable[[bytes], List[bytes]] = lambda data: [data]) -> None:
        assert self.tls is not None
        for _ in range(20):
            try:
                self.tls.do_handshake()
                out = self.client_out()
                for piece in chunks(out):
                    self.feed(piece)
                return
            except ssl.SSLWantReadError:
                out = self.client_out()
                for piece in chunks(out):
                    self.feed(piece)
                self.client_in()
        raise AssertionError("handshake did not finish")

    def send(self, data: bytes, chunks: Callable[[bytes], List[bytes]] = lambda data: [data]) -> None:
        assert self.tls is not None
        self.tls.write(data)
        for piece in chunks(self.client_out()):
            self.feed(piece)

    def read(self) -> bytes:
        """Application data the server sent so far (under TLS)."""
        self.client_in()
        return self.plaintext()

    def plaintext(self) -> bytes:
        """What the client's TLS can decrypt of what it was given (a close_notify as C{<close_notify>})."""
        assert self.tls is not None
        data = b""
        while True:
            try:
                chunk = self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                return data
            except ssl.SSLZeroReturnError:
                return data + b"<close_notify>"
            if not chunk:  # what ssl makes of a close_notify
                return data + b"<close_notify>"
            data += chunk


def finals(data: bytes) -> List[bytes]:
    """The code of each final reply line, in order."""
    return [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" "]


MESSAGE = (b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
           b"Subject: lean\r\n\r\n" + b"line of the body\r\n" * 3000 + b".\r\n")
MESSAGE_BODY_LEN = len(b"Subject: lean\r\n\r\n" + b"line of the body\r\n" * 3000)
