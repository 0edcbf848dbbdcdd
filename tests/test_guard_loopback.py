# -*- test-case-name: tests.test_guard_loopback -*-
"""
The abuse limits over real sockets: clients bound to different loopback
source addresses (127.0.0.2, 127.0.0.3 ...: all of 127.0.0.0/8 is local)
show that one address hitting a limit does not affect another. Clients
are Python's smtplib and ssl (a real TLS ClientHello) and raw sockets;
every loop is bounded in count, every socket has a timeout.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from typing import Any, List

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import SMTPError, SMTPServer

from tests._certs import unverified_client_context

PASSWORD = "tiger"


class Hooks:
    def __init__(self) -> None:
        self.messages = 0

    def on_auth(self, session: Any, credentials: Any) -> Any:
        if credentials.password == PASSWORD:
            return credentials.username
        raise SMTPError(535, "Authentication credentials invalid", "5.7.8")

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.content()
        self.messages += 1


def raw(port: int, source: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return s


def read_reply(s: socket.socket) -> bytes:
    """One reply (all its lines), or what came before EOF."""
    data = b""
    while True:
        chunk = s.recv(4096)
        data += chunk
        if not chunk or (data.endswith(b"\r\n") and data.split(b"\r\n")[-2][3:4] == b" "):
            return data


def send_ok(port: int, source: str) -> int:
    """A normal client from C{source}: connect, EHLO, send a message; the final code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as c:
        c.ehlo("client.test")
        c.sendmail("a@example.test", ["b@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
        return c.noop()[0]


class GuardLoopback(unittest.TestCase):

    @defer.inlineCallbacks
    def start(self, **options: Any) -> Any:
        self.hooks = Hooks()
        options.setdefault("allow_insecure_auth", True)
        options.setdefault("auth_optional", True)
        self.server = SMTPServer(self.hooks, name="mx.test", disable_reverse_lookup=True, **options)
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    @defer.inlineCallbacks
    def test_max_clients_per_ip(self):
        yield self.start(max_clients_per_ip=3)
        held: List[socket.socket] = []

        def flood() -> List[bytes]:
            greetings = []
            for _ in range(10):  # bounded: 3 admitted, 7 refused
                s = raw(self.port, "127.0.0.2")
                held.append(s)
                greetings.append(read_reply(s))
            return greetings

        try:
            greetings = yield deferToThread(flood)
            self.assertEqual([g[:3] for g in greetings], [b"220"] * 3 + [b"421"] * 7)
            self.assertIn(b"421 4.7.0 mx.test Error: too many connections from your address", greetings[3])
            # 127.0.0.3 is served while 127.0.0.2 holds its three.
            code = yield deferToThread(send_ok, self.port, "127.0.0.3")
            self.assertEqual(code, 250)
            self.assertEqual(self.hooks.messages, 1)
            sizes = self.server._context.guard.sizes
            self.assertLessEqual(sizes["open"], 2)  # two keys at most: 127.0.0.2 and 127.0.0.3
        finally:
            for s in held:
                s.close()

    @defer.inlineCallbacks
    def test_max_connect_rate(self):
        yield self.start(max_connect_rate=5)

        def burst() -> List[bytes]:
            out = []
            for _ in range(8):  # bounded
                with raw(self.port, "127.0.0.2") as s:
                    out.append(read_reply(s)[:3])
            return out

        codes = yield deferToThread(burst)
        self.assertEqual(codes, [b"220"] * 5 + [b"421"] * 3)
        code = yield deferToThread(send_ok, self.port, "127.0.0.3")
        self.assertEqual(code, 250)
        self.assertEqual(self.server._context.guard.sizes["rate"], 2)

    @defer.inlineCallbacks
    def test_early_talker(self):
        yield self.start(greeting_delay=0.3)

        def early() -> bytes:
            with raw(self.port, "127.0.0.2") as s:
                s.sendall(b"EHLO spam.example\r\nQUIT\r\n")
                data = b""
                for _ in range(10):  # until EOF (each recv has the socket's timeout)
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data

        result = yield deferToThread(early)
        # RFC 5321 3.1: the 554 replaces the greeting, the EHLO gets 503, QUIT 221, then the close.
        lines = result.split(b"\r\n")
        self.assertEqual([line[:10] for line in lines], [b"554 5.7.1 ", b"503 5.5.1 ", b"221 2.0.0 ", b""], result)
        code = yield deferToThread(send_ok, self.port, "127.0.0.3")  # smtplib waits for the greeting
        self.assertEqual(code, 250)

    @defer.inlineCallbacks
    def test_http_and_tls_on_smtp_port(self):
        yield self.start()

        def http() -> bytes:
            with raw(self.port, "127.0.0.2") as s:
                read_reply(s)
                s.sendall(b"POST /form HTTP/1.1\r\nHost: mx\r\nContent-Length: 4\r\n\r\nQUIT")
                data = read_reply(s)
                return data + b"|" + s.recv(100)

        def tls() -> str:
            context = unverified_client_context()
            with raw(self.port, "127.0.0.3") as s:
                read_reply(s)  # the greeting, then a TLS client starts its handshake anyway
                try:
                    context.wrap_socket(s, server_hostname="mx.test")
                except (ssl.SSLError, OSError) as e:
                    return type(e).__name__
                return "handshake succeeded?!"

        data = yield deferToThread(http)
        self.assertTrue(data.startswith(b"421 4.7.0 "), data)
        self.assertTrue(data.endswith(b"|"), data)
        error = yield deferToThread(tls)
        self.assertIn(error, ("SSLEOFError", "SSLZeroReturnError", "ConnectionResetError", "SSLError"))
        code = yield deferToThread(send_ok, self.port, "127.0.0.4")
        self.assertEqual(code, 250)

    @defer.inlineCallbacks
    def test_junk_commands(self):
        yield self.start(max_junk_commands=20)

        def noops() -> List[int]:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10, source_address=("127.0.0.2", 0)) as c:
                codes = [c.noop()[0] for _ in range(21)]  # bounded
                return codes

        codes = yield deferToThread(noops)
        self.assertEqual(codes, [250] * 20 + [421])
        code = yield deferToThread(send_ok, self.port, "127.0.0.3")
        self.assertEqual(code, 250)

    @defer.inlineCallbacks
    def test_auth_guessing(self):
        yield self.start(max_auth_failures_per_ip=3, auth_failure_delay=0.05, auth_failure_max_delay=0.2)

        def guess(source: str, password: str, tries: int) -> List[int]:
            codes = []
            for _ in range(tries):  # bounded
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10, source_address=(source, 0)) as c:
                    c.ehlo("client.test")
                    c.user, c.password = "alice", password
                    try:  # PLAIN only: login() would try LOGIN after a failed PLAIN
                        codes.append(c.auth("PLAIN", c.auth_plain)[0])
                    except smtplib.SMTPAuthenticationError as e:
                        codes.append(e.smtp_code)
            return codes

        codes = yield deferToThread(guess, "127.0.0.2", "wrong", 6)
        self.assertEqual(codes, [535, 535, 535, 454, 454, 454])
        codes = yield deferToThread(guess, "127.0.0.2", PASSWORD, 1)
        self.assertEqual(codes, [454])  # not even checked
        codes = yield deferToThread(guess, "127.0.0.3", PASSWORD, 1)
        self.assertEqual(codes, [235])
        self.assertEqual(self.server._context.guard.sizes["auth_addresses"], 1)
