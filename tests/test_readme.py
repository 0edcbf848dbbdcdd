# -*- test-case-name: tests.test_readme -*-
"""
The README's code does what the README says.

The Embedding example is taken from README.md itself and run as a real
process (only its port becomes C{tcp:0}, announced on stdout, and C{/tmp/}
a temporary directory): it stores accepted mail, removes the file of a
message whose client vanished, and on SIGTERM lets a message in flight
finish, answers an idle client 421, and exits.  The set-up section's
commands are the ones C{tests/run.sh} and C{.ci/run} use.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from typing import Any, Iterator, List

import pytest

from tests._support import stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
TIMEOUT = 15.0
MESSAGE = b"From: a@client.test\r\nTo: b@example.test\r\nSubject: readme\r\n\r\nHello from the README test.\r\n"


def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(title: str) -> str:
    """The text of the README section headed C{title} (up to the next heading of any level)."""
    lines: List[str] = []
    inside = fenced = False
    for line in readme().splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        heading = not fenced and re.match(r"#+ (.*)$", line.rstrip("\n"))
        if heading:
            if inside:
                break
            inside = heading.group(1) == title
        elif inside:
            lines.append(line)
    assert lines, f"README has no section {title!r}"
    return "".join(lines)


def code_blocks(text: str, language: str) -> List[str]:
    return re.findall(rf"(?ms)^```{language}\n(.*?)^```", text)


def embedding_program(tmp_dir: str) -> str:
    """The Embedding example, listening on a free port that it prints, storing into C{tmp_dir}."""
    (code,) = code_blocks(section("Embedding"), "python")
    listen = 'await server.listen("tcp:2525:interface=127.0.0.1")'
    assert listen in code
    code = code.replace(listen, 'port = await server.listen("tcp:0:interface=127.0.0.1")\n'
                                '    print("listening on port", port.getHost().port, flush=True)')
    assert 'f"/tmp/{session.id}.eml"' in code
    return code.replace('f"/tmp/{session.id}.eml"', f'f"{tmp_dir}/{{session.id}}.eml"')


class Program:
    """The example running as a process; its stdout lines read as needed."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=os.path.dirname(path))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = re.match(r"listening on port (\d+)", line)
        assert m, f"unexpected first line {line!r}"
        self.port = int(m.group(1))

    def connect(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=TIMEOUT)
        client.ehlo("client.test")
        return client


@pytest.fixture
def program(tmp_path: Any) -> Iterator[Program]:
    path = tmp_path / "embedding.py"
    path.write_text(embedding_program(str(tmp_path / "mail")))
    (tmp_path / "mail").mkdir()
    running = Program(str(path))
    try:
        yield running
    finally:
        stop_process(running.proc, 10)
        if running.proc.stdout is not None:
            running.proc.stdout.close()


def stored(tmp_path: Any) -> List[bytes]:
    return [p.read_bytes() for p in sorted((tmp_path / "mail").iterdir())]


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_embedding_stores_and_rejects(program: Program, tmp_path: Any) -> None:
    """The example accepts mail for example.test into a file and refuses other domains with 550 5.1.2."""
    with program.connect() as client:
        assert client.mail("a@client.test")[0] == 250
        code, text = client.rcpt("b@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.1.2")
        assert client.rcpt("b@example.test")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    assert [m.replace(b"\r\n", b"\n") for m in stored(tmp_path)] == [MESSAGE.replace(b"\r\n", b"\n")]


def test_embedding_removes_partial_file(program: Program, tmp_path: Any) -> None:
    """A client that vanishes in the middle of DATA leaves no file behind."""
    with socket.create_connection(("127.0.0.1", program.port), timeout=TIMEOUT) as sock:
        f = sock.makefile("rwb")
        assert f.readline().startswith(b"220")
        f.write(b"HELO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        f.flush()
        assert [f.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        f.write(b"Subject: cut short\r\n\r\n" + b"x" * 10000 + b"\r\n")
        f.flush()
        wait_until(lambda: stored(tmp_path), "the partial file to appear")
        f.close()
    wait_until(lambda: not stored(tmp_path), "the partial file to be removed")


def test_embedding_graceful_sigterm(program: Program, tmp_path: Any) -> None:
    """SIGTERM: the message in flight finishes with 250 and is kept, an idle client gets 421, the process exits 0."""
    idle = program.connect()
    busy = socket.create_connection(("127.0.0.1", program.port), timeout=TIMEOUT)
    f = busy.makefile("rwb")
    assert f.readline().startswith(b"220")
    f.write(b"HELO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    f.flush()
    assert [f.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
    f.write(b"Subject: in flight\r\n\r\nfirst half\r\n")
    f.flush()
    wait_until(lambda: stored(tmp_path), "the message file to appear")

    program.proc.send_signal(signal.SIGTERM)
    code, _ = idle.getreply()  # the idle client is told at once, not just dropped
    assert code == 421
    idle.close()
    f.write(b"second half\r\n.\r\n")
    f.flush()
    assert f.readline()[:3] == b"250"
    assert f.readline()[:3] == b"421"  # then the transaction is over: goodbye
    f.close()
    busy.close()
    assert program.proc.wait(timeout=TIMEOUT) == 0
    assert [m.replace(b"\r\n", b"\n") for m in stored(tmp_path)] == [b"Subject: in flight\n\nfirst half\nsecond half\n"]


def test_setup_commands() -> None:
    """The two set-up commands use a virtual environment; .ci/run runs the second."""
    commands = code_blocks(section("Set-up: two commands"), "sh")[0]
    lines = [line for line in commands.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "{ python3 -m venv .venv || { apt-get update && apt-get install -y python3-venv && python3 -m venv .venv; }; }"
        " && .venv/bin/pip install -e . && .venv/bin/twistd -n --pidfile= smtpsrv",
        "bash tests/run.sh",
    ]
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        assert "bash tests/run.sh" in f.read()
    with open(os.path.join(REPO, ".gitignore"), encoding="utf-8") as f:
        assert "/.venv/" in f.read().split()


def test_no_dangling_section_links() -> None:
    """Every in-page link (#anchor) names a heading of the README."""
    text = readme()
    prose = re.sub(r"(?ms)^```.*?^```", "", text)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"(?m)^#+ (.*)$", prose)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, links - anchors
    assert "see \"Knowing the real client\"" not in text
