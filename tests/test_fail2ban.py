# -*- test-case-name: tests.test_fail2ban -*-
"""
examples/fail2ban against the real thing: C{twistd smtpsrv} writes its log
while clients fail to authenticate, and Debian's C{fail2ban-regex} reads that
log with the shipped filter; it must find exactly the failures, with the
client's address, and nothing from the successful session.

Also C{--log-json}: the same events as JSON lines.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
from pathlib import Path
from typing import List

from tests._support import tool_path
from tests.test_twistd import CLEAN_EXITS, TIMEOUT, Twistd, read_reply

ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "examples" / "fail2ban" / "filter.d" / "txsmtpsrv.conf"
JAIL = ROOT / "examples" / "fail2ban" / "jail.d" / "txsmtpsrv.conf"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def dialogue(port: int, commands: List[str]) -> List[str]:
    """Send commands one by one over a real socket; the last line of each reply."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        f = sock.makefile("rb")
        read_reply(f)
        for command in commands:
            sock.sendall(command.encode() + b"\r\n")
            answers.append(read_reply(f)[-1])
    return answers


def fail2ban_ips(log: Path, filter_spec: str) -> List[str]:
    regex = tool_path("fail2ban-regex", "/usr/bin")
    done = subprocess.run([regex, "-r", "-o", "ip", str(log), filter_spec], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return done.stdout.decode().split()


def test_fail2ban_filter_matches_what_twistd_logs(tmp_path):
    """Failed AUTH (even with a crafted user name) and an abuse close match, with 127.0.0.1; success does not."""
    users = tmp_path / "users.txt"
    users.write_text("alice:s3cret\n")
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--auth", f"file:{users}",
                               "--allow-insecure-auth", "--max-auth-failures", "3"])
    try:
        answers = dialogue(server.port, ["EHLO a.test", f"AUTH PLAIN {plain('alice', 'wrong')}",
                                         f"AUTH PLAIN {plain('bob from 10.9.8.7 ', 'x')}",
                                         f"AUTH PLAIN {plain('alice', 's3cret')}", "QUIT"])
        assert [a[:3] for a in answers] == ["250", "535", "535", "235", "221"]
        answers = dialogue(server.port, ["EHLO b.test"] + [f"AUTH PLAIN {plain('root', str(i))}" for i in range(3)])
        assert [a[:3] for a in answers] == ["250", "535", "535", "535"]  # then 421 and close
        server.wait_for(r"refused connection from 127\.0\.0\.1: auth_failures")
        server.wait_for(r"connection closed: .* helo=b\.test")
        assert server.terminate() in CLEAN_EXITS
        log = tmp_path / "twistd.log"
        log.write_text(server.log())
    finally:
        server.kill()
    written = log.read_text()
    assert written.count("refused AUTH PLAIN from 127.0.0.1") == 5
    assert 'user="bob from 10.9.8.7 "' in written
    # 5 failed AUTH + 1 connection closed for too many failures, all from the real client.
    assert fail2ban_ips(log, str(FILTER)) == ["127.0.0.1"] * 6
    assert "10.9.8.7" not in fail2ban_ips(log, f"{FILTER}[mode=aggressive]")


def test_jail_names_the_filter():
    """The example jail enables the filter by its file name."""
    jail = JAIL.read_text()
    assert "[txsmtpsrv]" in jail and "filter   = txsmtpsrv" in jail and "enabled  = true" in jail


def test_log_json(tmp_path):
    """--log-json FILE writes every event as one JSON object per line, session id and fields included."""
    out = tmp_path / "events.json"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--log-json", str(out)])
    try:
        answers = dialogue(server.port, ["EHLO j.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA",
                                         "Subject: j\r\n\r\nbody\r\n.", "QUIT"])
        assert [a[:3] for a in answers] == ["250", "250", "250", "354", "250", "221"]
        server.wait_for(r"connection closed: .* helo=j\.test")
        assert server.terminate() in CLEAN_EXITS
        text = server.log()
        # No noise: factory reprs, "1 recipients".
        assert "Starting factory" not in text and "Stopping factory" not in text and " at 0x" not in text
        assert re.search(r"Stored message \S+ in \S+ \(session [0-9a-f]{16}, from <a@x\.test>, 1 recipient, ", text)
    finally:
        server.kill()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["protocol"] for e in events if " {protocol} listening on" in e.get("log_format", "")] == ["SMTP"]
    starts = [e for e in events if "twistd" in e.get("log_format", "") and "starting up" in e["log_format"]]
    assert len(starts) == 1  # twistd's replay of its early events is not written twice
    [closed] = [e for e in events if e.get("log_format", "").startswith("connection closed:")]
    assert closed["helo"] == "j.test" and closed["accepted"] == 1 and len(closed["session_id"]) == 16
    assert closed["remote_address"] == "127.0.0.1"
