# -*- test-case-name: tests.test_twistd -*-
"""
C{twistd smtpsrv} for real: a twistd subprocess on a loopback port, driven by
smtplib, swaks and a raw socket.

Each test starts C{twistd -n --pidfile= smtpsrv -l tcp:0:interface=127.0.0.1}
with the repository on PYTHONPATH, learns the port from the log line the
service writes once it listens, and stops the server with SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from tests._certs import make_ca, write_pem
from tests._support import tool_path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0  # upper bound for any single wait on the subprocess


class Twistd:
    """A C{twistd smtpsrv} subprocess and its log output."""

    def __init__(self, cwd: Path, args: List[str], pythonpath: Optional[List[str]] = None,
                 env: Optional[dict] = None, reactor: Optional[str] = None,
                 logfile: Optional[Path] = None) -> None:
        """
        @param logfile: twistd's C{--logfile}: the log goes there, not to our
            pipe, so the port is not waited for (the test reads the file).
        """
        environ = dict(os.environ)
        environ.update(env or {})
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + (pythonpath or []))
        environ.pop("CI_TWISTD_DEBUG", None)
        twistd_options = [f"--reactor={reactor}"] if reactor else []
        twistd_options += [f"--logfile={logfile}"] if logfile else []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", *twistd_options, "smtpsrv", *args],
            cwd=cwd, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.output: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if logfile is None:
            match = self.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
            self.port = int(match.group(1))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> "re.Match[str]":
        """Read log lines until one matches C{pattern}; fail after C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line matching {pattern!r}:\n{''.join(self.output)}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"twistd exited before logging {pattern!r}:\n{''.join(self.output)}")
            self.output.append(line)
            match = regex.search(line)
            if match:
                return match

    def find_or_wait(self, pattern: str, timeout: float = TIMEOUT) -> "re.Match[str]":
        """
        The first line logged so far that matches C{pattern}, else the next
        one to come (L{wait_for} sees only lines not yet read, and L{log}
        reads them all: a line it read is not waited for again).
        """
        match = re.search(pattern, self.log(), re.M)
        return match if match is not None else self.wait_for(pattern, timeout)

    def log(self) -> str:
        """Everything logged so far (drains what the reader thread has queued)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.output.append(line)
        return "".join(self.output)

    def terminate(self) -> int:
        """SIGTERM, then wait (bounded) for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


#: twistd re-raises the SIGTERM it shut down on (Twisted's _exitWithSignal).
CLEAN_EXITS = (0, -signal.SIGTERM)


@pytest.fixture
def twistd(tmp_path) -> Iterator:
    """Start C{twistd smtpsrv} with extra arguments; every process is killed at teardown."""
    started: List[Twistd] = []

    def start(*args: str, pythonpath: Optional[List[str]] = None, env: Optional[dict] = None,
              reactor: Optional[str] = None) -> Twistd:
        server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", *args], pythonpath, env, reactor)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def maildir_messages(maildir: Path) -> List[bytes]:
    """The messages in new/, oldest first; tmp/ must be empty."""
    assert list((maildir / "tmp").iterdir()) == []
    files = sorted((maildir / "new").iterdir(), key=lambda p: p.name)
    return [p.read_bytes() for p in files]


def test_smtplib_to_maildir(twistd, tmp_path):
    """Messages sent with smtplib land in Maildir/new with Return-Path and Received headers."""
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--name", "mx.test")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        code, banner = client.ehlo("client.test")
        assert code == 250 and banner.startswith(b"mx.test")
        client.sendmail("alice@example.org", ["bob@example.net"], b"Subject: one\r\n\r\nfirst\r\n")
        client.sendmail("alice@example.org", ["c@x.test", "d@x.test"], b"Subject: two\r\n\r\nsecond\r\n")
    server.wait_for(r"Stored message .* 2 recipients")
    assert server.terminate() in CLEAN_EXITS
    one, two = sorted(maildir_messages(maildir), key=lambda m: b"two" in m)
    assert re.match(rb"Return-Path: <alice@example.org>\nReceived: from client\.test \(\S+ \[127\.0\.0\.1\]\)\n"
                    rb"\tby mx\.test \(txsmtpsrv\) with ESMTP id ", one)
    assert b"\tfor <bob@example.net>; " in one
    assert one.endswith(b"\nSubject: one\n\nfirst\n")
    assert b"for <" not in two and two.endswith(b"\nSubject: two\n\nsecond\n")
    log = server.log()
    assert "Stored message" in log and "first" not in log and "second" not in log


def test_swaks_to_maildir(twistd, tmp_path):
    """swaks (a different client, with pipelining) delivers into the Maildir."""
    swaks = tool_path("swaks", "/usr/bin")
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir))
    done = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.port}", "--from", "s@example.org", "--to", "r@example.net",
         "--helo", "swaks.test", "--header", "Subject: swaks test", "--body", "hello from swaks", "--pipeline"],
        capture_output=True, timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"<-  250 2.0.0 OK: message accepted" in done.stdout
    assert server.terminate() in CLEAN_EXITS
    [message] = maildir_messages(maildir)
    assert re.search(rb"Received: from swaks\.test \(\S+ \[127\.0\.0\.1\]\)", message)
    assert b"Subject: swaks test\n" in message and b"hello from swaks" in message


def test_default_maildir_is_relative_to_working_directory(twistd, tmp_path):
    """Without --maildir, mail goes to ./Maildir of the directory twistd runs in."""
    server = twistd()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: default\r\n\r\nx\r\n")
    assert server.terminate() in CLEAN_EXITS
    [message] = maildir_messages(tmp_path / "Maildir")
    assert b"Subject: default" in message


def test_mbox(twistd, tmp_path):
    """--mbox appends mboxrd-quoted messages to one file."""
    mbox = tmp_path / "inbox.mbox"
    server = twistd("--mbox", str(mbox))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: 1\r\n\r\nFrom the start\r\n")
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: 2\r\n\r\nbye\r\n")
    assert server.terminate() in CLEAN_EXITS
    data = mbox.read_bytes()
    assert data.startswith(b"From a@x.test ")
    assert data.count(b"\n\nFrom a@x.test ") == 1
    assert b"\n>From the start\n" in data
    assert data.endswith(b"\nbye\n\n")


def read_reply(sock_file) -> List[str]:
    """Read one (possibly multi-line) SMTP reply from a socket file."""
    lines = []
    while True:
        line = sock_file.readline().decode()
        assert line, "connection closed while waiting for a reply"
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return lines


def test_sigterm_during_transaction_loses_nothing(twistd, tmp_path):
    """SIGTERM mid-DATA: no new connections, the transaction finishes with 250, the message is stored, twistd exits."""
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--close-timeout", "20")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        f = sock.makefile("rb")
        assert read_reply(f)[0].startswith("220")
        for command, code in [(b"EHLO raw.test", "250"), (b"MAIL FROM:<a@x.test>", "250"),
                              (b"RCPT TO:<b@x.test>", "250"), (b"DATA", "354")]:
            sock.sendall(command + b"\r\n")
            assert read_reply(f)[-1].startswith(code), command
        sock.sendall(b"Subject: interrupted\r\n\r\nfirst half\r\n")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"Received SIGTERM")
        server.wait_for(r"stopped listening on")  # logged once the listening socket is closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()
        assert server.proc.poll() is None  # still running: our transaction is in progress
        sock.sendall(b"second half\r\n.\r\n")
        assert read_reply(f)[-1].startswith("250 ")
        assert read_reply(f)[-1].startswith("421 ")  # then the server says goodbye
    assert server.proc.wait(timeout=TIMEOUT) in CLEAN_EXITS
    [message] = maildir_messages(maildir)
    assert message.endswith(b"\nSubject: interrupted\n\nfirst half\nsecond half\n")


def test_auth_file(twistd, tmp_path):
    """--auth file: checks logins against a password file; mail needs a login; Received says ESMTPA."""
    users = tmp_path / "users.txt"
    users.write_text("alice:s3cret\n")
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--auth", f"file:{users}", "--allow-insecure-auth")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert "PLAIN" in client.esmtp_features.get("auth", "")
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("a@x.test", ["b@x.test"], b"Subject: no\r\n\r\nx\r\n")
        assert refused.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice", "wrong")
        assert failed.value.smtp_code == 535
        assert client.login("alice", "s3cret")[0] == 235
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: yes\r\n\r\nx\r\n")
    assert server.terminate() in CLEAN_EXITS
    [message] = maildir_messages(maildir)
    assert b" with ESMTPA id " in message and b"Subject: yes" in message
    assert "s3cret" not in server.log()


def test_starttls_with_given_certificate(twistd, tmp_path):
    """--tls-key/--tls-cert: STARTTLS presents that certificate; Received says ESMTPS."""
    ca = make_ca()
    leaf = ca.issue("mx.test")
    key = write_pem(str(tmp_path), "key.pem", leaf.key_pem)
    cert = write_pem(str(tmp_path), "cert.pem", leaf.cert_pem)
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--name", "mx.test", "--tls-key", key, "--tls-cert", cert)
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client._host = "mx.test"  # the name smtplib checks the certificate against
        client.starttls(context=context)
        assert client.sock.getpeercert()["subject"] == ((("commonName", "mx.test"),),)
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: tls\r\n\r\nsecret\r\n")
    assert server.terminate() in CLEAN_EXITS
    [message] = maildir_messages(maildir)
    assert b" with ESMTPS id " in message and message.endswith(b"\nsecret\n")


def test_lmtp(twistd, tmp_path):
    """--lmtp speaks LMTP: LHLO, and one reply per recipient after the body."""
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--lmtp")
    assert "txsmtpsrv LMTP listening on" in server.log()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        f = sock.makefile("rb")
        assert " LMTP" in read_reply(f)[0]
        for command, code in [(b"LHLO client.test", "250"), (b"MAIL FROM:<a@x.test>", "250"),
                              (b"RCPT TO:<b@x.test>", "250"), (b"RCPT TO:<c@x.test>", "250"),
                              (b"DATA", "354")]:
            sock.sendall(command + b"\r\n")
            assert read_reply(f)[-1].startswith(code), command
        sock.sendall(b"Subject: lmtp\r\n\r\nhi\r\n.\r\n")
        assert read_reply(f)[-1].startswith("250 2.0.0 OK: message accepted for <b@x.test>")
        assert read_reply(f)[-1].startswith("250 2.0.0 OK: message accepted for <c@x.test>")
        sock.sendall(b"QUIT\r\n")
        assert read_reply(f)[-1].startswith("221")
    assert server.terminate() in CLEAN_EXITS
    [message] = maildir_messages(maildir)
    assert b" with LMTP id " in message and message.endswith(b"\nSubject: lmtp\n\nhi\n")


POLICY = '''
import os
from txsmtpsrv import Hooks, SMTPError

class Policy(Hooks):
    def on_connect(self, session):
        path = os.environ.get("TXSMTPSRV_TEST_PIDS")
        if path:
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\\n")

    def on_rcpt_to(self, session, address):
        if address.local_part == "blocked":
            raise SMTPError(550, "No such user here", "5.1.1")
'''


def workers_with_policy(tmp_path: Path, *extra: str) -> Tuple[Twistd, Path]:
    """C{--workers 2} on 127.0.0.1 with L{POLICY}'s hooks, which note each serving pid in the file returned."""
    (tmp_path / "mypolicy.py").write_text(POLICY)
    pids_file = tmp_path / "pids.txt"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--workers", "2",
                               "--hooks", "mypolicy:Policy", *extra],
                    pythonpath=[str(tmp_path)], env={"TXSMTPSRV_TEST_PIDS": str(pids_file)})
    return server, pids_file


def test_hooks_module_from_working_directory(twistd, tmp_path):
    """--hooks loads a module from the current directory; its policy runs before the Maildir delivery."""
    (tmp_path / "mypolicy.py").write_text(POLICY)
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--hooks", "mypolicy:Policy")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        refused = client.sendmail("a@x.test", ["ok@x.test", "blocked@x.test"], b"Subject: p\r\n\r\nx\r\n")
        assert refused == {"blocked@x.test": (550, b"5.1.1 No such user here")}
    assert server.terminate() in CLEAN_EXITS
    [message] = maildir_messages(maildir)
    assert b"\tfor <ok@x.test>; " in message


def test_workers_share_one_port(twistd, tmp_path):
    """--workers 2: connections to one port are served by two processes; SIGTERM stops both."""
    (tmp_path / "mypolicy.py").write_text(POLICY)
    pids_file = tmp_path / "pids.txt"
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), "--hooks", "mypolicy:Policy", "--workers", "2",
                    pythonpath=[str(tmp_path)], env={"TXSMTPSRV_TEST_PIDS": str(pids_file)})
    worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
    server.wait_for(rf"listening on 127\.0\.0\.1:{server.port} \(adopted fd 3\), pid {worker}")
    count = 30
    for i in range(count):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            client.sendmail("a@x.test", ["b@x.test"], f"Subject: {i}\r\n\r\nx\r\n".encode())
    pids = [int(line) for line in pids_file.read_text().split()]
    assert len(pids) == count
    assert set(pids) == {server.proc.pid, worker}
    assert len(maildir_messages(maildir)) == count
    assert server.terminate() in CLEAN_EXITS
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the parent waited for its worker before exiting
