"""
A benchmark's server process: start a ``_peers.py`` server (natively, under
``taskset`` or under valgrind: the caller gives the command line), pin it to a
core, read its ``READY`` line, check that it is still alive, and always stop it,
keeping what it wrote to stderr for the report. bench.py, instructions.py and
tls.py all start their servers through it, so their failure messages and their
clean-up (an ``atexit`` hook for whatever an error left running) are alike.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
from typing import ClassVar

from _common import NotReady, wait_ready


class ServerError(Exception):
    """A server process did not start, died, or a control command (callgrind, strace) failed."""


class ServerProcess:
    """One server subprocess, started at construction; L{stop} it (an C{atexit} hook stops what is left)."""

    live: ClassVar[set[ServerProcess]] = set()

    def __init__(self, label: str, argv: list[str], *, env: dict[str, str], cwd: str,
                 cpu: int | None = None) -> None:
        self.label = label
        self.port = 0
        self.server_pid = 0  # from the READY line: the process that serves (smtp-sink's is a child)
        self.detail = ""
        self.stderr_file = tempfile.TemporaryFile()
        self.stderr_text = ""  # what it wrote to stderr, once stopped
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr_file, env=env, cwd=cwd)
        ServerProcess.live.add(self)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})

    @property
    def pid(self) -> int:
        """The serving process, whose /proc figures are read (smtp-sink serves from a child)."""
        return self.server_pid or self.proc.pid

    def wait_ready(self, timeout: float, *, mypyc: bool = False) -> None:
        """
        Port, pid and detail from the READY line (L{wait_ready}); L{ServerError} if none
        comes within C{timeout} s, if the pid it names is not running, or if C{mypyc}
        asks for the compiled build and the server does not run it.
        """
        try:
            self.port, self.server_pid, self.detail = wait_ready(self.proc, timeout)
        except NotReady as e:
            exited = self.proc.returncode is not None
            raise ServerError(f"{self.label}: {e}" + (f"\n{self.read_stderr()}" if exited else "")) from None
        if self.server_pid != self.proc.pid and not os.path.exists(f"/proc/{self.server_pid}/stat"):
            raise ServerError(f"{self.label}: READY names pid {self.server_pid}, which is not running")
        if mypyc and "build=mypyc" not in self.detail:
            raise ServerError(f"{self.label}: the server does not run the mypyc build ({self.detail})")

    def check_alive(self) -> None:
        """L{ServerError} with its stderr if the server has exited (a load may have killed it)."""
        if self.proc.poll() is not None:
            raise ServerError(f"{self.label}: died with {self.proc.returncode}\n{self.read_stderr()}")

    def read_stderr(self, head: int = 8000, tail: int = 2000) -> str:
        """What the server wrote to stderr: the first C{head} characters (the first error) and the last C{tail}."""
        self.stderr_file.flush()
        self.stderr_file.seek(0)
        text = self.stderr_file.read().decode(errors="replace")
        if len(text) <= head + tail:
            return text
        if not head:
            return text[-tail:]
        return f"{text[:head]}\n... ({len(text) - head - tail} characters left out) ...\n{text[-tail:]}"

    def stop(self, grace: float = 3.0, head: int = 8000, tail: int = 2000) -> None:
        """
        Terminate, then kill after C{grace} s (0: kill at once, nothing to flush); keep
        L{read_stderr}C{(head, tail)} in C{stderr_text}. A second call does nothing.
        """
        if self.stderr_file.closed:
            return
        if self.proc.poll() is None:
            if grace > 0:
                self.proc.terminate()
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr_text = self.read_stderr(head, tail)
        self.stderr_file.close()
        ServerProcess.live.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        """Stop every server still running (at exit, after an error or Ctrl-C)."""
        for srv in list(cls.live):
            try:
                srv.stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                srv.proc.kill()


atexit.register(ServerProcess.stop_all)
