# -*- test-case-name: tests.test_reply_loopback -*-
"""
Issue 10 over a real socket on 127.0.0.1: client bytes echoed in replies come
out escaped (raw socket and smtplib), and XCLIENT / XFORWARD from loopback
are refused until loopback is named trusted (smtplib, swaks).
"""

from __future__ import annotations

import os
import smtplib
import socket
from typing import Any, List

from twisted.internet import defer, utils
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests._support import tool_path
from tests.test_reply_wire import assert_clean
from txsmtpsrv import SMTPServer, received_header

IO_TIMEOUT = 10


class Recorder:
    """Keeps what the hooks saw of the client for each message."""

    def __init__(self) -> None:
        self.seen: List[Any] = []

    def on_mail_from(self, session: Any, address: Any) -> None:
        self.seen.append(("mail", session.remote_address, session.client_hostname, session.user))

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.content()
        self.seen.append(("data", session.remote_address, session.client_hostname, dict(session.xforward),
                          received_header(session, "mx.test")))


def raw_dialogue(port: int, payload: bytes, replies: int) -> bytes:
    """Send C{payload} in one write; read until C{replies} final reply lines arrived (or EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        data = b""
        while data.count(b"\r\n") < 1:  # greeting
            data += s.recv(65536)
        s.sendall(payload)
        done = 0
        while done < replies:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            done = sum(1 for line in data.split(b"\r\n")[1:] if line[3:4] == b" ")
        return data


class EchoLoopbackTests(unittest.TestCase):
    """Reply lines on the wire are printable and capped, whatever the client sent."""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = SMTPServer(Recorder(), name="mx.test", disable_reverse_lookup=True,
                                 helo_response="{name} hi {helo}")
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    @defer.inlineCallbacks
    def test_raw_socket_echo(self):
        """The issue's bytes over TCP: CR, NUL and ESC in a parameter; a 1,000-byte control-laden EHLO
        (refused since issue 10 item 3: 501 5.5.4, clean), then a long valid name echoed by helo_response."""
        payload = (b"EHLO a\rb\x00c" + b"x" * 995 + b"\r\n"
                   b"EHLO " + b"x" * 240 + b".test\r\n"
                   b"MAIL FROM:<a@b.test> X\rY=1\r\n"
                   b"MAIL FROM:<a@b.test> A\x00\x1b[2J=1\r\n"
                   b"QUIT\r\n")
        data = yield deferToThread(raw_dialogue, self.port, payload, 5)
        assert_clean(data)
        self.assertIn(b"\r\n501 5.5.4 ", data)
        self.assertIn(b"X\\x0dY=1", data)
        self.assertIn(b"A\\x00\\x1b[2J=1", data)
        self.assertIn(b"250-mx.test hi xxx", data)
        self.assertTrue(data.endswith(b"221 2.0.0 Bye\r\n"))

    @defer.inlineCallbacks
    def test_smtplib_echo(self):
        """smtplib sees one clean reply per command, control bytes shown escaped."""
        def client() -> List[Any]:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=IO_TIMEOUT) as s:
                s.ehlo("client.test")
                # (smtplib itself refuses to send a CR or LF in a command)
                return [s.docmd("MAIL", "FROM:<a@b.test> X\x07Y=1"),
                        s.docmd("MAIL", "FROM:<a@b.test> A\x00\x1b[2J=1"),
                        s.docmd("NOOP")]

        out = yield deferToThread(client)
        for code, text in out[:2]:
            self.assertEqual(code // 100, 5)
            self.assertFalse(any(b < 0x20 or b == 0x7F for b in text), text)
        self.assertIn(b"X\\x07Y=1", out[0][1])
        self.assertIn(b"A\\x00\\x1b[2J=1", out[1][1])
        self.assertEqual(out[2][0], 250)  # the dialogue stays in step


class XClientLoopbackTests(unittest.TestCase):
    """Trust is named: XCLIENT / XFORWARD from 127.0.0.1 only once 127.0.0.1 is trusted."""

    @defer.inlineCallbacks
    def start(self, **options: Any):
        self.hooks = Recorder()
        self.server = SMTPServer(self.hooks, name="mx.test", disable_reverse_lookup=True,
                                 use_xclient=True, use_xforward=True, **options)
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    def xclient_dialogue(self) -> List[Any]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=IO_TIMEOUT) as s:
            s.ehlo("proxy.test")
            out: List[Any] = [s.has_extn("xclient"), s.has_extn("xforward"),
                              s.docmd("XCLIENT", "ADDR=203.0.113.9 LOGIN=admin")[0]]
            s.ehlo("client.test")
            out.append(s.mail("a@example.test")[0])
            return out

    @defer.inlineCallbacks
    def test_loopback_untrusted_by_default(self):
        """Default options: no XCLIENT in EHLO, 550 5.7.0, and the session keeps the real peer, no user."""
        yield self.start()
        out = yield deferToThread(self.xclient_dialogue)
        self.assertEqual(out, [False, False, 550, 250])
        self.assertEqual(self.hooks.seen, [("mail", "127.0.0.1", "[127.0.0.1]", None)])

    @defer.inlineCallbacks
    def test_loopback_trusted_when_named(self):
        """xclient_trusted=127.0.0.1/32: XCLIENT is advertised and works; hooks see the forwarded client."""
        yield self.start(xclient_trusted="127.0.0.1/32")
        out = yield deferToThread(self.xclient_dialogue)
        self.assertEqual(out, [True, True, 220, 250])
        self.assertEqual(self.hooks.seen, [("mail", "203.0.113.9", "[203.0.113.9]", "admin")])

    @defer.inlineCallbacks
    def test_xforward_reaches_received_header(self):
        """XFORWARD ADDR/NAME over smtplib: on_data's session and the Received header name the real client."""
        yield self.start(xclient_trusted="127.0.0.0/8")

        def client() -> int:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=IO_TIMEOUT) as s:
                s.ehlo("proxy.test")
                code = s.docmd("XFORWARD", "ADDR=203.0.113.9 NAME=orig.example.test")[0]
                s.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nhi\r\n")
                return code

        code = yield deferToThread(client)
        self.assertEqual(code, 250)
        (mail, data) = self.hooks.seen
        self.assertEqual(mail[1:3], ("203.0.113.9", "orig.example.test"))
        self.assertEqual(data[1:3], ("203.0.113.9", "orig.example.test"))
        self.assertEqual(data[3], {"ADDR": "203.0.113.9", "NAME": "orig.example.test"})
        self.assertIn(b"from proxy.test (orig.example.test [203.0.113.9])", data[4])

    @defer.inlineCallbacks
    def test_swaks_xclient(self):
        """swaks --xclient-addr: not offered (swaks gives up) by default; the forwarded client once trusted."""
        swaks = tool_path("swaks")
        for trusted in (None, "127.0.0.1/32"):
            yield self.start(**({"xclient_trusted": trusted} if trusted else {}))
            out, err, code = yield utils.getProcessOutputAndValue(swaks, [
                "--server", "127.0.0.1", "--port", str(self.port), "--from", "a@example.test",
                "--to", "b@example.test", "--helo", "proxy.test", "--xclient-addr", "203.0.113.9"],
                env=os.environ)
            text = out.decode("utf-8", "replace")
            if trusted:
                self.assertEqual(code, 0, text)
                self.assertIn("250-XCLIENT NAME ADDR", text)
                self.assertIn("-> XCLIENT ADDR=203.0.113.9", text)
                self.assertEqual(self.hooks.seen[0][:2], ("mail", "203.0.113.9"))
            else:
                self.assertNotEqual(code, 0, text)
                self.assertNotIn("XCLIENT", text.split("-> EHLO proxy.test", 1)[1].split(" -> ", 1)[0])
                self.assertEqual(self.hooks.seen, [])
            yield self.server.close()
