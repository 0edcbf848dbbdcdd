# -*- test-case-name: tests.test_tlsflight -*-
"""
What the lean TLS layer (L{txsmtpsrv._tlslayer}) sends for one read leaves
in one send: OpenSSL's handshake messages and TLS 1.3 session tickets, the
implicit-TLS greeting, the replies, our close_notify.

Why it matters (C{bench/README.md}, tls16 section, "the full implicit-TLS
handshake"): sent one by one, the session tickets went out and then the
greeting, two small segments; under Nagle (Twisted does not set
C{TCP_NODELAY} on server sockets) the second waited for the client's ACK of
the first, which a client waiting for the greeting delays (40 ms on Linux):
a full implicit-TLS connection took ~11.5 ms instead of ~1.5 ms and its
server spent 25-45 % more CPU (an idle, cache-cold server per handshake).
Twisted's layer wrote both in one send (its writes wait for the reactor).

The sends are counted where the layer makes them (its C{ReplyWriter}, one
C{write} per send on the socket), on a real C{tcp.Server} whose reactor is
the test (L{tests._tlswire.Wire}); the client is Python's C{ssl} over
memory BIOs and is handed one send at a time, so "the greeting is in the
same send as the tickets" is checked by decrypting that send alone.
"""

from __future__ import annotations

import ssl
from typing import List, Optional

from twisted.trial import unittest

from tests._tlswire import Hooks, Wire, finals
from txsmtpsrv import _tlsimplicit, _tlslayer
from txsmtpsrv._sendnow import ReplyWriter
from txsmtpsrv._testca import test_ca


class _Sends:
    """Every send the lean layer makes (its ReplyWriter's writes), in order."""

    def __init__(self, case: unittest.SynchronousTestCase) -> None:
        self.sends: List[bytes] = []
        sends = self.sends

        class Recording(ReplyWriter):
            __slots__ = ()

            def write(self, data: bytes) -> None:
                sends.append(data)
                ReplyWriter.write(self, data)
        case.patch(_tlslayer, "ReplyWriter", Recording)

    def since(self, mark: int) -> List[bytes]:
        return self.sends[mark:]


class ImplicitWire(Wire):
    """L{Wire}, but the connection starts implicit TLS when it is made, as C{smtps:tcp:} does."""

    def start(self) -> None:
        """Start the lean layer at once, as the factory of C{smtps:tcp:} does (what is counted is its sends)."""
        factory = _tlsimplicit.ImplicitTLSFactory(self.server.tls, self.server)
        _tlsimplicit._Start(factory, self.protocol).makeConnection(self.transport)
        assert isinstance(self.transport.protocol, _tlslayer.TLSLayer)  # the lean layer took it

    def client_step(self) -> bool:
        """The client's handshake step: send what it wrote; whether its handshake is done."""
        assert self.tls is not None
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        out = self.client_out()
        if out:
            self.feed(out)
        return done

    def decrypt(self, data: bytes) -> bytes:
        """What the client reads from C{data} (one send) alone."""
        self.incoming.write(data)
        return self.plaintext()


def full_handshake(case: unittest.SynchronousTestCase, wire: ImplicitWire, sends: _Sends,
                   context: Optional[ssl.SSLContext] = None,
                   session: Optional[ssl.SSLSession] = None) -> List[bytes]:
    """
    The handshake, the client handed the server's flights; the sends made
    for its Finished (taken off the client's socket: not read yet).
    """
    context = context or test_ca().client_context()
    wire.tls = context.wrap_bio(wire.incoming, wire.outgoing, server_hostname="localhost", session=session)
    case.assertFalse(wire.client_step())  # ClientHello
    flight = sends.since(0)
    case.assertEqual(len(flight), 1, "ServerHello .. Finished: one send")
    case.assertEqual(wire.received(), flight[0])
    wire.incoming.write(flight[0])
    mark = len(sends.sends)
    case.assertTrue(wire.client_step())  # the client's Finished
    after = sends.since(mark)
    case.assertEqual(wire.received(), b"".join(after))
    return after


class ImplicitHandshakeFlightTests(unittest.SynchronousTestCase):
    def test_tickets_and_greeting_in_one_send(self) -> None:
        """
        After the client's Finished: one send holding the TLS 1.3 session
        tickets and the 220 greeting (it was two: tickets, then greeting).
        """
        sends = _Sends(self)
        wire = ImplicitWire(Hooks())
        after = full_handshake(self, wire, sends)
        self.assertEqual(len(after), 1, [len(s) for s in after])
        greeting = wire.decrypt(after[0])
        self.assertEqual(finals(greeting), [b"220"])
        assert wire.tls is not None and wire.tls.session is not None
        self.assertTrue(wire.tls.session.has_ticket)  # the tickets came in the same send
        self.assertEqual(wire.tls.version(), "TLSv1.3")

    def test_resumed_handshake_in_one_send_too(self) -> None:
        """A resumed handshake (the ticket of a first connection): tickets and greeting in one send."""
        sends = _Sends(self)
        context = test_ca().client_context()
        first = ImplicitWire(Hooks())
        first.decrypt(b"".join(full_handshake(self, first, sends, context)))
        assert first.tls is not None and first.tls.session is not None
        ticket = first.tls.session
        sends.sends.clear()
        wire = ImplicitWire(server=first.server)
        after = full_handshake(self, wire, sends, context, ticket)
        assert wire.tls is not None
        self.assertTrue(wire.tls.session_reused)
        self.assertEqual(len(after), 1, [len(s) for s in after])
        self.assertEqual(finals(wire.decrypt(after[0])), [b"220"])

    def test_command_with_the_finished_answered_in_the_same_send(self) -> None:
        """The client's Finished and its EHLO in one read: tickets, greeting and the EHLO reply in one send."""
        sends = _Sends(self)
        wire = ImplicitWire(Hooks())
        wire.tls = test_ca().client_context().wrap_bio(wire.incoming, wire.outgoing, server_hostname="localhost")
        self.assertFalse(wire.client_step())
        wire.incoming.write(wire.received())
        mark = len(sends.sends)
        wire.tls.do_handshake()  # the client's Finished, not yet sent
        wire.tls.write(b"EHLO client.test\r\n")
        wire.feed(wire.client_out())  # one read: Finished + EHLO
        after = sends.since(mark)
        self.assertEqual(len(after), 1, [len(s) for s in after])
        self.assertEqual(finals(wire.decrypt(after[0])), [b"220", b"250"])

    def test_raising_way_still_works(self) -> None:
        """Without the BIO's fill (another pyOpenSSL; the flush that reads until WantReadError): the same."""
        self.patch(_tlslayer, "_held", None)
        sends = _Sends(self)
        wire = ImplicitWire(Hooks())
        after = full_handshake(self, wire, sends)
        self.assertEqual(len(after), 1, [len(s) for s in after])
        self.assertEqual(finals(wire.decrypt(after[0])), [b"220"])
        mark = len(sends.sends)
        wire.send(b"NOOP\r\nQUIT\r\n")
        self.assertEqual(len(sends.since(mark)), 1)
        self.assertEqual(finals(wire.read()[:-len(b"<close_notify>")]), [b"250", b"221"])


class ReadFlightTests(unittest.SynchronousTestCase):
    """After the handshake (also STARTTLS): what one read makes leaves in one send."""

    def ready(self, sends: _Sends) -> ImplicitWire:
        wire = ImplicitWire(Hooks(), max_junk_commands=0)  # (NOOPs without end are fine here)
        after = full_handshake(self, wire, sends)
        wire.decrypt(b"".join(after))
        return wire

    def test_quit_reply_and_close_notify_in_one_send(self) -> None:
        """QUIT: the 221 and our close_notify leave together (they were two sends; the second waited under Nagle)."""
        sends = _Sends(self)
        wire = self.ready(sends)
        mark = len(sends.sends)
        wire.send(b"QUIT\r\n")
        after = sends.since(mark)
        self.assertEqual(len(after), 1, [len(s) for s in after])
        got = wire.decrypt(after[0])
        self.assertEqual(finals(got[:-len(b"<close_notify>")]), [b"221"])
        self.assertTrue(got.endswith(b"<close_notify>"))
        self.assertTrue(wire.transport.disconnecting or wire.transport.disconnected)

    def test_starttls_quit_in_one_send(self) -> None:
        """The same after STARTTLS (the layer is the same): 221 and close_notify in one send."""
        sends = _Sends(self)
        wire = Wire(Hooks())
        wire.starttls()
        wire.handshake()
        wire.read()
        mark = len(sends.sends)
        wire.send(b"NOOP\r\nQUIT\r\n")
        after = sends.since(mark)
        self.assertEqual(len(after), 1, [len(s) for s in after])
        self.assertEqual(finals(wire.read()[:-len(b"<close_notify>")]), [b"250", b"221"])

    def test_written_before_an_abort_still_goes(self) -> None:
        """A reply written in a read and then an abort: the reply is sent (as it was when sent at once), then nothing."""
        sends = _Sends(self)
        wire = self.ready(sends)
        transport = wire.transport

        def answer_and_abort(data: bytes) -> None:
            transport.write(b"421 bye\r\n")
            transport.abortConnection()
            transport.write(b"250 late\r\n")
        wire.protocol.dataReceived = answer_and_abort  # type: ignore[method-assign]
        wire.send(b"NOOP\r\n")
        self.assertEqual(wire.decrypt(wire.received()), b"421 bye\r\n")

    def test_much_output_is_not_held_to_the_end_of_the_read(self) -> None:
        """
        Output past _HOLD bytes in one read leaves at once (a full socket must
        still pause the protocol while it answers a long pipeline); what
        follows is held again until the read ends.
        """
        sends = _Sends(self)
        wire = self.ready(sends)
        transport = wire.transport
        mark = len(sends.sends)
        seen: List[int] = []
        piece = b"x" * (_tlslayer._HOLD * 2 // 3)

        def answer(data: bytes) -> None:
            for _ in range(5):
                transport.write(piece)
                seen.append(len(sends.since(mark)))
        wire.protocol.dataReceived = answer  # type: ignore[method-assign]
        wire.send(b"NOOP\r\n")
        self.assertEqual(seen, [0, 1, 1, 2, 2])
        self.assertEqual(len(sends.since(mark)), 3)  # the fifth piece at the end of the read
        self.assertEqual(wire.decrypt(wire.received()), piece * 5)
