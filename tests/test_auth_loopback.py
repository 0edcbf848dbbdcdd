# -*- test-case-name: tests.test_auth_loopback -*-
"""
SMTP AUTH over loopback with real clients nobody here wrote: Python's
smtplib, swaks, curl and Twisted's own ESMTP client, against every mechanism
(XOAUTH2 with curl: no released swaks speaks it).
"""

from __future__ import annotations

import os
import smtplib
import tempfile
from io import BytesIO

from twisted.internet import defer, reactor, utils
from twisted.internet.threads import deferToThread
from twisted.mail.smtp import ESMTPSenderFactory, SMTPClientError
from twisted.trial import unittest

from tests._support import tool_path
from txsmtpsrv import SMTPError, SMTPServer

USER = "alice"
PASSWORD = "s3cret-Pa55"
TOKEN = "ya29.loopback-token"


def xoauth2(token):
    """An smtplib auth object for XOAUTH2: the initial response, then an empty answer to an error challenge."""
    def respond(challenge=None):
        if challenge is None:
            return f"user={USER}\x01auth=Bearer {token}\x01\x01"
        return ""
    return respond


class AuthRecorder:
    """Accepts USER with PASSWORD (TOKEN for XOAUTH2); records logins and messages."""

    def __init__(self):
        self.logins = []
        self.messages = []

    def on_auth(self, session, credentials):
        self.logins.append((credentials.method, credentials.username, credentials.authzid))
        if credentials.username != USER or credentials.authzid not in (None, USER):
            raise SMTPError(535, "Authentication credentials invalid", "5.7.8")
        if credentials.method == "XOAUTH2":
            ok = credentials.access_token == TOKEN
        else:
            ok = credentials.validate_password(PASSWORD)
        if not ok:
            raise SMTPError(535, "Authentication credentials invalid", "5.7.8")
        return credentials.username

    async def on_data(self, session, stream):
        body = await stream.content()
        self.messages.append((session.user, session.transmission_type, body))


class AuthLoopbackTests(unittest.TestCase):
    """A server on 127.0.0.1 requiring AUTH (allowed in plaintext), with real clients."""

    def setUp(self):
        self.hooks = AuthRecorder()

    @defer.inlineCallbacks
    def start(self, **options):
        """Listen on a fresh port with these options; stop at cleanup."""
        options.setdefault("allow_insecure_auth", True)
        self.server = SMTPServer(self.hooks, name="mx.test", **options)
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    # -- smtplib ------------------------------------------------------------------

    def smtplib_login(self, password=PASSWORD, send=True):
        """Log in with smtplib's login() and send one message; return the AUTH feature and login reply."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            client.ehlo("client.test")
            feature = client.esmtp_features.get("auth")
            reply = client.login(USER, password)
            if send:
                client.sendmail("a@example.test", ["b@example.test"], b"Subject: auth\r\n\r\nhello\r\n")
            return feature, reply

    @defer.inlineCallbacks
    def test_smtplib_plain(self):
        """smtplib login() picks PLAIN from the default offer; the message arrives as ESMTPA."""
        yield self.start()
        feature, reply = yield deferToThread(self.smtplib_login)
        self.assertEqual(feature.split(), ["PLAIN", "LOGIN"])
        self.assertEqual(reply[0], 235)
        self.assertEqual(self.hooks.logins, [("PLAIN", USER, None)])
        [(user, kind, body)] = self.hooks.messages
        self.assertEqual((user, kind), (USER, "ESMTPA"))
        self.assertIn(b"hello", body)

    @defer.inlineCallbacks
    def test_smtplib_login(self):
        """smtplib login() uses LOGIN when that is all the server offers."""
        yield self.start(auth_methods=("LOGIN",))
        feature, reply = yield deferToThread(self.smtplib_login)
        self.assertEqual(feature.strip(), "LOGIN")
        self.assertEqual(reply[0], 235)
        self.assertEqual(self.hooks.logins, [("LOGIN", USER, None)])
        self.assertEqual([m[:2] for m in self.hooks.messages], [(USER, "ESMTPA")])

    @defer.inlineCallbacks
    def test_smtplib_login_prefers_cram_md5(self):
        """With CRAM-MD5 offered, smtplib login() chooses it."""
        yield self.start(auth_methods=("PLAIN", "LOGIN", "CRAM-MD5"))
        _, reply = yield deferToThread(self.smtplib_login)
        self.assertEqual(reply[0], 235)
        self.assertEqual(self.hooks.logins, [("CRAM-MD5", USER, None)])

    @defer.inlineCallbacks
    def test_smtplib_cram_md5(self):
        """smtplib.auth("CRAM-MD5", auth_cram_md5) answers our challenge."""
        yield self.start(auth_methods=("CRAM-MD5",))

        def run():
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.ehlo("client.test")
                client.user, client.password = USER, PASSWORD
                return client.auth("CRAM-MD5", client.auth_cram_md5)

        reply = yield deferToThread(run)
        self.assertEqual(reply[0], 235)
        self.assertEqual(self.hooks.logins, [("CRAM-MD5", USER, None)])

    def smtplib_xoauth2(self, token):
        """AUTH XOAUTH2 with smtplib; return the final reply, or the error's code and text."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            client.ehlo("client.test")
            try:
                return client.auth("XOAUTH2", xoauth2(token))
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code, e.smtp_error

    @defer.inlineCallbacks
    def test_smtplib_xoauth2(self):
        """smtplib.auth("XOAUTH2", ...) with a good token: 235; the hook saw the user."""
        yield self.start(auth_methods=("XOAUTH2",))
        reply = yield deferToThread(self.smtplib_xoauth2, TOKEN)
        self.assertEqual(reply[0], 235)
        self.assertEqual(self.hooks.logins, [("XOAUTH2", USER, None)])

    @defer.inlineCallbacks
    def test_smtplib_xoauth2_error_flow(self):
        """A refused token: smtplib answers the 334 JSON error with an empty line and gets 535 5.7.8."""
        yield self.start(auth_methods=("XOAUTH2",))
        reply = yield deferToThread(self.smtplib_xoauth2, "expired")
        self.assertEqual(reply[0], 535)
        self.assertIn(b"5.7.8", reply[1])
        self.assertEqual(self.hooks.logins, [("XOAUTH2", USER, None)])

    @defer.inlineCallbacks
    def test_smtplib_wrong_password(self):
        """A wrong password raises SMTPAuthenticationError with 535."""
        yield self.start()

        def run():
            try:
                self.smtplib_login(password="wrong", send=False)
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code, e.smtp_error
            return None

        result = yield deferToThread(run)
        self.assertIsNotNone(result)
        self.assertEqual(result[0], 535)
        self.assertIn(b"5.7.8", result[1])
        self.assertEqual(self.hooks.messages, [])

    @defer.inlineCallbacks
    def test_smtplib_mail_without_auth(self):
        """Without logging in, smtplib's MAIL is refused with 530."""
        yield self.start()

        def run():
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.ehlo("client.test")
                try:
                    client.sendmail("a@example.test", ["b@example.test"], b"hi\r\n")
                except smtplib.SMTPSenderRefused as e:
                    return e.smtp_code
            return None

        self.assertEqual((yield deferToThread(run)), 530)

    # -- swaks --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def swaks(self, mechanism, secret):
        """Run swaks with AUTH; return (output, exit status)."""
        swaks = tool_path("swaks")
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--server", "127.0.0.1", "--port", str(self.port), "--from", "s@example.test",
            "--to", "r@example.test", "--helo", "client.test",
            "-a", mechanism, "-au", USER, "-ap", secret,
            "--header", "Subject: swaks auth", "--body", "hello from swaks"], env=os.environ)
        return out + err, code

    @defer.inlineCallbacks
    def check_swaks(self, mechanism, secret):
        """swaks authenticates with C{mechanism} and delivers; the hook saw USER."""
        yield self.start(auth_methods=(mechanism,))
        out, code = yield self.swaks(mechanism, secret)
        self.assertEqual(code, 0, out.decode("utf-8", "replace"))
        self.assertIn(b"235 2.7.0 Authentication successful", out)
        self.assertEqual(self.hooks.logins, [(mechanism, USER, None)])
        [(user, kind, body)] = self.hooks.messages
        self.assertEqual((user, kind), (USER, "ESMTPA"))
        self.assertIn(b"hello from swaks", body)

    def test_swaks_plain(self):
        """swaks -a PLAIN."""
        return self.check_swaks("PLAIN", PASSWORD)

    def test_swaks_login(self):
        """swaks -a LOGIN."""
        return self.check_swaks("LOGIN", PASSWORD)

    def test_swaks_cram_md5(self):
        """swaks -a CRAM-MD5."""
        return self.check_swaks("CRAM-MD5", PASSWORD)

    @defer.inlineCallbacks
    def test_swaks_wrong_password(self):
        """swaks with a wrong password fails on 535 5.7.8; nothing is delivered."""
        yield self.start()
        out, code = yield self.swaks("LOGIN", "wrong")
        self.assertNotEqual(code, 0)
        self.assertIn(b"535 5.7.8", out)
        self.assertEqual(self.hooks.logins, [("LOGIN", USER, None)])
        self.assertEqual(self.hooks.messages, [])

    @defer.inlineCallbacks
    def test_swaks_plaintext_refused(self):
        """Without allow_insecure_auth AUTH is not offered, so swaks gives up before MAIL."""
        yield self.start(allow_insecure_auth=False)
        out, code = yield self.swaks("PLAIN", PASSWORD)
        self.assertNotEqual(code, 0)
        self.assertEqual(self.hooks.logins, [])
        self.assertEqual(self.hooks.messages, [])

    # -- curl (XOAUTH2) ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def curl_xoauth2(self, token):
        """Send one message with curl's XOAUTH2 (C{--oauth2-bearer}); return (its -v output, exit status)."""
        with tempfile.NamedTemporaryFile("wb", suffix=".eml", delete=False) as f:
            f.write(b"Subject: curl auth\r\n\r\nhello from curl\r\n")
        message = f.name
        self.addCleanup(os.remove, message)
        out, err, code = yield utils.getProcessOutputAndValue(tool_path("curl"), [
            "-sS", "-v", "--max-time", "20", f"smtp://127.0.0.1:{self.port}/client.test",
            "--mail-from", "s@example.test", "--mail-rcpt", "r@example.test", "--upload-file", message,
            "--user", f"{USER}:", "--oauth2-bearer", token, "--login-options", "AUTH=XOAUTH2"], env=os.environ)
        return out + err, code

    @defer.inlineCallbacks
    def test_curl_xoauth2(self):
        """curl --oauth2-bearer authenticates with XOAUTH2 and delivers; the hook saw the user and token."""
        yield self.start(auth_methods=("XOAUTH2",))
        out, code = yield self.curl_xoauth2(TOKEN)
        self.assertEqual(code, 0, out.decode("utf-8", "replace"))
        self.assertIn(b"> AUTH XOAUTH2", out)
        self.assertIn(b"< 235 2.7.0 Authentication successful", out)
        self.assertEqual(self.hooks.logins, [("XOAUTH2", USER, None)])
        [(user, kind, body)] = self.hooks.messages
        self.assertEqual((user, kind), (USER, "ESMTPA"))
        self.assertIn(b"hello from curl", body)

    @defer.inlineCallbacks
    def test_curl_xoauth2_bad_token(self):
        """A refused token gets XOAUTH2's error challenge (334 and base64 JSON); curl gives up, nothing is delivered."""
        yield self.start(auth_methods=("XOAUTH2",))
        out, code = yield self.curl_xoauth2("expired")
        self.assertEqual(code, 67, out.decode("utf-8", "replace"))  # CURLE_LOGIN_DENIED
        self.assertIn(b"< 334 eyJ", out)  # base64 of '{"'
        self.assertNotIn(b"< 235", out)
        self.assertEqual(self.hooks.logins, [("XOAUTH2", USER, None)])
        self.assertEqual(self.hooks.messages, [])

    # -- Twisted's client -------------------------------------------------------------------

    @defer.inlineCallbacks
    def twisted_send(self, password=PASSWORD):
        """Send with Twisted's ESMTPSenderFactory, authentication required, no TLS."""
        done = defer.Deferred()
        body = b"Subject: from twisted\n\nHello with AUTH.\n"  # local newlines
        factory = ESMTPSenderFactory(
            USER.encode(), password.encode(), "sender@example.test", ["rcpt@example.test"],
            BytesIO(body), done, retries=0, requireAuthentication=True, requireTransportSecurity=False)
        reactor.connectTCP("127.0.0.1", self.port, factory)
        result = yield done
        return body, result

    @defer.inlineCallbacks
    def check_twisted(self, mechanism):
        """Twisted's client authenticates with C{mechanism} and delivers as ESMTPA."""
        yield self.start(auth_methods=(mechanism,))
        body, result = yield self.twisted_send()
        self.assertEqual(result[0], 1)
        self.assertEqual([login[:2] for login in self.hooks.logins], [(mechanism, USER)])
        [(user, kind, got)] = self.hooks.messages
        self.assertEqual((user, kind), (USER, "ESMTPA"))
        self.assertEqual(got, body.replace(b"\n", b"\r\n"))

    def test_twisted_plain(self):
        """ESMTPSenderFactory with PLAIN (it sends the user as authzid too)."""
        return self.check_twisted("PLAIN")

    def test_twisted_login(self):
        """ESMTPSenderFactory with LOGIN."""
        return self.check_twisted("LOGIN")

    def test_twisted_cram_md5(self):
        """ESMTPSenderFactory with CRAM-MD5."""
        return self.check_twisted("CRAM-MD5")

    @defer.inlineCallbacks
    def test_twisted_default_methods(self):
        """From the default offer (PLAIN LOGIN) Twisted's client picks LOGIN."""
        yield self.start()
        body, result = yield self.twisted_send()
        self.assertEqual(result[0], 1)
        self.assertEqual(self.hooks.logins, [("LOGIN", USER, None)])

    @defer.inlineCallbacks
    def test_twisted_wrong_password(self):
        """Twisted's client gets the 535 as an SMTPClientError; nothing is delivered."""
        yield self.start(auth_methods=("LOGIN",))
        with self.assertRaises(SMTPClientError) as caught:
            yield self.twisted_send(password="wrong")
        self.assertEqual(caught.exception.code, 535)
        self.assertEqual(self.hooks.messages, [])
