# -*- test-case-name: tests.test_tlslayer -*-
"""
The lean STARTTLS layer (L{txsmtpsrv._tlslayer}).

Two kinds of test. L{Wire} runs a real C{twisted.internet.tcp.Server} on a
real loopback socket with a C{MemoryReactorClock}: the test plays the
reactor (it hands the client's ciphertext to the connection in pieces of
its choosing, flushes queued writes, delivers the end of input) and a
Python C{ssl} (or pyOpenSSL) client over memory BIOs plays the client, so
every edge (chunk boundaries, pause with decrypted data pending, close_notify,
truncation, a failed or stalled handshake) is deterministic. The loopback
tests at the end run real clients against the real reactor and compare the
new path with Twisted's layer where the behaviour must be the same.
"""

from __future__ import annotations

import hashlib
import random
import select
import smtplib
import socket
import ssl
import time
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from OpenSSL import SSL
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.tcp import Server
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.declarations import Provides

from tests import test_halfclose, test_tls_certificates, test_tls_dialogue
from tests.test_tlsimplicit import compare_failed_handshakes
from txsmtpsrv import SMTPServer, _tlsconn, _tlslayer
from txsmtpsrv._protocol import SMTPServerProtocol
from txsmtpsrv._tls import tls_info
from txsmtpsrv._testca import test_ca
from txsmtpsrv._workers import listen_endpoint

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


# --------------------------------------------------------------------------------------
# Which path


class PathTests(unittest.SynchronousTestCase):
    def test_unexpected_eof(self) -> None:
        """OpenSSL's EOF in violation of TLS (a SysCallError, an "unexpected eof" or empty error queue) is told apart."""
        self.assertTrue(_tlslayer._unexpected_eof(SSL.SysCallError(-1, "Unexpected EOF")))
        self.assertTrue(_tlslayer._unexpected_eof(SSL.Error([("SSL routines", "", "unexpected eof while reading")])))
        self.assertTrue(_tlslayer._unexpected_eof(SSL.Error([])))
        self.assertFalse(_tlslayer._unexpected_eof(SSL.Error([("SSL routines", "", "wrong version number")])))
        self.assertFalse(_tlslayer._unexpected_eof(SSL.SysCallError(104, "ECONNRESET")))

    def test_plain_tcp_takes_the_layer(self) -> None:
        """STARTTLS on tcp.Server: the transport's protocol is the layer, ISSLTransport and getHandle as before."""
        wire = Wire(Hooks())
        wire.starttls()
        layer = wire.transport.protocol
        self.assertIsInstance(layer, _tlslayer.TLSLayer)
        self.assertTrue(wire.transport.TLS)
        self.assertTrue(ISSLTransport.providedBy(wire.transport))
        self.assertIsInstance(wire.transport.getHandle(), SSL.Connection)
        self.assertIs(wire.transport.getHandle().get_app_data(), layer)
        wire.handshake()
        self.assertEqual(tls_info(wire.transport).version, "TLSv1.3")
        self.assertIsNone(wire.transport.getPeerCertificate())
        # The transport's ISSLTransport declaration is kept (zope.interface caches it only weakly).
        self.assertIs(_tlsconn._DECLARATIONS[(Server, _tlslayer.TLSLayer)][0], Provides(Server, ISSLTransport))
        # OpenSSL's memory BIOs are found: their fill is asked, no read raises to learn it.
        self.assertIsNotNone(layer._rbio)
        self.assertIsNotNone(layer._wbio)

    def test_switch_off(self) -> None:
        """ENABLED = False: Twisted's startTLS, as before."""
        self.patch(_tlslayer, "ENABLED", False)
        wire = Wire(Hooks())
        wire.feed(b"EHLO client.test\r\n")
        wire.feed(b"STARTTLS\r\n")
        self.assertIsInstance(wire.transport.protocol, TLSMemoryBIOProtocol)

    def test_not_eligible(self) -> None:
        holder = test_ca().server_config()
        self.assertFalse(_tlslayer.eligible(object(), holder))
        wire = Wire(Hooks())
        self.assertFalse(_tlslayer.eligible(wire.transport, holder))  # a TLSConfig is no connection creator
        self.assertTrue(_tlslayer.eligible(wire.transport, wire.server.tls))
        wire.transport.TLS = True
        self.assertFalse(_tlslayer.eligible(wire.transport, wire.server.tls))


# --------------------------------------------------------------------------------------
# The dialogue through the layer


def session(wire: Wire, chunks: Callable[[bytes], List[bytes]] = lambda data: [data]) -> bytes:
    """STARTTLS, a message, QUIT; everything read under TLS."""
    wire.starttls()
    wire.handshake(chunks)
    wire.send(MESSAGE + b"QUIT\r\n", chunks)
    return wire.read()


class DialogueTests(unittest.SynchronousTestCase):
    def test_message_and_quit(self) -> None:
        """EHLO, a 54 KiB message in four records, QUIT: the replies, close_notify, the connection closed."""
        hooks = Hooks()
        wire = Wire(hooks)
        data = session(wire)
        self.assertEqual(finals(data[:-len(b"<close_notify>")]), [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertTrue(data.endswith(b"<close_notify>"))
        self.assertEqual([(m[0], m[1]) for m in hooks.messages], [("a@example.test", MESSAGE_BODY_LEN)])
        self.assertTrue(wire.transport.disconnected)
        self.assertEqual(len(hooks.secure), 1)

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])  # two subclasses
    @given(st.integers(0, 2 ** 32), st.sampled_from([1, 7, 300, 5000, 20000]))
    def test_any_chunking(self, seed: int, largest: int) -> None:
        """The client's ciphertext cut anywhere (pieces of 1 byte to 20 KiB): the same replies, the same message."""
        rnd = random.Random(seed)

        def chunks(data: bytes) -> List[bytes]:
            out = []
            while data:
                n = rnd.randint(1, largest)
                out.append(data[:n])
                data = data[n:]
            return out

        hooks = Hooks()
        data = session(Wire(hooks), chunks)
        self.assertEqual(finals(data[:-len(b"<close_notify>")]), [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual([(m[0], m[1]) for m in hooks.messages], [("a@example.test", MESSAGE_BODY_LEN)])

    def test_pipelined_plaintext_discarded(self) -> None:
        """STARTTLS and MAIL in one read: MAIL never runs (CVE-2011-0411), under TLS the session starts afresh."""
        wire = Wire(Hooks())
        wire.feed(b"EHLO client.test\r\n")
        with capturedLogs() as events:
            wire.feed(b"STARTTLS\r\nMAIL FROM:<x@y.test>\r\n")
        self.assertTrue(wire.plain_reply().endswith(b"220 2.0.0 Ready to start TLS\r\n"))
        self.assertEqual([e["n"] for e in events if "discarded" in e.get("log_format", "")], [22])
        wire.client_tls()
        wire.handshake()
        wire.send(b"MAIL FROM:<x@y.test>\r\n")
        self.assertEqual(finals(wire.read()), [b"503"])

    def test_plaintext_after_starttls_breaks_the_handshake(self) -> None:
        """Plaintext in a later read is handshake data to OpenSSL: an alert, the connection closed, the error reported."""
        hooks = Hooks()
        wire = Wire(hooks)
        tls_events: List[Any] = []
        wire.server.observe("tls", lambda *args: tls_events.append(args))
        wire.starttls()
        wire.feed(b"MAIL FROM:<x@y.test>\r\n")
        self.assertTrue(wire.transport.disconnected)
        [reason] = wire.lost
        self.assertIsInstance(reason.value, SSL.Error)
        self.assertEqual(len(tls_events), 1)
        self.assertIn("wrong version number", str(tls_events[0][-1]))
        self.assertEqual(hooks.secure, [])
        self.assertEqual(wire.received(), b"")  # OpenSSL sends no alert for a non-TLS record; no plaintext either

    def test_refused_handshake_sends_the_alert(self) -> None:
        """No cipher in common: OpenSSL's handshake_failure alert goes out, then the connection closes."""
        wire = Wire(Hooks())
        tls_events: List[Any] = []
        wire.server.observe("tls", lambda *args: tls_events.append(args))
        wire.starttls()
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(b"CAMELLIA128-SHA")  # not among the server's
        client = SSL.Connection(ctx, None)
        client.set_connect_state()
        with pytest.raises(SSL.WantReadError):
            client.do_handshake()
        wire.feed(client.bio_read(1 << 16))
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, SSL.Error)
        self.assertIn("no shared cipher", str(tls_events[0][-1]))
        alert = wire.received()
        self.assertEqual(alert[:1], b"\x15")  # an alert record
        client.bio_write(alert)
        with pytest.raises(SSL.Error, match="handshake failure"):
            client.do_handshake()

    def test_handshake_timeout_aborts(self) -> None:
        """STARTTLS and then silence: the handshake timer aborts; reported as a lost connection, nothing sent."""
        from txsmtpsrv._tls import TLSConfig
        config = test_ca().server_config()
        wire = Wire(Hooks(), tls=TLSConfig(key=config.key, cert=config.cert, handshake_timeout=3.0))
        tls_events: List[Any] = []
        wire.server.observe("tls", lambda *args: tls_events.append(args))
        wire.starttls()
        wire.advance(2.9)
        self.assertFalse(wire.transport.disconnected)
        with capturedLogs():
            wire.advance(0.2)
        self.assertTrue(wire.transport.disconnected)
        [reason] = wire.lost
        self.assertIsInstance(reason.value, ConnectionLost)
        self.assertEqual([e[-1] for e in tls_events], [reason.getErrorMessage()])
        self.assertEqual(wire.received(), b"")

    def test_plaintext_before_the_handshake_waits(self) -> None:
        """The server shuts down during the handshake: its 421 goes out under TLS once the handshake ends, then close_notify."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.server.close()
        wire.pump()
        self.assertFalse(wire.transport.disconnected)
        self.assertEqual(wire.received(), b"")  # no plaintext byte after the 220
        wire.handshake()
        data = wire.read()
        self.assertTrue(data.startswith(b"421 "), data)
        self.assertTrue(data.endswith(b"<close_notify>"), data)
        self.assertTrue(wire.transport.disconnected)

    def test_abort_from_inside_the_handshake(self) -> None:
        """
        Twisted's SNI callback aborts a connection whose context lookup
        raised through the OpenSSL connection's app data (the layer): aborted,
        nothing more sent, no handshakeCompleted.
        """
        from txsmtpsrv import _tls

        def broken(self: Any, raw: Any) -> Any:
            raise RuntimeError("lookup failed")
        self.patch(_tls._ContextSet, "context_for_name", broken)
        hooks = Hooks()
        wire = Wire(hooks)
        wire.starttls()
        assert wire.tls is not None
        with pytest.raises(ssl.SSLWantReadError):
            wire.tls.do_handshake()
        wire.feed(wire.client_out())
        wire.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # Twisted's "while looking up SNI context"
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionLost)
        self.assertEqual(hooks.secure, [])
        self.assertEqual(wire.received(), b"")

    def test_close_before_the_handshake_with_nothing_to_say_aborts(self) -> None:
        """loseConnection mid-handshake with nothing written: abort (TLS has nothing to close cleanly)."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.transport.loseConnection()
        wire.advance(0)
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionLost)
        self.assertEqual(wire.received(), b"")

    def test_client_close_notify(self) -> None:
        """The client's close_notify: ours in answer, the connection ends (as with Twisted's layer)."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        wire.send(b"NOOP\r\n")
        self.assertEqual(finals(wire.read()), [b"250"])
        assert wire.tls is not None
        with pytest.raises(ssl.SSLWantReadError):
            wire.tls.unwrap()
        wire.feed(wire.client_out())
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionDone)
        wire.client_in()
        wire.tls.unwrap()  # our close_notify arrived: no exception now

    def test_fin_after_the_handshake_is_a_half_close(self) -> None:
        """TCP FIN without close_notify once TLS is up: the commands before it are answered, then close_notify."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        wire.send(b"NOOP\r\nNOOP\r\n")
        wire.fin()
        data = wire.read()
        self.assertEqual(finals(data[:-len(b"<close_notify>")]), [b"250", b"250"])
        self.assertTrue(data.endswith(b"<close_notify>"))
        self.assertTrue(wire.transport.disconnected)

    def test_fin_mid_message_stores_nothing(self) -> None:
        """A FIN (truncation) in the middle of a message: no 250, nothing stored, closed."""
        hooks = Hooks()
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.send(MESSAGE[:-3])
        wire.fin()
        self.assertNotIn(b"250 2.0.0", wire.read())
        self.assertEqual(hooks.messages, [])
        self.assertTrue(wire.transport.disconnected)

    def test_fin_during_the_handshake_ends_the_connection(self) -> None:
        wire = Wire(Hooks())
        wire.starttls()
        wire.fin()
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionLost)

    def test_truncated_connection(self) -> None:
        """The connection lost without close_notify mid-message: ConnectionLost, nothing stored."""
        hooks = Hooks()
        wire = Wire(hooks)
        wire.starttls()
        wire.handshake()
        wire.send(MESSAGE[:-3])
        wire.transport.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(wire.lost[0].value, ConnectionLost)
        self.assertEqual(hooks.messages, [])
        self.assertEqual(hooks.closed, 1)

    def test_corrupt_record(self) -> None:
        """A record whose authentication fails: an alert, the connection closed with OpenSSL's error."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        assert wire.tls is not None
        wire.tls.write(b"NOOP\r\n")
        record = bytearray(wire.client_out())
        record[-1] ^= 1
        wire.feed(bytes(record))
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, SSL.Error)
        self.assertEqual(wire.received()[:1], b"\x17")  # the alert (TLS 1.3: an encrypted record)

    def test_abort_sends_nothing_more(self) -> None:
        """abortConnection: what the protocol writes afterwards is never sent, nothing more is handed over."""
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        wire.read()
        wire.transport.abortConnection()
        wire.transport.write(b"250 late\r\n")
        self.assertEqual(wire.received(), b"")
        wire.advance(0)
        self.assertTrue(wire.transport.disconnected)
        self.assertIsInstance(wire.lost[0].value, ConnectionLost)


class RaisingWayDialogueTests(DialogueTests):
    """The same without asking the BIOs' fill (another pyOpenSSL): reads that raise WantReadError end the loops."""

    def setUp(self) -> None:
        self.patch(_tlslayer, "_held", None)


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


# --------------------------------------------------------------------------------------
# Over loopback, with the real reactor


class _Streaming:
    """A data hook that reads the body with pauses (resumed by the reactor) and hashes it as it comes."""

    def __init__(self) -> None:
        self.messages: List[Tuple[int, str]] = []
        self.pauses = 0

    def on_data(self, session: Any, stream: Any) -> Any:
        hooks = self
        done: defer.Deferred[None] = defer.Deferred()

        class Reader:
            def makeConnection(self, producer: Any) -> None:
                self.producer = producer
                self.digest = hashlib.sha256()
                self.size = 0

            def dataReceived(self, data: bytes) -> None:
                self.digest.update(data)
                self.size += len(data)
                if self.size // 65536 > (self.size - len(data)) // 65536:  # every 64 KiB: a pause
                    hooks.pauses += 1
                    self.producer.pauseProducing()
                    reactor.callLater(0.001, self.producer.resumeProducing)

            def connectionLost(self, reason: Failure) -> None:
                hooks.messages.append((self.size, self.digest.hexdigest()))
                done.callback(None)

        stream.deliver_body(Reader())
        return done


class LoopbackTests(unittest.TestCase):
    timeout = 120

    def serve(self, hooks: Any, endpoint: str = "tcp:0:interface=127.0.0.1", **options: Any) -> "defer.Deferred[int]":
        started = self.started = []
        original = self.original = getattr(self, "original", _tlslayer.start_tls)

        def counting(*args: Any) -> Any:
            layer = original(*args)
            started.append(layer)
            return layer
        self.patch(_tlslayer, "start_tls", counting)
        options.setdefault("name", "mx.test")
        options.setdefault("tls", test_ca().server_config())
        server = self.smtp_server = SMTPServer(hooks, disable_reverse_lookup=True, **options)
        self.addCleanup(server.close)
        description = listen_endpoint(reactor, endpoint, lambda: server.tls)
        return server.listen(description).addCallback(lambda port: port.getHost().port)

    def thread(self, f: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        return deferToThread(f, *args).addTimeout(60, reactor)

    @defer.inlineCallbacks
    def test_ten_mib_with_a_pausing_reader(self) -> None:
        """smtplib, STARTTLS, a 10 MiB message in 16 KiB records, a reader that pauses every 64 KiB: all of it, intact."""
        hooks = _Streaming()
        port = yield self.serve(hooks)
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_0123456789\r\n"
        body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line))

        def client() -> Any:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.starttls(context=test_ca().client_context())
                s.ehlo("client.test")
                return s.sendmail("a@example.test", ["b@example.test"], body)

        refused = yield self.thread(client)
        self.assertEqual(refused, {})
        self.assertEqual(hooks.messages, [(len(body), hashlib.sha256(body).hexdigest())])
        self.assertGreater(hooks.pauses, 100)
        self.assertEqual(len(self.started), 1)

    @defer.inlineCallbacks
    def test_nothing_kept_after_the_connections(self) -> None:
        """Twenty STARTTLS sessions come and go: no layer (nor what it holds) outlives them."""
        import gc

        from twisted.logger import globalLogBeginner, globalLogPublisher
        # Before logging begins (pytest), Twisted keeps every event, and so
        # every connection (an event's log_source), in a history buffer.
        history = getattr(globalLogBeginner, "_temporaryObserver", None)
        if history is not None:
            globalLogPublisher.removeObserver(history)
            self.addCleanup(globalLogPublisher.addObserver, history)
        port = yield self.serve(_Streaming())

        def client() -> None:
            for _ in range(20):
                with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                    s.starttls(context=test_ca().client_context())
                    s.ehlo("client.test")
                    s.noop()

        yield self.thread(client)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.started), 20)
        ours = {id(layer) for layer in self.started}
        del self.started[:]
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, _tlslayer.TLSLayer) and id(o) in ours]
        self.assertEqual(alive, [])

    @defer.inlineCallbacks
    def test_only_plain_tcp_takes_the_layer(self) -> None:
        """STARTTLS behind the PROXY wrapper keeps Twisted's layer; plain TCP takes ours."""
        for endpoint, expected in (("smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1", 0),
                                   ("tcp:0:interface=127.0.0.1", 1)):
            port = yield self.serve(_Streaming(), endpoint)

            def client(proxy: bool = expected == 0) -> int:
                with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
                    if proxy:
                        raw.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
                    s = smtplib.SMTP()
                    s._host = "localhost"
                    s.sock = raw
                    s.file = None
                    s.getreply()
                    s.ehlo("client.test")
                    s.starttls(context=test_ca().client_context())
                    s.ehlo("client.test")
                    code = s.noop()[0]
                    s.quit()
                    return code

            self.assertEqual((yield self.thread(client)), 250)
            self.assertEqual(len(self.started), expected, endpoint)

    @defer.inlineCallbacks
    def test_failures_reported_as_by_twisted(self) -> Any:
        """
        A failed, a stalled and an abandoned handshake: the "tls" observer
        event, the client's view and the on_close hook are the same on both
        layers.
        """
        def starttls(sock: socket.socket) -> None:
            sock.recv(1000)
            sock.sendall(b"EHLO client.test\r\n")
            time.sleep(0.05)
            sock.recv(1000)
            sock.sendall(b"STARTTLS\r\n")
            sock.recv(1000)

        yield compare_failed_handshakes(
            self, lambda hooks, tls: self.serve(hooks, tls=tls).addCallback(lambda port: (self.smtp_server, port)),
            starttls, b"MAIL FROM:<x@y.test>\r\n")
        self.assertEqual(len(self.started), 0)  # the last round ran on Twisted's layer


# --------------------------------------------------------------------------------------
# The existing loopback STARTTLS tests run on this layer (the default); the
# same tests again on Twisted's layer, which the PROXY wrapper still uses.


class TwistedLayerStartTLSTests(test_tls_dialogue.StartTLSTests):
    """tests/test_tls_dialogue.py's STARTTLS tests with C{ENABLED = False}."""

    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)


class TwistedLayerClientCertificateTests(test_tls_certificates.ClientCertificateTests):
    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)


class TwistedLayerHalfCloseTests(test_halfclose.TLSTests):
    """tests/test_halfclose.py's TLS half-close tests with C{ENABLED = False}."""

    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)
