# -*- test-case-name: tests.test_auth_file_twistd -*-
"""
C{--auth file:} in a real C{twistd smtpsrv}: the file is read into memory
at start-up, re-read on SIGHUP, and re-read when it changes (looked at no
more than once a second) — checked with smtplib logins.
"""

from __future__ import annotations

import os
import signal
import smtplib
import time

import pytest

from tests.test_twistd import CLEAN_EXITS, TIMEOUT, twistd  # noqa: F401


def login(port: int, user: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        client.user, client.password = user, password
        try:
            return client.auth("PLAIN", client.auth_plain)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code


def test_auth_file_reloads_on_sighup_and_on_change(twistd, tmp_path):  # noqa: F811
    users = tmp_path / "users.txt"
    users.write_text("alice:first\n")
    server = twistd("--maildir", str(tmp_path / "Maildir"), "--auth", f"file:{users}", "--allow-insecure-auth",
                    "--auth-failure-delay", "0", "--max-auth-failures-per-ip", "0", "--no-reverse-lookup")
    assert login(server.port, "alice", "first") == 235
    # Same size, same inode, the old modification time: only SIGHUP can tell.
    stat = os.stat(users)
    with open(users, "r+") as f:
        f.write("alice:secnd\n")
    os.utime(users, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(1.1)
    assert login(server.port, "alice", "secnd") == 535  # not re-read: nothing it looks at changed
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(r"--auth file:.*users\.txt: 1 users")
    assert login(server.port, "alice", "secnd") == 235
    assert login(server.port, "alice", "first") == 535
    # A change it can see (size, mtime): re-read on the next login, no signal needed.
    users.write_text("alice:third\nbob:x\n")
    time.sleep(1.1)
    assert login(server.port, "alice", "third") == 235
    server.wait_for(r"--auth file:.*users\.txt: 2 users")
    assert server.terminate() in CLEAN_EXITS
    log = server.log()
    for secret in ("first", "secnd", "third"):
        assert secret not in log


def test_auth_file_bad_at_start_is_one_line(twistd, tmp_path):  # noqa: F811
    users = tmp_path / "users.txt"
    users.write_text("alice:$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA\n")
    with pytest.raises(AssertionError) as e:
        twistd("--maildir", str(tmp_path / "Maildir"), "--auth", f"file:{users}")
    assert "line 1: unsupported hash scheme argon2id" in str(e.value)
