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


def test_twistd_limit_flags_over_loopback(twistd, tmp_path):  # noqa: F811
    """A real twistd with --greeting-delay and --max-clients-per-ip: early talkers and the 3rd connection
    from 127.0.0.2 are refused, 127.0.0.3 is served; the refusal is logged once."""
    import socket

    server = twistd("--maildir", str(tmp_path / "Maildir"), "--no-reverse-lookup", "--greeting-delay", "0.3",
                    "--max-clients-per-ip", "2")

    def connect(source: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT, source_address=(source, 0))

    with connect("127.0.0.4") as early:
        early.sendall(b"EHLO spam\r\n")
        assert early.recv(200).startswith(b"554 5.7.1 ")
    held = [connect("127.0.0.2") for _ in range(2)]
    try:
        for s in held:
            assert s.recv(200).startswith(b"220 ")  # after the 0.3 s delay
        for _ in range(3):
            with connect("127.0.0.2") as third:
                assert third.recv(200).startswith(b"421 4.7.0 ")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT, source_address=("127.0.0.3", 0)) as c:
            assert c.ehlo("client.test")[0] == 250
    finally:
        for s in held:
            s.close()
    server.wait_for(r"refused connection from 127\.0\.0\.4: early_talker")
    server.wait_for(r"refused connection from 127\.0\.0\.2: max_clients_per_ip")
    assert server.terminate() in CLEAN_EXITS
    assert server.log().count("refused connection from 127.0.0.2: max_clients_per_ip") == 1
