# -*- test-case-name: tests.test_halfclose -*-
"""
Clients that half-close: they send their last commands, shut down their
sending side (C{shutdown(SHUT_WR)}) and read the replies until EOF. Over
loopback, with real sockets: every reply the commands earn arrives, also
those written after Twisted saw the end of input (after a hook that answers
later, a data hook that stores the message later), then the server closes.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests._support import tool_path
from txsmtpsrv import SMTPServer, _sendnow, _tlslayer
from txsmtpsrv._halfclose import ForwardsHalfClose, half_closeable, pass_half_close_through_tls, tls_layer
from txsmtpsrv._testca import test_ca
from txsmtpsrv._sharedports import listen_endpoint

#: Seconds every client waits at most (far below the server's socket_timeout).
DEADLINE = 10.0


class LateHooks:
    """Hooks that answer a little later, through the reactor (as a database or a DNS lookup would)."""

    delay = 0.05

    def __init__(self) -> None:
        self.messages: List[Tuple[str, bytes]] = []
        self.closed: List[str] = []

    def _later(self, value: Any = None) -> "defer.Deferred[Any]":
        return task.deferLater(reactor, self.delay, lambda: value)

    def on_mail_from(self, session: Any, address: Any) -> "defer.Deferred[Any]":
        return self._later()

    def on_rcpt_to(self, session: Any, address: Any) -> "defer.Deferred[Any]":
        return self._later()

    async def on_data(self, session: Any, stream: Any) -> None:
        body = await stream.content()
        await self._later()
        self.messages.append((session.envelope.mail_from.address, body))

    def on_close(self, session: Any) -> None:
        self.closed.append(session.id)


def finals(data: bytes) -> List[bytes]:
    """The codes of the final reply lines (not continuations), the greeting excluded."""
    lines = [line for line in data.split(b"\r\n") if line[3:4] == b" "]
    assert lines and lines[0].startswith(b"220"), data
    return [line[:3] for line in lines[1:]]


def half_close(connect: Any, commands: bytes, wait_greeting: bool = True) -> Tuple[bytes, float]:
    """
    Connect, send C{commands}, shut down the sending side, read until EOF.
    Returns everything read (the greeting included) and the seconds from
    the shutdown to the EOF.
    """
    sock = connect()
    with sock:
        sock.settimeout(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        data = b""
        if wait_greeting:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                assert chunk, "EOF before the greeting"
                data += chunk
        sock.sendall(commands)
        sock.shutdown(socket.SHUT_WR)
        shut = time.monotonic()
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return data, time.monotonic() - shut
            data += chunk
        raise AssertionError(f"no EOF within {DEADLINE}s; read {data!r}")


MESSAGE = (b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
           b"Subject: half\r\n\r\nclosed\r\n.\r\n")


class PlainTCPTests(unittest.TestCase):
    """
    Plain TCP, replies sent directly on the socket while its buffer has
    room (L{txsmtpsrv._sendnow}): the cases a half-closing client meets.
    """

    timeout = 60
    direct = True

    def serve(self, endpoint: str = "tcp:0:interface=127.0.0.1", **options: Any) -> "defer.Deferred[int]":
        if not self.direct:
            self.patch(_sendnow, "eligible", lambda transport: None)
        self.hooks = LateHooks()
        options.setdefault("name", "mx.test")
        options.setdefault("socket_timeout", 30)
        server = SMTPServer(self.hooks, disable_reverse_lookup=True, **options)
        self.addCleanup(server.close)
        return server.listen(endpoint).addCallback(lambda port: port.getHost().port)

    def run_client(self, port: int, commands: bytes, **kw: Any) -> "defer.Deferred[Tuple[bytes, float]]":
        return deferToThread(half_close, lambda: socket.create_connection(("127.0.0.1", port)), commands,
                             **kw).addTimeout(30, reactor)

    @defer.inlineCallbacks
    def test_replies_after_asynchronous_hooks(self) -> None:
        """MAIL and RCPT answered later: both replies arrive after the client's EOF, then the server's."""
        port = yield self.serve()
        data, _ = yield self.run_client(port, b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n"
                                              b"RCPT TO:<b@example.test>\r\n")
        self.assertEqual(finals(data), [b"250", b"250", b"250"])

    @defer.inlineCallbacks
    def test_message_stored_later_gets_its_250(self) -> None:
        """A whole message, then the half-close without QUIT: the data hook stores it later; the 250 arrives."""
        port = yield self.serve()
        data, _ = yield self.run_client(port, MESSAGE)
        self.assertEqual(finals(data), [b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual(self.hooks.messages, [("a@example.test", b"Subject: half\r\n\r\nclosed\r\n")])

    @defer.inlineCallbacks
    def test_pipelined_transactions_and_quit(self) -> None:
        """Two pipelined messages and QUIT behind asynchronous hooks: every reply, in order, then 221."""
        port = yield self.serve()
        second = MESSAGE.replace(b"EHLO client.test\r\n", b"").replace(b"a@example", b"c@example")
        data, _ = yield self.run_client(port, MESSAGE + second + b"QUIT\r\n")
        self.assertEqual(finals(data), [b"250", b"250", b"250", b"354", b"250",
                                        b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test", "c@example.test"])

    @defer.inlineCallbacks
    def test_idle_half_close_closes_at_once(self) -> None:
        """Nothing pending: the replies go out and the server closes at once, not after socket_timeout."""
        port = yield self.serve()
        data, waited = yield self.run_client(port, b"EHLO client.test\r\nNOOP\r\n")
        self.assertEqual(finals(data), [b"250", b"250"])
        self.assertLess(waited, 5.0)  # socket_timeout is 30 s

    @defer.inlineCallbacks
    def test_half_close_in_the_middle_of_a_message(self) -> None:
        """The end of the message can never come: no 250, nothing stored, the connection closed at once."""
        port = yield self.serve()
        data, waited = yield self.run_client(port, MESSAGE[:-len(b".\r\n")])
        self.assertEqual(finals(data), [b"250", b"250", b"250", b"354"])
        self.assertEqual(self.hooks.messages, [])
        self.assertLess(waited, 5.0)

    @defer.inlineCallbacks
    def test_half_close_between_bdat_chunks(self) -> None:
        """BDAT without LAST, then EOF: the chunk's 250 arrives, the message is discarded."""
        port = yield self.serve()
        data, waited = yield self.run_client(port, b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n"
                                                   b"RCPT TO:<b@example.test>\r\nBDAT 4\r\nabcd")
        self.assertEqual(finals(data), [b"250", b"250", b"250", b"250"])
        self.assertEqual(self.hooks.messages, [])
        self.assertLess(waited, 5.0)

    @defer.inlineCallbacks
    def test_through_the_proxy_wrapper(self) -> None:
        """Behind the PROXY wrapper (HAProxy forwards the client's FIN) the wrapped protocol is told too."""
        port = yield self.serve(endpoint="smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1")
        data, _ = yield self.run_client(port, b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n" + MESSAGE,
                                        wait_greeting=False)
        self.assertEqual(finals(data), [b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])

    @defer.inlineCallbacks
    def test_proxy_header_incomplete(self) -> None:
        """EOF before the PROXY header is complete: closed at once, no session."""
        port = yield self.serve(endpoint="smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1")

        def client() -> Tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
                sock.sendall(b"PROXY TCP4 192.0.2.7")
                sock.shutdown(socket.SHUT_WR)
                start = time.monotonic()
                return sock.recv(4096), time.monotonic() - start

        data, waited = yield deferToThread(client).addTimeout(30, reactor)
        self.assertEqual((data, self.hooks.closed), (b"", []))
        self.assertLess(waited, 4.0)  # not the header timeout (5 s)


class NetcatTests(unittest.TestCase):
    """A real client nobody here wrote: OpenBSD netcat's C{-N} shuts the socket down after stdin's EOF."""

    timeout = 60

    def test_netcat_gets_every_reply(self) -> Any:
        """Replies sent directly on the socket."""
        return self.netcat()

    def test_netcat_through_the_transport(self) -> Any:
        """Every reply queued in Twisted's transport (on main the last ones were dropped at nc's FIN)."""
        self.patch(_sendnow, "eligible", lambda transport: None)
        return self.netcat()

    @defer.inlineCallbacks
    def netcat(self) -> Any:
        nc = tool_path("nc.openbsd")
        self.hooks = LateHooks()
        server = SMTPServer(self.hooks, disable_reverse_lookup=True, name="mx.test", socket_timeout=30)
        self.addCleanup(server.close)
        port = (yield server.listen("tcp:0:interface=127.0.0.1")).getHost().port
        start = time.monotonic()
        done = yield deferToThread(subprocess.run, [nc, "-N", "127.0.0.1", str(port)], input=MESSAGE,
                                   capture_output=True, timeout=20).addTimeout(30, reactor)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(finals(done.stdout), [b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])
        self.assertLess(time.monotonic() - start, 10.0)  # nc exits because the server closed, not a timeout


class TransportWriteTests(PlainTCPTests):
    """
    The same with every reply written through Twisted's transport, as after
    the socket's buffer once filled up, or behind a transport wrapper: a
    reply queued there when the end of input is read used to be dropped
    with the socket.
    """

    direct = False

    @defer.inlineCallbacks
    def test_synchronous_replies_queued_before_the_end_of_input(self) -> None:
        """Replies made in the read that carried the commands, still queued when the EOF is read."""
        port = yield self.serve()
        self.hooks.on_mail_from = lambda session, address: None  # type: ignore[method-assign]
        data, _ = yield self.run_client(port, b"EHLO client.test\r\nNOOP\r\nMAIL FROM:<a@example.test>\r\n")
        self.assertEqual(finals(data), [b"250", b"250", b"250"])


# -- TLS --------------------------------------------------------------------------------


class TLSClient:
    """
    A TLS client over a plain socket through memory BIOs, so that it can
    shut down the socket's sending side (a TCP FIN, no TLS close_notify) and
    go on reading TLS records, or send close_notify first.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.eof = False

    def _pump_out(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pump_in(self) -> None:
        chunk = self.sock.recv(65536)
        if chunk:
            self.incoming.write(chunk)
        else:
            self.eof = True
            self.incoming.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._pump_out()
                return
            except ssl.SSLWantReadError:
                self._pump_out()
                self._pump_in()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._pump_out()

    def read_all(self) -> bytes:
        """Application data until the server closes (close_notify or EOF)."""
        data = b""
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    return data
                data += chunk
            except ssl.SSLWantReadError:
                if self.eof:
                    return data
                self._pump_in()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return data


def read_reply(sock: socket.socket) -> bytes:
    """One plain reply (before TLS), up to its final line."""
    data = b""
    while not any(line[3:4] == b" " for line in data.split(b"\r\n")):
        chunk = sock.recv(4096)
        assert chunk, f"EOF in a reply: {data!r}"
        data += chunk
    return data


def tls_half_close(port: int, commands: bytes, starttls: bool, close_notify: bool = False,
                   proxy: bool = False) -> Tuple[bytes, float]:
    """
    Over TLS (STARTTLS, or implicit TLS from the first byte): send
    C{commands}, shut down the sending side (after a TLS close_notify with
    C{close_notify}), read the application data until the server closes.
    Returns the greeting and the replies under TLS, and the seconds from
    the shutdown to the end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        if proxy:
            sock.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
        head = b""
        if starttls:
            head = read_reply(sock)
            sock.sendall(b"EHLO client.test\r\n")
            read_reply(sock)
            sock.sendall(b"STARTTLS\r\n")
            assert read_reply(sock).startswith(b"220 ")
        client = TLSClient(sock, test_ca().client_context())
        client.handshake()
        if not starttls:
            head = b""
            while b"\r\n" not in head:
                try:
                    head += client.tls.read(4096)
                except ssl.SSLWantReadError:  # (bytes in the BIO can be a session ticket: no data)
                    client._pump_in()
        client.send(commands)
        if close_notify:
            try:
                client.tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            client._pump_out()
        sock.shutdown(socket.SHUT_WR)
        shut = time.monotonic()
        data = client.read_all()
        return head + data, time.monotonic() - shut


class TLSTests(unittest.TestCase):
    """Half-closing under TLS: the client's FIN arrives under the TLS layer."""

    timeout = 60

    def serve(self, implicit: bool, proxy: bool = False) -> "defer.Deferred[int]":
        self.hooks = LateHooks()
        server = SMTPServer(self.hooks, disable_reverse_lookup=True, name="mx.test", socket_timeout=30,
                            tls=test_ca().server_config())
        self.addCleanup(server.close)
        description = ("smtps:" if implicit else "") + ("smtpproxy:trusted=127.0.0.0/8:timeout=5:" if proxy else "")
        endpoint = listen_endpoint(reactor, description + "tcp:0:interface=127.0.0.1", lambda: server.tls)
        return server.listen(endpoint).addCallback(lambda port: port.getHost().port)

    @defer.inlineCallbacks
    def session(self, commands: bytes, implicit: bool = False, proxy: bool = False,
                close_notify: bool = False) -> Any:
        port = yield self.serve(implicit, proxy)
        data, waited = yield deferToThread(tls_half_close, port, commands, not implicit, close_notify,
                                           proxy).addTimeout(30, reactor)
        self.assertLess(waited, 5.0)  # closed promptly: socket_timeout is 30 s
        return finals(data)

    @defer.inlineCallbacks
    def test_starttls(self) -> Any:
        """After STARTTLS, a message, then a TCP FIN: the 250 (written after the data hook) arrives."""
        codes = yield self.session(MESSAGE)
        self.assertEqual(codes, [b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> Any:
        """The same on an smtps: listener (TLS from the first byte)."""
        codes = yield self.session(MESSAGE, implicit=True)
        self.assertEqual(codes, [b"250", b"250", b"250", b"354", b"250"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["a@example.test"])

    @defer.inlineCallbacks
    def test_starttls_behind_the_proxy_wrapper(self) -> Any:
        """PROXY header, STARTTLS, a message, FIN: the TLS layer tells the wrapper, which tells the session."""
        codes = yield self.session(MESSAGE, proxy=True)
        self.assertEqual(codes, [b"250", b"250", b"250", b"354", b"250"])

    @defer.inlineCallbacks
    def test_implicit_tls_behind_the_proxy_wrapper(self) -> Any:
        """smtps: over smtpproxy: (the wrapper under the TLS layer) passes the FIN up through both."""
        codes = yield self.session(MESSAGE, implicit=True, proxy=True)
        self.assertEqual(codes, [b"250", b"250", b"250", b"354", b"250"])

    @defer.inlineCallbacks
    def test_idle_closes_tcp_too(self) -> Any:
        """
        Nothing pending: the server closes at once. Its TLS layer alone would
        wait for the client's close_notify, which cannot come any more.
        """
        codes = yield self.session(b"NOOP\r\n")
        self.assertEqual(codes, [b"250"])

    @defer.inlineCallbacks
    def test_in_the_middle_of_a_message(self) -> Any:
        """No end of message can come: no 250, nothing stored, closed at once."""
        codes = yield self.session(MESSAGE[:-len(b".\r\n")], implicit=True)
        self.assertEqual(codes, [b"250", b"250", b"250", b"354"])
        self.assertEqual(self.hooks.messages, [])

    @defer.inlineCallbacks
    def test_close_notify_before_the_fin_still_closes(self) -> Any:
        """
        A TLS close_notify before the FIN: on Twisted's layer
        (C{TwistedLayerHalfCloseTests}) the connection is shut down at once
        (replies still to come are lost); the lean layer answers first
        (C{tests/test_tls_closenotify.py}). Either way it ends promptly.
        """
        codes = yield self.session(b"NOOP\r\n", close_notify=True)
        if _tlslayer.ENABLED:  # the lean layer (STARTTLS on plain TCP): the NOOP is answered
            self.assertEqual(codes, [b"250"])
        else:  # (its reply is lost or not, as the reads fall)
            self.assertIn(codes, ([], [b"250"]))


# -- the pieces, in memory ------------------------------------------------------------------


class _Forwarder(ForwardsHalfClose, ProtocolWrapper):
    """A wrapper that forwards the half-close, like the PROXY wrapper."""


class _Ends(Protocol):
    def __init__(self) -> None:
        self.ended = 0

    def readConnectionLost(self) -> None:
        self.ended += 1

    def writeConnectionLost(self) -> None:
        pass


def test_wrapper_above_ours_does_not_bounce_the_half_close_back():
    """
    Twisted's ProtocolWrapper copies its transport's interfaces: above a
    half-closeable wrapper it claims IHalfCloseableProtocol without handling
    it (its missing methods are looked up on its transport). Forwarding to it
    would recurse; it is treated as not half-closeable and the connection
    closes instead.
    """
    outer = _Forwarder(WrappingFactory(Factory()), Protocol())
    inner = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
    outer.wrappedProtocol = inner
    transport = StringTransport()
    outer.makeConnection(transport)
    inner.makeConnection(outer)
    assert IHalfCloseableProtocol.providedBy(inner)  # the trap
    assert not half_closeable(inner)
    outer.readConnectionLost()
    assert transport.disconnecting


def test_forwarder_tells_a_half_closeable_protocol():
    ends = _Ends()
    from zope.interface import alsoProvides
    alsoProvides(ends, IHalfCloseableProtocol)
    wrapper = _Forwarder(WrappingFactory(Factory()), ends)
    transport = StringTransport()
    wrapper.makeConnection(transport)
    wrapper.readConnectionLost()
    assert ends.ended == 1 and not transport.disconnecting


def test_no_tls_layer_no_change():
    """Plain transports have no TLS layer: nothing is patched."""
    transport = StringTransport()
    assert tls_layer(transport) is None
    pass_half_close_through_tls(transport)
    assert not IHalfCloseableProtocol.providedBy(transport)
