# -*- test-case-name: tests.test_haproxy -*-
"""
Helpers shared by the tests that run real programs: swaks, openssl, HAProxy.

A missing program fails the test under CI (L{under_ci}: tests/run.sh installs
it there) and skips it otherwise. HAProxy is started with an already
listening frontend socket (C{bind fd@N}), so there are no fixed ports and no
start-up race, and it is always stopped (SIGTERM, then kill).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest
from typing import Any, List

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial import unittest as trial

__all__ = [
    "HAProxy", "HAProxyTestCase", "haproxy_config", "haproxy_path", "require", "stop_process", "tool_path", "under_ci",
]


def under_ci() -> bool:
    """
    Whether the tests run under CI: C{CI} set to anything but a way of saying
    no (empty, C{0}, C{false}, C{no}, C{off}, any case). CI systems set
    C{true}, C{1} or their own name (Woodpecker: C{woodpecker}); C{CI=false}
    is a developer turning it off. tests/run.sh reads it the same way.
    """
    return reads_as_ci(os.environ.get("CI", ""))


def reads_as_ci(value: str) -> bool:
    """L{under_ci}'s rule for one value of C{CI}."""
    # ASCII white space only, as bash's [[:space:]] (str.strip() would also take \x1c-\x1f).
    return value.strip(" \t\n\r\x0b\x0c").lower() not in ("", "0", "false", "no", "off")


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must have fired; failures are raised."""
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def require(path: str | None, missing: str, skip: str) -> str:
    """C{path}; if it is None, fail with C{missing} under CI (L{under_ci}), else skip with C{skip}."""
    if path is None:
        if under_ci():
            raise AssertionError(missing)
        raise unittest.SkipTest(skip)
    return path


def _find(name: str, fallback_dir: str | None) -> str | None:
    """C{name} on PATH, else in C{fallback_dir} if executable there."""
    found = shutil.which(name)
    if found or fallback_dir is None:
        return found
    path = os.path.join(fallback_dir, name)
    return path if os.access(path, os.X_OK) else None


def tool_path(name: str, fallback_dir: str | None = None) -> str:
    """A command-line tool (on PATH, else in C{fallback_dir}); fail under CI if missing, else skip."""
    return require(
        _find(name, fallback_dir),
        f"{name} is not installed; tests/run.sh installs it (apt-get install {name})",
        f"{name} not installed",
    )


def haproxy_path() -> str:
    """The haproxy binary (on PATH or in /usr/sbin); fail under CI if missing, else skip."""
    return require(
        _find("haproxy", "/usr/sbin"),
        "haproxy is not installed (apt-get install haproxy); required when CI is set",
        "haproxy is not installed",
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM C{proc}, then kill it if it lingers past C{timeout} seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


_HAPROXY_CONFIG = """\
global
    maxconn 64
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client {timeout}s
    timeout server {timeout}s

frontend fe
    bind fd@{fd}{bind_options}
    unique-id-format %{{+X}}o%ci:%cp_%Ts_%rt
    default_backend be

backend be
    server smtp 127.0.0.1:{port} {server_options}
"""


def haproxy_config(fd: int, port: int, server_options: str, bind_options: str = "", timeout: int = 10) -> str:
    """A TCP-mode config: frontend on inherited socket C{fd}, one backend at 127.0.0.1:C{port}."""
    return _HAPROXY_CONFIG.format(
        fd=fd, port=port, server_options=server_options, bind_options=bind_options, timeout=timeout
    )


class HAProxy:
    """A running haproxy in front of 127.0.0.1:C{port}; C{self.port} is its frontend port."""

    def __init__(self, executable: str, directory: str, port: int, server_options: str,
                 bind_options: str = "", family: int = socket.AF_INET, timeout: int = 10) -> None:
        self.frontend = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.frontend.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
            self.frontend.listen(16)
            fd = self.frontend.fileno()
            config = os.path.join(directory, "haproxy.cfg")
            with open(config, "w") as f:
                f.write(haproxy_config(fd, port, server_options, bind_options, timeout))
            self.log_path = os.path.join(directory, "haproxy.log")
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen([executable, "-f", config, "-db"], pass_fds=[fd],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            self.frontend.close()
            raise
        self.port: int = self.frontend.getsockname()[1]

    def log(self) -> str:
        """What haproxy printed so far, for failure messages."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop haproxy (SIGTERM, then kill) and close the frontend socket."""
        try:
            stop_process(self.proc, 5)
        finally:
            self.frontend.close()

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


class HAProxyTestCase(trial.TestCase):
    """Base for trial tests with a real HAProxy: required under CI, a temp dir, bounded cleanup."""

    timeout = 60
    tmp_prefix = "txsmtpsrv-haproxy-"
    proxy: HAProxy | None = None

    def setUp(self) -> None:
        self.haproxy = haproxy_path()
        self.tmp = tempfile.mkdtemp(prefix=self.tmp_prefix)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start_haproxy(self, port: int, server_options: str, **kw: Any) -> HAProxy:
        """Start haproxy in front of 127.0.0.1:C{port}, stopped at cleanup."""
        self.proxy = HAProxy(self.haproxy, self.tmp, port, server_options, **kw)
        self.addCleanup(self.proxy.stop)
        return self.proxy

    def haproxy_log(self) -> str:
        """What HAProxy printed, for failure messages."""
        return self.proxy.log() if self.proxy is not None else "(no log)"

    async def drain(self, factory: Any) -> None:
        """Wait (bounded) until every server-side connection has gone, for a clean reactor."""
        for _ in range(500):
            if not factory.protocols:
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"server connections still open: {list(factory.protocols)}")
