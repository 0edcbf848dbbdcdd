# -*- test-case-name: tests.test_example_haproxy_cfg -*-
"""
examples/haproxy.cfg as shipped: valid for the real C{haproxy -c}, safe
(loopback only), and working in front of examples/behind_haproxy.py.

The end-to-end test changes only the addresses: the frontend's C{bind}
line becomes an inherited socket (C{fd@N}, so no port is guessed) and the
C{smtp1} server line points at the example's port; everything else
(PROXY v2 options, health checks, timeouts, logging) runs as shipped.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from typing import Any, List

from tests._support import haproxy_path, stop_process
from tests.test_examples import (  # noqa: F401 (fixture)
    EXAMPLES, LISTENING, START_TIMEOUT, mail_through_haproxy, run_example)

CONFIG = os.path.join(EXAMPLES, "haproxy.cfg")


def active_lines() -> List[str]:
    """The configuration's lines without comments and blank lines, stripped."""
    with open(CONFIG, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def test_haproxy_check_passes_as_shipped() -> None:
    """haproxy -c -f examples/haproxy.cfg accepts the file exactly as shipped."""
    result = subprocess.run([haproxy_path(), "-c", "-f", CONFIG], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output


def test_shipped_config_binds_loopback_only() -> None:
    """As shipped, HAProxy listens on 127.0.0.1 only; every server is on loopback; no certificate is needed."""
    binds = [line for line in active_lines() if line.startswith("bind ")]
    assert binds == ["bind 127.0.0.1:2500"]
    servers = [line.split()[2] for line in active_lines() if line.startswith("server ")]
    assert servers and all(s.startswith("127.0.0.1:") for s in servers)
    assert not any(" crt " in f" {line} " for line in active_lines())


def test_production_edits_are_explained() -> None:
    """The comments say how to listen on port 25 and where the certificate goes for 465."""
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"#\s+bind :25\b", text)
    assert re.search(r"#\s+bind :::25 v6only", text)
    assert re.search(r"#\s+bind :465 ssl crt ", text)
    assert text.count("PRODUCTION:") >= 4


def test_shipped_config_in_front_of_behind_haproxy(run_example: Any, tmp_path: Any) -> None:
    """Through the shipped config (addresses swapped), the example logs the real client and gets the message."""
    haproxy = haproxy_path()
    example = run_example("behind_haproxy.py", "tcp:0:interface=127.0.0.1", "127.0.0.1/32")
    port = int(example.wait_for(LISTENING, timeout=START_TIMEOUT).group(1))

    frontend = socket.socket()
    frontend.bind(("127.0.0.1", 0))
    frontend.listen(16)
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read()
    text, binds = re.subn(r"(?m)^(\s+)bind 127\.0\.0\.1:2500$", rf"\1bind fd@{frontend.fileno()}", text)
    text, servers = re.subn(r"(?m)^(\s+server smtp1) 127\.0\.0\.1:2525 ", rf"\1 127.0.0.1:{port} ", text)
    assert (binds, servers) == (1, 1)
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    log_path = tmp_path / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], pass_fds=[frontend.fileno()],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        mail_through_haproxy(example, frontend.getsockname()[1], log_path.read_text)
    finally:
        stop_process(proc, 5)
        frontend.close()
