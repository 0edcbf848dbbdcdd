# -*- test-case-name: tests.test_tlslayer_dialogue -*-
"""
The lean STARTTLS layer (L{txsmtpsrv._tlslayer}): which connections take it,
and the SMTP dialogue through it, deterministically on a L{Wire}
(C{tests/_tlswire.py}): a message cut anywhere, the CVE-2011-0411 plaintext
defence, handshake failures and timeouts, close_notify, FIN, truncation,
corrupt records and aborts; all again with the BIO fill not asked.
"""

from __future__ import annotations

import random
import ssl
from typing import Any, Callable, List

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.tcp import Server
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.declarations import Provides

from tests._tlswire import MESSAGE, MESSAGE_BODY_LEN, Hooks, Wire, finals
from txsmtpsrv import _tlsconn, _tlslayer
from txsmtpsrv._tls import tls_info
from txsmtpsrv._testca import test_ca


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
