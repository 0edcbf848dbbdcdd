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
import time
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import SMTPServer, _protocol

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
            self.patch(_protocol, "eligible", lambda transport: None)
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
