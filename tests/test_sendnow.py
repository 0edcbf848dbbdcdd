# -*- test-case-name: tests.test_sendnow -*-
"""
The reply writer (L{txsmtpsrv._sendnow}): a reply goes out on the socket at
once while the transport holds nothing, else through C{transport.write}.

First its logic with fakes (full, partial, refused and failed sends; what
qualifies for direct sending), then real clients over loopback with the
writer spied on, so that each test also proves which path its bytes took.
"""

from __future__ import annotations

import errno
import os
import shutil
import smtplib
import socket
import tempfile
import threading
import time
from io import BytesIO
from typing import Any, List, Optional, Tuple

import pytest
from twisted.internet import defer, reactor
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.ssl import CertificateOptions
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.mail.smtp import ESMTPSenderFactory
from twisted.protocols.policies import ThrottlingFactory, ThrottlingProtocol, WrappingFactory
from twisted.trial import unittest
from zope.interface import directlyProvides

from txsmtpsrv import SMTPServer, _sendnow
from txsmtpsrv._proxy import ProxyProtocolWrapper, ProxyWrappingFactory
from txsmtpsrv._sendnow import HeldReplyWriter, ReplyWriter, eligible

from tests._certs import unverified_client_context
from tests._memory import FakeSocket

# -- the writer's logic, with fakes -------------------------------------------------


def writer(sock: Any) -> Tuple[ReplyWriter, StringTransport]:
    transport = StringTransport()
    return ReplyWriter(transport, sock), transport


def test_whole_send_bypasses_the_transport() -> None:
    sock = FakeSocket()
    w, t = writer(sock)
    w.write(b"250 a\r\n")
    w.write(b"250 b\r\n")
    assert sock.sent == [b"250 a\r\n", b"250 b\r\n"]
    assert t.value() == b"" and w.direct


def test_partial_send_hands_the_rest_over_for_good() -> None:
    """The kernel took 3 bytes: the rest and everything after go through the transport, in order."""
    sock = FakeSocket(room=3)
    w, t = writer(sock)
    w.write(b"250 first\r\n")
    sock.room = 1000  # the socket would take more now: it must not overtake the queued rest
    w.write(b"250 second\r\n")
    assert sock.sent == [b"250"]
    assert t.value() == b" first\r\n250 second\r\n"
    assert not w.direct


@pytest.mark.parametrize("error", [BlockingIOError(errno.EAGAIN, "again"), BrokenPipeError(errno.EPIPE, "pipe"),
                                   ConnectionResetError(errno.ECONNRESET, "reset"), OSError(errno.EBADF, "closed")])
def test_refused_or_failed_send_falls_back(error: OSError) -> None:
    """EAGAIN, EPIPE, ECONNRESET, EBADF: all bytes to the transport (which sees the error itself)."""
    sock = FakeSocket(error=error)
    w, t = writer(sock)
    w.write(b"250 ok\r\n")
    sock.error = None
    w.write(b"221 bye\r\n")
    assert t.value() == b"250 ok\r\n221 bye\r\n"
    assert sock.sent == [] and not w.direct


def test_stop_and_no_socket_use_the_transport() -> None:
    sock = FakeSocket()
    w, t = writer(sock)
    w.stop()
    w.write(b"220 go ahead\r\n")
    assert sock.sent == [] and t.value() == b"220 go ahead\r\n"
    w2, t2 = writer(None)
    assert not w2.direct
    w2.write(b"x")
    assert t2.value() == b"x"


def test_empty_write_sends_nothing() -> None:
    sock = FakeSocket(room=0)
    w, t = writer(sock)
    w.write(b"")
    assert w.direct and t.value() == b""


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a
    a.close()
    b.close()


def test_eligible_plain_connection(pair: socket.socket) -> None:
    conn = Connection(pair, None, MemoryReactor())
    assert eligible(conn) is pair


def test_eligible_refuses_tls_blocking_and_foreign_transports(pair: socket.socket) -> None:
    conn = Connection(pair, None, MemoryReactor())
    directlyProvides(conn, ISSLTransport)  # what startTLS does to a tcp transport
    assert eligible(conn) is None
    blocking = Connection(pair, None, MemoryReactor())
    pair.setblocking(True)
    assert eligible(blocking) is None
    assert eligible(StringTransport()) is None  # no handle at all
    assert eligible(object()) is None


def test_eligible_through_wrappers(pair: socket.socket) -> None:
    """Our PROXY wrapper forwards writes untouched; any other wrapper (throttling, TLS) must see them."""
    conn = Connection(pair, None, MemoryReactor())
    proxied = ProxyProtocolWrapper(ProxyWrappingFactory(WrappingFactory(None), trusted=["127.0.0.0/8"]))
    proxied.transport = conn
    assert eligible(proxied) is pair
    directlyProvides(proxied, ISSLTransport)
    assert eligible(proxied) is None
    throttled = ThrottlingProtocol(ThrottlingFactory(WrappingFactory(None)), None)
    throttled.transport = conn
    assert eligible(throttled) is None


# -- real clients over loopback, with the writer spied on ------------------------------


class SpySocket:
    """Wraps the real socket: counts what went out directly and what the kernel refused."""

    def __init__(self, sock: socket.socket, log: "Spy") -> None:
        self._sock = sock
        self._log = log

    def send(self, data: bytes) -> int:
        try:
            n = self._sock.send(data)
        except OSError as e:
            self._log.refused.append(type(e).__name__)
            raise
        self._log.direct += 1
        if n < len(data):
            self._log.refused.append("partial")
        return n


class Spy:
    """Every ReplyWriter built while installed: direct sends, refusals, fallback writes."""

    def __init__(self, sndbuf: int = 0) -> None:
        self.sndbuf = sndbuf
        self.direct = 0
        self.fallback = 0
        self.refused: List[str] = []
        self.writers: List[ReplyWriter] = []
        self.writes: List[Tuple[bool, bytes]] = []  # (direct at the time, what)
        spy = self

        class Spying(ReplyWriter):
            __slots__ = ()

            def __init__(self, transport: Any, sock: Optional[socket.socket]) -> None:
                if sock is not None and spy.sndbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, spy.sndbuf)
                super().__init__(transport, SpySocket(sock, spy) if sock is not None else None)  # type: ignore[arg-type]
                spy.writers.append(self)

            def write(self, data: bytes) -> None:
                spy.writes.append((self.direct, data))
                if not self.direct:
                    spy.fallback += 1
                super().write(data)

        class SpyHeld(Spying, HeldReplyWriter):  # (a client on this host, on smtpsrv-epoll)
            __slots__ = ()

        self.cls = Spying
        self.held_cls = SpyHeld


class Recorder:
    def __init__(self) -> None:
        self.messages: List[Tuple[str, bytes, bool, str]] = []

    async def on_data(self, session: Any, stream: Any) -> None:
        body = await stream.content()
        self.messages.append((session.envelope.mail_from.address, body, session.secure, session.remote_address))


def read_replies(sock: socket.socket, count: int, deadline: float) -> List[bytes]:
    """Read until C{count} final reply lines (no continuation) arrived."""
    buf = b""
    lines: List[bytes] = []
    while len(lines) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(lines)} of {count} replies")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"EOF after {len(lines)} of {count} replies")
        buf += chunk
        *done, buf = buf.split(b"\r\n")
        lines.extend(line for line in done if line[3:4] == b" ")
    assert buf == b""
    return lines


def one_message(sock: socket.socket, sender: bytes, body: bytes, deadline: float) -> List[bytes]:
    """After the greeting: EHLO, one message from C{sender}, QUIT; the six replies."""
    sock.sendall(b"EHLO client.test\r\nMAIL FROM:<" + sender + b">\r\nRCPT TO:<r@example.test>\r\n"
                 b"DATA\r\n" + body + b"\r\n.\r\nQUIT\r\n")
    return read_replies(sock, 6, deadline)


class LoopbackTests(unittest.TestCase):
    timeout = 60

    def serve(self, spy: Spy, endpoint: str = "tcp:0:interface=127.0.0.1", **options: Any) -> "defer.Deferred[int]":
        self.patch(_sendnow, "ReplyWriter", spy.cls)
        self.patch(_sendnow, "HeldReplyWriter", spy.held_cls)
        self.hooks = Recorder()
        options.setdefault("name", "mx.test")
        server = SMTPServer(self.hooks, disable_reverse_lookup=True, **options)
        self.addCleanup(server.close)
        return server.listen(endpoint).addCallback(lambda port: getattr(port.getHost(), "port", 0))

    def thread(self, f: Any, *args: Any) -> "defer.Deferred[Any]":
        return deferToThread(f, *args).addTimeout(30, reactor)

    @defer.inlineCallbacks
    def test_smtplib_then_starttls(self) -> None:
        """Plain replies go out directly; after STARTTLS none does, and mail over TLS still arrives."""
        spy = Spy()
        port = yield self.serve(spy)

        def client() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.test")
                for i in range(5):
                    s.sendmail(f"plain{i}@example.test", ["b@example.test"], f"Subject: {i}\r\n\r\nplain\r\n")
                s.starttls(context=unverified_client_context())
                s.ehlo("client.test")
                for i in range(3):
                    s.sendmail(f"tls{i}@example.test", ["b@example.test"], f"Subject: {i}\r\n\r\ntls\r\n")

        yield self.thread(client)
        ready = [i for i, (_, data) in enumerate(spy.writes) if data.startswith(b"220 2.0.0")]
        self.assertEqual(len(ready), 1)
        # greeting, EHLO, 5 x (MAIL, RCPT, DATA, dot), then the 220 to STARTTLS: all directly ...
        self.assertEqual(ready[0], 2 + 5 * 4)
        self.assertTrue(all(direct for direct, _ in spy.writes[: ready[0] + 1]))
        self.assertEqual(spy.direct, ready[0] + 1)
        # ... and after it never a raw byte: EHLO, 3 x 4 replies, 221 through the TLS transport.
        self.assertEqual([direct for direct, _ in spy.writes[ready[0] + 1:]], [False] * (1 + 3 * 4 + 1))
        self.assertEqual([m[0] for m in self.hooks.messages],
                         [f"plain{i}@example.test" for i in range(5)] + [f"tls{i}@example.test" for i in range(3)])
        self.assertEqual([m[2] for m in self.hooks.messages], [False] * 5 + [True] * 3)
        self.assertEqual(spy.refused, [])
        self.assertFalse(spy.writers[0].direct)

    @defer.inlineCallbacks
    def test_twisted_client_starttls(self) -> None:
        """Twisted's ESMTP client insisting on TLS: plain EHLO replies, then STARTTLS, then the message."""
        spy = Spy()
        port = yield self.serve(spy)
        done: defer.Deferred[Any] = defer.Deferred()
        factory = ESMTPSenderFactory(None, None, "tw@example.test", ["r@example.test"],
                                     BytesIO(b"Subject: tw\n\nbody\n"), done, contextFactory=CertificateOptions(),
                                     requireAuthentication=False, requireTransportSecurity=True, retries=0)
        reactor.connectTCP("127.0.0.1", port, factory)
        result = yield done
        self.assertEqual(result[0], 1)
        self.assertEqual([(m[0], m[2]) for m in self.hooks.messages], [("tw@example.test", True)])
        self.assertEqual(spy.direct, 3)  # greeting, EHLO, the 220 to STARTTLS
        self.assertGreater(spy.fallback, 0)  # everything after went through the TLS transport

    @defer.inlineCallbacks
    def test_pipelined_burst_in_order(self) -> None:
        """Many pipelined commands and transactions in few writes: every reply, in order, coalesced."""
        spy = Spy()
        port = yield self.serve(spy, max_junk_commands=0)
        kinds = [(b"NOOP", b"250"), (b"VRFY someone", b"252"), (b"RSET", b"250"), (b"HELP", b"214")]
        n = 2000

        def client() -> List[bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                deadline = time.monotonic() + 20
                read_replies(s, 1, deadline)
                s.sendall(b"EHLO client.test\r\n")
                read_replies(s, 1, deadline)
                burst = b"".join(kinds[i % 4][0] + b"\r\n" for i in range(n))
                mails = b"".join(b"MAIL FROM:<m%d@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n"
                                 b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (i, i, i) for i in range(50))
                s.sendall(burst + mails + b"QUIT\r\n")
                replies = read_replies(s, n + 50 * 4 + 1, deadline)
                assert s.recv(100) == b""  # closed after the 221, nothing more
                return replies

        replies = yield self.thread(client)
        self.assertEqual([r[:3] for r in replies[:n]], [kinds[i % 4][1] for i in range(n)])
        self.assertEqual([r[:3] for r in replies[n:-1]], [b"250", b"250", b"354", b"250"] * 50)
        self.assertEqual(replies[-1][:3], b"221")
        self.assertEqual([m[0] for m in self.hooks.messages], [f"m{i}@example.test" for i in range(50)])
        # One send per read, not per command: far fewer sends than the 2,200 replies.
        self.assertLess(spy.direct, 400)
        self.assertEqual(spy.refused, [])

    @defer.inlineCallbacks
    def test_client_that_stops_reading(self) -> None:
        """
        The client pipelines without reading until the kernel's buffers are
        full: the writer falls back to the transport, the server stops
        reading (the transport pauses our producer), and once the client
        reads every reply arrives, in order, none lost.
        """
        spy = Spy(sndbuf=4096)
        port = yield self.serve(spy, max_junk_commands=0)
        n = 60000
        kinds = [(b"NOOP", b"250"), (b"VRFY someone", b"252")]

        def client() -> List[bytes]:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
                deadline = time.monotonic() + 30
                read_replies(s, 1, deadline)
                burst = b"".join(kinds[i % 2][0] + b"\r\n" for i in range(n)) + b"QUIT\r\n"
                sender = threading.Thread(target=s.sendall, args=(burst,), daemon=True)
                sender.start()
                while not spy.refused and time.monotonic() < deadline - 20:
                    time.sleep(0.01)  # not reading until the server had to queue
                replies = read_replies(s, n + 1, deadline)
                sender.join(10)
                return replies

        replies = yield self.thread(client)
        self.assertEqual([r[:3] for r in replies[:n]], [kinds[i % 2][1] for i in range(n)])
        self.assertEqual(replies[-1][:3], b"221")
        self.assertTrue(spy.refused)  # the kernel did refuse (EAGAIN or a partial send) ...
        self.assertGreater(spy.fallback, 0)  # ... and the transport took over from there
        self.assertFalse(spy.writers[0].direct)

    @defer.inlineCallbacks
    def test_half_close_gets_its_replies(self) -> None:
        """A client that sends its last commands and shuts its side down reads every reply, then EOF."""
        spy = Spy()
        port = yield self.serve(spy)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                deadline = time.monotonic() + 10
                read_replies(s, 1, deadline)
                s.sendall(b"EHLO client.test\r\nNOOP\r\nMAIL FROM:<a@example.test>\r\n")
                s.shutdown(socket.SHUT_WR)
                data = b""
                while time.monotonic() < deadline:
                    chunk = s.recv(4096)
                    if not chunk:
                        return data
                    data += chunk
                raise AssertionError("no EOF")

        data = yield self.thread(client)
        finals = [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(finals, [b"250", b"250", b"250"])
        self.assertEqual(spy.refused, [])

    @defer.inlineCallbacks
    def test_through_the_proxy_wrapper(self) -> None:
        """Behind our PROXY wrapper replies go out directly too, and the client is the proxied one."""
        spy = Spy()
        port = yield self.serve(spy, endpoint="smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1")

        def client() -> List[bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
                deadline = time.monotonic() + 10
                read_replies(s, 1, deadline)
                return one_message(s, b"p@example.test", b"Subject: p\r\n\r\nproxied", deadline)

        replies = yield self.thread(client)
        self.assertEqual([r[:3] for r in replies], [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual([(m[0], m[3]) for m in self.hooks.messages], [("p@example.test", "192.0.2.7")])
        self.assertGreaterEqual(spy.direct, 2)
        self.assertEqual(spy.fallback, 0)

    @defer.inlineCallbacks
    def test_unix_socket(self) -> None:
        """An AF_UNIX listener (LMTP in front of a store, say) gets direct replies too."""
        spy = Spy()
        directory = tempfile.mkdtemp(prefix="txsmtpsrv-sendnow-")  # short: AF_UNIX paths are limited
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s")
        yield self.serve(spy, endpoint=f"unix:{path}")

        def client() -> List[bytes]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(path)
                deadline = time.monotonic() + 10
                read_replies(s, 1, deadline)
                return one_message(s, b"u@example.test", b"Subject: u\r\n\r\nunix", deadline)

        replies = yield self.thread(client)
        self.assertEqual([r[:3] for r in replies], [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual([m[0] for m in self.hooks.messages], ["u@example.test"])
        self.assertGreaterEqual(spy.direct, 2)
        self.assertEqual(spy.fallback, 0)
