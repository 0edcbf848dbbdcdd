# -*- test-case-name: tests.test_loopback -*-
"""
Real clients nobody here wrote, over loopback: Python's smtplib, Twisted's
own ESMTP client and swaks.
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage
from io import BytesIO

from twisted.internet import defer, reactor, utils
from twisted.internet.threads import deferToThread
from twisted.mail.smtp import ESMTPSenderFactory
from twisted.trial import unittest

from tests._support import tool_path
from txsmtpsrv import SMTPError, SMTPServer


class Recorder:
    """Hooks that keep every accepted message and refuse one recipient."""

    def __init__(self):
        self.messages = []

    def on_rcpt_to(self, session, address):
        if address.local_part == "nobody":
            raise SMTPError(550, "No such user here", "5.1.1")

    async def on_data(self, session, stream):
        body = await stream.content()
        env = session.envelope
        self.messages.append((env.mail_from.address, [r.address for r in env.rcpt_to], body,
                              session.transmission_type))


class LoopbackTests(unittest.TestCase):
    """A server on 127.0.0.1 with real clients."""

    @defer.inlineCallbacks
    def setUp(self):
        self.hooks = Recorder()
        self.server = SMTPServer(self.hooks, name="mx.test", size=1024 * 1024)
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    def smtplib_send(self, msg, rcpts, **kw):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            client.ehlo("client.test")
            features = dict(client.esmtp_features)
            refused = client.send_message(msg, to_addrs=rcpts, **kw)
            return features, refused

    @defer.inlineCallbacks
    def test_smtplib(self):
        """smtplib sends a message; the hook gets it byte for byte, with dots and 8-bit text."""
        msg = EmailMessage()
        msg["From"] = "alice@example.test"
        msg["To"] = "bob@example.test"
        msg["Subject"] = "loopback"
        msg.set_content(".leading dot\nsecond line\n..two dots\nünïcödé\n", cte="8bit")
        features, refused = yield deferToThread(
            self.smtplib_send, msg, ["bob@example.test", "nobody@example.test"])
        self.assertIn("pipelining", features)
        self.assertIn("8bitmime", features)
        self.assertEqual(features["size"], str(1024 * 1024))
        self.assertEqual(list(refused), ["nobody@example.test"])
        [(sender, rcpts, body, kind)] = self.hooks.messages
        self.assertEqual((sender, rcpts, kind), ("alice@example.test", ["bob@example.test"], "ESMTP"))
        self.assertIn(".leading dot\r\n", body.decode("utf-8"))
        self.assertIn("\r\n..two dots\r\n", body.decode("utf-8"))
        self.assertIn("ünïcödé", body.decode("utf-8"))

    @defer.inlineCallbacks
    def test_smtplib_smtputf8(self):
        """An internationalised address travels with SMTPUTF8."""
        msg = EmailMessage()
        msg["From"] = "jösé@exämple.test"
        msg["To"] = "bob@example.test"
        msg["Subject"] = "utf8"
        msg.set_content("hi\n")
        yield deferToThread(self.smtplib_send, msg, ["bob@example.test"])  # adds SMTPUTF8 itself
        [(sender, _, _, kind)] = self.hooks.messages
        self.assertEqual(sender, "jösé@exämple.test")
        self.assertEqual(kind, "UTF8SMTP")

    @defer.inlineCallbacks
    def test_smtplib_size_refused(self):
        """Too big: refused at MAIL for a declared SIZE, after the dot otherwise; the session goes on."""
        def send():
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.ehlo("client.test")
                try:
                    client.sendmail("a@example.test", ["b@example.test"], b"x" * (1024 * 1024 + 10))
                except smtplib.SMTPSenderRefused as e:
                    declared = e.smtp_code
                client.rset()
                client.mail("a@example.test")  # no SIZE declared this time
                client.rcpt("b@example.test")
                undeclared = client.data(b"y" * (1024 * 1024 + 10))[0]
                return declared, undeclared, client.noop()[0]
        codes = yield deferToThread(send)
        self.assertEqual(codes, (552, 552, 250))
        self.assertEqual(self.hooks.messages, [])

    @defer.inlineCallbacks
    def test_twisted_esmtp_client(self):
        """Twisted's ESMTPSenderFactory delivers through the server."""
        done = defer.Deferred()
        body = b"Subject: from twisted\n\nHello from Twisted.\n.dot line\n"  # local newlines
        factory = ESMTPSenderFactory(
            None, None, "sender@example.test", ["rcpt@example.test"], BytesIO(body), done,
            requireAuthentication=False, requireTransportSecurity=False, retries=0)
        reactor.connectTCP("127.0.0.1", self.port, factory)
        result = yield done
        self.assertEqual(result[0], 1)  # one recipient accepted
        [(sender, rcpts, got, _)] = self.hooks.messages
        self.assertEqual((sender, rcpts), ("sender@example.test", ["rcpt@example.test"]))
        self.assertEqual(got, body.replace(b"\n", b"\r\n"))

    def raw_data(self, bodies):
        """Send each body raw after DATA on one smtplib connection (no line-ending repair); return replies."""
        replies = []
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            client.ehlo("client.test")
            for body in bodies:
                self.assertEqual(client.mail("s@example.test")[0], 250)
                self.assertEqual(client.rcpt("r@example.test")[0], 250)
                self.assertEqual(client.docmd("DATA")[0], 354)
                client.send(body + b".\r\n")
                replies.append(client.getreply())
        return replies

    @defer.inlineCallbacks
    def test_smuggling_refused_over_a_socket(self):
        """Issue 10 over TCP: bare CR/LF with bytes between, and a NUL, get 550 5.6.0 and no message;
        a clean message on the same connection still gets 250."""
        bodies = [b"hello\r.\nMAIL FROM:<ceo@victim.example>\r\n", b"a\rX\nb\r\n", b"nul\x00byte\r\n",
                  b"clean\r\n"]
        replies = yield deferToThread(self.raw_data, bodies)
        self.assertEqual([code for code, _ in replies], [550, 550, 550, 250])
        self.assertTrue(all(text.startswith(b"5.6.0") for _, text in replies[:3]), replies)
        self.assertEqual([m[2] for m in self.hooks.messages], [b"clean\r\n"])

    @defer.inlineCallbacks
    def test_swaks(self):
        """swaks (a Perl client) delivers with pipelining; its output shows each reply."""
        swaks = tool_path("swaks")
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--server", "127.0.0.1", "--port", str(self.port), "--from", "s@example.test",
            "--to", "r@example.test", "--helo", "client.test", "--pipeline",
            "--header", "Subject: swaks test", "--body", "hello from swaks"], env=os.environ)
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        self.assertIn(b"250 2.0.0 OK: message accepted", out)
        [(sender, rcpts, body, _)] = self.hooks.messages
        self.assertEqual((sender, rcpts), ("s@example.test", ["r@example.test"]))
        self.assertIn(b"Subject: swaks test\r\n", body)
        self.assertIn(b"hello from swaks", body)

    @defer.inlineCallbacks
    def test_swaks_rejected_recipient(self):
        """swaks sees the hook's 550 5.1.1 for a refused recipient."""
        swaks = tool_path("swaks")
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--server", "127.0.0.1", "--port", str(self.port), "--from", "s@example.test",
            "--to", "nobody@example.test", "--helo", "client.test"], env=os.environ)
        self.assertNotEqual(code, 0)
        self.assertIn(b"550 5.1.1 No such user here", out)
        self.assertEqual(self.hooks.messages, [])
