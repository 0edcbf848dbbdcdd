# -*- test-case-name: tests.test_lmtp_bdat_loopback -*-
"""
LMTP, BDAT and DSN over real sockets with clients nobody here wrote:
Python's smtplib.LMTP over TCP and a UNIX socket, a raw socket pipelining
BDAT chunks, and swaks speaking LMTP with pipelining.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import tempfile
from typing import Any, List, Tuple

from twisted.internet import defer, utils
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests._support import tool_path
from txsmtpsrv import SMTPError, SMTPServer


class Mailbox:
    """LMTP-style hooks: refuse C{nobody} at RCPT, and C{full} per recipient after the body."""

    def __init__(self) -> None:
        self.messages: List[Tuple[str, List[str], bytes, str]] = []
        self.mail: List[Tuple[str, Any, Any]] = []  # (address, dsn_ret, dsn_envid) seen at RCPT time
        self.rcpt: List[Tuple[str, Any, Any]] = []  # (address, notify, orcpt)

    def on_rcpt_to(self, session, address):
        if address.local_part == "nobody":
            raise SMTPError(550, "No such user here", "5.1.1")
        env = session.envelope
        self.mail.append((env.mail_from.address, env.dsn_ret, env.dsn_envid))
        self.rcpt.append((address.address, address.notify, address.orcpt))

    async def on_data(self, session, stream):
        body = await stream.content()
        env = session.envelope
        rcpts = [r.address for r in env.rcpt_to]
        self.messages.append((env.mail_from.address, rcpts, body, session.transmission_type))
        if not session.lmtp:
            return None
        return [SMTPError(452, "Mailbox full", "4.2.2") if r.startswith("full@") else None for r in rcpts]


def read_replies(sock: socket.socket, count: int, buffer: bytes = b"") -> Tuple[List[str], bytes]:
    """Read until C{count} complete replies (last lines) arrived; bounded by the socket timeout."""
    lines: List[str] = []
    while sum(1 for line in lines if line[3:4] == " ") < count:
        while b"\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed after {lines!r}")
            buffer += data
        line, buffer = buffer.split(b"\r\n", 1)
        lines.append(line.decode("utf-8"))
    return [line for line in lines if line[3:4] == " "], buffer


def lmtp_session(client: smtplib.LMTP) -> Tuple[dict, List[Tuple[int, bytes]]]:
    """One LMTP transaction with smtplib: sendmail, then the per-recipient replies it leaves unread."""
    msg = b"Subject: lmtp\r\n\r\nhello over LMTP\r\n.dot line\r\n"
    rcpts = ["a@example.test", "nobody@example.test", "full@example.test", "b@example.test"]
    try:
        refused = client.sendmail("s@example.test", rcpts, msg)
    except smtplib.SMTPDataError as e:  # smtplib reads only the first per-recipient reply
        raise AssertionError(f"first recipient refused: {e}") from None
    # smtplib.LMTP reads one reply after DATA; LMTP sends one per accepted recipient.
    more = [client.getreply() for _ in range(2)]
    noop = client.noop()
    return refused, more + [noop]


class LMTPLoopbackTests(unittest.TestCase):
    """An LMTP server on 127.0.0.1 and on a UNIX socket, with smtplib.LMTP and swaks."""

    @defer.inlineCallbacks
    def setUp(self):
        self.hooks = Mailbox()
        self.server = SMTPServer(self.hooks, name="lmtp.test", lmtp=True, size=1024 * 1024)
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    def check_lmtp_result(self, result):
        refused, later = result
        self.assertEqual(refused, {"nobody@example.test": (550, b"5.1.1 No such user here")})
        self.assertEqual(later, [(452, b"4.2.2 Mailbox full"),
                                 (250, b"2.0.0 OK: message accepted for <b@example.test>"),
                                 (250, b"2.0.0 OK")])
        [(sender, rcpts, body, kind)] = self.hooks.messages
        self.assertEqual((sender, rcpts, kind),
                         ("s@example.test", ["a@example.test", "full@example.test", "b@example.test"], "LMTP"))
        self.assertEqual(body, b"Subject: lmtp\r\n\r\nhello over LMTP\r\n.dot line\r\n")

    @defer.inlineCallbacks
    def test_smtplib_lmtp_tcp(self):
        """smtplib.LMTP over TCP: refused RCPTs reported, then one reply per accepted recipient."""
        def run():
            with smtplib.LMTP("127.0.0.1", self.port, timeout=10) as client:
                code, _ = client.ehlo("client.test")  # sends LHLO
                assert code == 250, code
                assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
                return lmtp_session(client)
        self.check_lmtp_result((yield deferToThread(run)))

    @defer.inlineCallbacks
    def test_smtplib_lmtp_unix_socket(self):
        """smtplib.LMTP over a UNIX socket: same per-recipient results."""
        tmp = tempfile.mkdtemp(prefix="txsmtp")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "lmtp.sock")
        server = SMTPServer(self.hooks, name="lmtp.test", lmtp=True)
        yield server.listen(f"unix:{path}")
        self.addCleanup(server.close)

        def run():
            with smtplib.LMTP(path, timeout=10) as client:
                return lmtp_session(client)
        self.check_lmtp_result((yield deferToThread(run)))

    @defer.inlineCallbacks
    def test_raw_lmtp_bdat_last_per_recipient(self):
        """A raw socket: pipelined BDAT chunks over LMTP, then one reply per recipient after LAST."""
        def run():
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                replies, rest = read_replies(sock, 1)
                sock.sendall(b"LHLO raw.test\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\n"
                             b"RCPT TO:<full@example.test>\r\nBDAT 6\r\nchunk BDAT 4 LAST\r\nlastQUIT\r\n")
                more, rest = read_replies(sock, 8, rest)
                return replies + more
        replies = yield deferToThread(run)
        self.assertEqual(replies, [
            "220 lmtp.test LMTP", "250 SIZE 1048576", "250 2.1.0 Accepted", "250 2.1.5 Accepted",
            "250 2.1.5 Accepted", "250 2.0.0 6 octets received",
            "250 2.0.0 OK: message accepted for <a@example.test>", "452 4.2.2 Mailbox full", "221 2.0.0 Bye"])
        self.assertEqual(self.hooks.messages[0][2], b"chunk last")

    @defer.inlineCallbacks
    def test_smtplib_dsn_parameters(self):
        """DSN parameters sent by smtplib (mail/rcpt options) reach the hooks decoded."""
        def run():
            with smtplib.LMTP("127.0.0.1", self.port, timeout=10) as client:
                client.ehlo("client.test")
                assert client.has_extn("dsn")
                out = [client.mail("s@example.test", options=["RET=HDRS", "ENVID=ab+2Bc"])]
                out.append(client.rcpt("a@example.test", options=["NOTIFY=SUCCESS,DELAY",
                                                                  "ORCPT=rfc822;a+40example.test"]))
                out.append(client.rcpt("b@example.test", options=["NOTIFY=NEVER"]))
                out.append(client.rcpt("c@example.test", options=["NOTIFY=NEVER,SUCCESS"]))
                out.append(client.data(b"Subject: dsn\r\n\r\nbody\r\n"))
                out.append(client.getreply())
                return [code for code, _ in out]
        codes = yield deferToThread(run)
        self.assertEqual(codes, [250, 250, 250, 501, 250, 250])
        self.assertEqual(self.hooks.mail, [("s@example.test", "HDRS", "ab+c")] * 2)
        self.assertEqual(self.hooks.rcpt, [("a@example.test", ("SUCCESS", "DELAY"), ("rfc822", "a@example.test")),
                                           ("b@example.test", ("NEVER",), None)])

    @defer.inlineCallbacks
    def test_swaks_lmtp_pipeline(self):
        """swaks --protocol LMTP --pipeline: per-recipient replies after DATA, hooks got the message."""
        swaks = tool_path("swaks")
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--server", "127.0.0.1", "--port", str(self.port), "--protocol", "LMTP", "--pipeline",
            "--from", "s@example.test", "--to", "a@example.test,b@example.test", "--helo", "client.test",
            "--header", "Subject: swaks lmtp", "--body", "hello from swaks"], env=os.environ)
        text = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        self.assertIn("LHLO client.test", text)
        self.assertIn("250 2.0.0 OK: message accepted for <a@example.test>", text)
        self.assertIn("250 2.0.0 OK: message accepted for <b@example.test>", text)
        [(sender, rcpts, body, kind)] = self.hooks.messages
        self.assertEqual((sender, rcpts, kind), ("s@example.test", ["a@example.test", "b@example.test"], "LMTP"))
        self.assertIn(b"Subject: swaks lmtp\r\n", body)

    @defer.inlineCallbacks
    def test_swaks_lmtp_unix_socket(self):
        """swaks --socket speaks LMTP to the server's UNIX socket; a per-recipient failure is shown."""
        swaks = tool_path("swaks")
        tmp = tempfile.mkdtemp(prefix="txsmtp")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "lmtp.sock")
        server = SMTPServer(self.hooks, name="lmtp.test", lmtp=True)
        yield server.listen(f"unix:{path}")
        self.addCleanup(server.close)
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--socket", path, "--protocol", "LMTP", "--pipeline", "--from", "s@example.test",
            "--to", "a@example.test,full@example.test", "--helo", "client.test", "--body", "hi"], env=os.environ)
        text = (out + err).decode("utf-8", "replace")
        self.assertIn("250 2.0.0 OK: message accepted for <a@example.test>", text)
        self.assertIn("452 4.2.2 Mailbox full", text)
        self.assertEqual(len(self.hooks.messages), 1, text)


class BDATLoopbackTests(unittest.TestCase):
    """An SMTP server on 127.0.0.1 driven by a raw socket that pipelines BDAT."""

    @defer.inlineCallbacks
    def setUp(self):
        self.hooks = Mailbox()
        self.server = SMTPServer(self.hooks, name="mx.test", size=1024 * 1024)
        port = yield self.server.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.server.close)

    @defer.inlineCallbacks
    def test_raw_pipelined_bdat(self):
        """Several BDAT chunks in one send, then BDAT LAST: every reply in order, body intact."""
        chunks = [b"Subject: bdat\r\n\r\n", b"line with\r\n.\r\n terminator inside\r\n", bytes(range(256)),
                  b"x" * 70000]

        def run():
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                greeting, rest = read_replies(sock, 1)
                sock.sendall(b"EHLO raw.test\r\n")
                ehlo, rest = read_replies(sock, 1, rest)
                wire = b"MAIL FROM:<s@example.test> BODY=BINARYMIME\r\nRCPT TO:<a@example.test>\r\n"
                for chunk in chunks:
                    wire += b"BDAT %d\r\n" % len(chunk) + chunk
                sock.sendall(wire)
                sock.sendall(b"BDAT 4 LAST\r\ndoneNOOP\r\nQUIT\r\n")
                replies, rest = read_replies(sock, 2 + len(chunks) + 3, rest)
                return greeting + ehlo + replies
        replies = yield deferToThread(run)
        total = 0
        expected = ["250 2.1.0 Accepted", "250 2.1.5 Accepted"]
        for chunk in chunks:
            total += len(chunk)
            expected.append(f"250 2.0.0 {total} octets received")
        expected += ["250 2.0.0 OK: message accepted", "250 2.0.0 OK", "221 2.0.0 Bye"]
        self.assertEqual(replies[2:], expected)
        [(_, _, body, kind)] = self.hooks.messages
        self.assertEqual(body, b"".join(chunks) + b"done")
        self.assertEqual(kind, "ESMTP")

    @defer.inlineCallbacks
    def test_raw_bdat_errors_stay_in_step(self):
        """BDAT without MAIL and an oversized chunk are answered and skipped; the dialogue goes on."""
        server = SMTPServer(self.hooks, name="mx.test", size=100)
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.close)

        def run():
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as sock:
                _, rest = read_replies(sock, 1)
                sock.sendall(b"EHLO raw.test\r\nBDAT 5\r\nNOOP\r" + b"MAIL FROM:<s@example.test>\r\n"
                             b"RCPT TO:<a@example.test>\r\nBDAT 5000\r\n" + b"y" * 5000 + b"BDAT 1 LAST\r\nz"
                             b"RSET\r\nNOOP\r\n")
                replies, _ = read_replies(sock, 8, rest)
                return replies
        replies = yield deferToThread(run)
        self.assertEqual([r[:9] for r in replies[1:]], [
            "503 5.5.1", "250 2.1.0", "250 2.1.5", "552 5.3.4", "552 5.3.4", "250 2.0.0", "250 2.0.0"])
        self.assertEqual(self.hooks.messages, [])
