# -*- test-case-name: tests.test_cycles_loopback -*-
"""
Over real sockets, with real clients: a finished connection leaves nothing
for Python's cyclic garbage collector and nothing alive.

The in-memory checks (C{tests/test_cycles.py}) stand in for Twisted's TCP
transport; this is the whole path -- Twisted's TCP server transport, the
direct reply writer, our STARTTLS layer over OpenSSL, a client that vanishes
mid-message -- with C{smtplib} as the client. The server runs in a process
of its own (C{tests/_cycle_server.py}) that reports, per scenario, the
txsmtpsrv objects only the collector could free and those still alive.
"""

from __future__ import annotations

import json
import os
import select
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

from tests._certs import unverified_client_context
from tests._support import stop_process

ROOT = Path(__file__).resolve().parent.parent
BODY = b"Subject: cycles\r\n\r\n" + b"x" * 70 + b"\r\n"


class CycleServer:
    """The server process and its control pipe."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_cycle_server.py")], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""
        try:
            line = self._readline()
            assert line.startswith("listening "), line
            self.port, self.smtps_port, self.proxy_port = (int(p) for p in line.split()[1:])
        except BaseException:
            stop_process(self.proc, 10)
            raise

    def _readline(self, timeout: float = 30) -> str:
        """The server's next line, or a failure after C{timeout} seconds (never a hang)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise AssertionError(f"no answer from the server in {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the server exited ({self.proc.wait(10)})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode() + "\n"

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._readline()

    def left_after(self, scenario: Callable[["CycleServer"], None]) -> Dict[str, Any]:
        """Run C{scenario(self)} once to warm up, then again counted: what it left."""
        scenario(self)
        assert self._ask("start") == "started\n"
        scenario(self)
        report: Dict[str, Any] = json.loads(self._ask("report"))
        return report


@pytest.fixture(scope="module")
def server() -> Iterator[CycleServer]:
    s = CycleServer()
    yield s
    stop_process(s.proc, 10)


def messages_and_quit(server: CycleServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        for _ in range(3):
            client.sendmail("a@x.test", ["b@y.test"], BODY)


def starttls(server: CycleServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=unverified_client_context())
        client.sendmail("a@x.test", ["b@y.test"], BODY)


def implicit_tls(server: CycleServer) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", server.smtps_port, timeout=10, context=unverified_client_context()) as client:
        client.sendmail("a@x.test", ["b@y.test"], BODY)


def behind_proxy(server: CycleServer) -> None:
    with socket.create_connection(("127.0.0.1", server.proxy_port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
        client = smtplib.SMTP(timeout=10)
        client.sock = sock
        client.file = None
        assert client.getreply()[0] == 220
        client.sendmail("a@x.test", ["b@y.test"], BODY)
        client.quit()


def refused_recipient(server: CycleServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        client.mail("a@x.test")
        assert client.rcpt("nobody@refused.test")[0] == 550
        assert client.rset()[0] == 250


def gone_mid_message(server: CycleServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"HELO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        for _ in range(4):
            reader.readline()
        sock.sendall(b"Subject: cut\r\n\r\nhalf a bo")
        reader.close()


def gone_without_quit(server: CycleServer) -> None:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    client.sendmail("a@x.test", ["b@y.test"], BODY)
    client.close()


@pytest.mark.parametrize("scenario", [messages_and_quit, starttls, implicit_tls, behind_proxy, refused_recipient,
                                      gone_mid_message, gone_without_quit], ids=lambda f: f.__name__)
def test_nothing_left(server: CycleServer, scenario: Callable[[CycleServer], None]) -> None:
    report = server.left_after(scenario)
    assert report == {"garbage": [], "alive": [], "open": 0}
