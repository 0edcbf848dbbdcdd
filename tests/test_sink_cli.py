# -*- test-case-name: tests.test_sink_cli -*-
"""
C{python -m txsmtpsrv}, run as a user runs it: a subprocess on a real
loopback socket, fed by smtplib and swaks, stopped with SIGINT or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, List, Optional


from tests._support import tool_path
from txsmtpsrv._sink import DEFAULT_LISTEN, SinkOptions

MESSAGE = b"From: me@example.test\r\nSubject: sink test\r\n\r\nthe body text\r\n"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Sink:
    """A running C{python -m txsmtpsrv}; C{port} once it said where it listens."""

    def __init__(self, *args: str) -> None:
        # SIGINT as a terminal gives it: a suite started in the background (`cmd &`) runs with
        # SIGINT ignored, which a child inherits, and Twisted then leaves Ctrl-C alone, as it should.
        self.proc = subprocess.Popen([sys.executable, "-m", "txsmtpsrv", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=_default_sigint)
        self.err: List[str] = []
        self.out: List[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True)]
        for reader in self._readers:
            reader.start()
        self.port: Optional[int] = None

    @staticmethod
    def _read(stream: Any, lines: List[str]) -> None:
        for line in stream:
            lines.append(line.decode("utf-8", "replace"))

    def wait_listening(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.err:
                if " listening on " in line:
                    self.port = int(line.rsplit(":", 1)[1].split()[0]) if "127.0.0.1:" in line else 0
                    return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"the sink did not start: {''.join(self.err)}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            raise AssertionError(f"the sink did not stop on {sig}: {''.join(self.err)}") from None
        for reader in self._readers:
            reader.join(timeout)
        return code

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    def wait_output(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.stdout and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.stdout


LISTEN = "tcp:0:interface=127.0.0.1"


def test_defaults_are_loopback_8025():
    options = SinkOptions()
    options.parseOptions([])
    assert options["listen"] == [DEFAULT_LISTEN] == ["tcp:8025:interface=127.0.0.1"]
    assert options["maildir"] is None and not options["lmtp"]


def test_default_listens_on_loopback_8025():
    """With no --listen the sink is on 127.0.0.1:8025 (when that port is free on this machine)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8025))
        except OSError:
            import pytest
            pytest.skip("port 8025 is in use on this machine")
    sink = Sink()
    try:
        assert sink.wait_listening() == 8025
        with smtplib.SMTP("127.0.0.1", 8025, timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        assert sink.stop() == 0


def test_smtplib_message_printed_then_sigint_stops_cleanly():
    sink = Sink("--listen", LISTEN)
    try:
        port = sink.wait_listening()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("me@example.test", ["you@example.test", "other@example.test"], MESSAGE)
        out = sink.wait_output("Subject: sink test")
        assert "MAIL FROM:<me@example.test>\nRCPT TO:<you@example.test>\nRCPT TO:<other@example.test>\n" in out
        assert "Subject: sink test\n" in out and "From: me@example.test\n" in out
        assert "the body text" not in out  # headers only by default
        assert f"[{len(MESSAGE)} bytes]" in out
    finally:
        code = sink.stop(signal.SIGINT)
    assert code == 0
    assert any("stopping" in line for line in sink.err)
    assert not any("Traceback" in line for line in sink.err)


def test_swaks_message_and_sigterm():
    swaks = tool_path("swaks")
    sink = Sink("-l", LISTEN, "--body")
    try:
        port = sink.wait_listening()
        done = subprocess.run([swaks, "--server", f"127.0.0.1:{port}", "--to", "rcpt@example.test",
                               "--from", "swaks@example.test", "--header", "Subject: from swaks",
                               "--body", "swaks body line"], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        out = sink.wait_output("swaks body line")
        assert "MAIL FROM:<swaks@example.test>\nRCPT TO:<rcpt@example.test>\n" in out
        assert "Subject: from swaks" in out and "swaks body line" in out
    finally:
        code = sink.stop(signal.SIGTERM)
    assert code == 0


def test_maildir_stores_and_prints():
    with tempfile.TemporaryDirectory() as tmp:
        maildir = os.path.join(tmp, "Maildir")
        sink = Sink("-l", LISTEN, "--maildir", maildir)
        try:
            port = sink.wait_listening()
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("me@example.test", ["you@example.test"], MESSAGE)
            sink.wait_output("Subject: sink test")
            [name] = os.listdir(os.path.join(maildir, "new"))
            with open(os.path.join(maildir, "new", name), "rb") as f:
                stored = f.read()
            assert stored.endswith(MESSAGE.replace(b"\r\n", b"\n")) and b"Received: " in stored
        finally:
            assert sink.stop() == 0


def test_lmtp_on_a_unix_socket():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lmtp.sock")
        sink = Sink("--lmtp", "-l", f"unix:{path}")
        try:
            sink.wait_listening()
            with smtplib.LMTP(path) as client:
                client.sendmail("me@example.test", ["box@example.test"], MESSAGE)
            out = sink.wait_output("Subject: sink test")
            assert "(LHLO " in out and "RCPT TO:<box@example.test>" in out
        finally:
            assert sink.stop() == 0


def test_implicit_tls_listener_with_given_certificate():
    """-l smtps:... speaks TLS from the first byte with --tls-key/--tls-cert; the client verifies it."""
    from txsmtpsrv.testing import test_ca

    config = test_ca().server_config(["sink.test"])
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
        for path, data in ((key, config.key), (cert, config.cert)):
            with open(path, "wb") as f:
                f.write(data)
        sink = Sink("-l", "smtps:" + LISTEN, "--tls-key", key, "--tls-cert", cert)
        try:
            port = sink.wait_listening()
            with smtplib.SMTP_SSL("localhost", port, context=test_ca().client_context(), timeout=10) as client:
                client.sendmail("me@example.test", ["you@example.test"], MESSAGE)
            out = sink.wait_output("Subject: sink test")
            assert ", TLSv1.3)" in out or ", TLSv1.2)" in out
        finally:
            assert sink.stop() == 0
    assert not any("development" in line for line in sink.err)


def test_ctrl_c_with_an_idle_client_answers_421_and_exits():
    sink = Sink("-l", LISTEN)
    try:
        port = sink.wait_listening()
        client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        client.ehlo()
    finally:
        code = sink.stop(signal.SIGINT)
    assert code == 0
    assert client.getreply()[0] == 421
    client.close()


def test_bad_option_is_one_line_and_status_2():
    done = subprocess.run([sys.executable, "-m", "txsmtpsrv", "--size", "lots"], capture_output=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode().startswith("python -m txsmtpsrv: ")
    assert b"Traceback" not in done.stderr and len(done.stderr.decode().splitlines()) == 2


def test_port_in_use_is_one_line_and_status_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "txsmtpsrv", "-l", f"tcp:{port}:interface=127.0.0.1"],
                              capture_output=True, timeout=60)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert f"python -m txsmtpsrv: cannot listen on tcp:{port}:interface=127.0.0.1: " in err
    assert "Traceback" not in err
