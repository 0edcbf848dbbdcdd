"""
Counting what a ``_peers.py`` server executes for one load, for instructions.py
and ``tls.py --instructions``: the command line that starts it under
``valgrind --tool=callgrind`` with instrumentation off (start-up and imports are
neither slowed down nor counted), ``callgrind_control`` to zero and dump the
count around a load, the share of that count spent in CPython's cyclic
collector, and ``strace -c`` for system calls by name. Instruction counts do
not depend on what else runs on the machine, so they settle differences that
/proc CPU figures on a shared VM cannot.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from _server import ServerError

HERE = os.path.dirname(os.path.abspath(__file__))
#: Runs bench/_peers.py KIND as __main__, after installing a SIGUSR1 handler that runs a full
#: gc.collect(): every measured load then starts from the same collector state (all
#: generations empty), so a full collection that happens to fall inside one server's window
#: and not another's does not decide the comparison.
PEER_WRAPPER = (
    "import gc, runpy, signal, sys; "
    "signal.signal(signal.SIGUSR1, lambda *_: gc.collect()); "
    "sys.argv = sys.argv[1:]; sys.path[0] = __import__('os').path.dirname(sys.argv[0]); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
START_TIMEOUT = 600.0  # interpreter start under valgrind (uninstrumented) takes 10-60 s


def peer_argv(kind: str, *options: str, outdir: str | None) -> list[str]:
    """``_peers.py KIND OPTIONS`` behind L{PEER_WRAPPER}; under callgrind, dumping into C{outdir}, unless None."""
    command = [sys.executable, "-c", PEER_WRAPPER, os.path.join(HERE, "_peers.py"), kind, *options]
    if outdir is None:
        return command
    return [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={os.path.join(outdir, 'callgrind.out.%p')}",
    ] + command


def peer_env(tree: str) -> dict[str, str]:
    """
    This environment with C{tree} first on PYTHONPATH (the txsmtpsrv to measure) and
    hashing fixed (PYTHONHASHSEED=0: the same dict and set layouts from run to run).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def collect_garbage(pid: int) -> None:
    """Make a server started with L{PEER_WRAPPER} run a full ``gc.collect()`` (SIGUSR1)."""
    os.kill(pid, signal.SIGUSR1)


class Callgrind:
    """The count of one server under callgrind: zero it, dump it, read the total."""

    def __init__(self, pid: int, outdir: str) -> None:
        self.pid = pid
        self.outdir = outdir
        self.dumps = 0

    def control(self, *args: str) -> None:
        """``callgrind_control ARGS PID``; the server is idle in epoll_wait, vgdb wakes it."""
        done = subprocess.run(
            ["callgrind_control", *args, str(self.pid)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0 or "OK" not in done.stdout:
            raise ServerError(f"callgrind_control {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start_count(self) -> None:
        """Instrumentation on (it starts off: start-up is not counted), count from zero."""
        self.control("-i", "on")
        self.control("-z")

    def dump_count(self) -> tuple[int, str]:
        """Dump, return (instructions since the last zero, dump file)."""
        self.control("-d")
        self.dumps += 1
        path = os.path.join(self.outdir, f"callgrind.out.{self.pid}.{self.dumps}")
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1]), path
        raise ServerError(f"no totals in {path}")


class Strace:
    """``strace -c -f -p PID`` attached for one load: syscalls by name."""

    def __init__(self, pid: int, path: str) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["strace", "-c", "-f", "-o", path, "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        # strace says "Process N attached" (per thread) on stderr once it traces.
        line = self.proc.stderr.readline().decode(errors="replace")
        if "attached" not in line:
            self.proc.kill()
            raise ServerError(f"strace did not attach: {line.strip()}")

    def finish(self) -> dict[str, int]:
        """Detach (SIGINT makes strace write its table) and read the calls by name."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        counts: dict[str, int] = {}
        with open(self.path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 5 or not re.match(r"^\d+\.\d+$", parts[0]):
                    continue
                name = parts[-1]
                if name == "total":
                    continue
                # "% time, seconds, usecs/call, calls, [errors], syscall"
                counts[name] = int(parts[3])
        return counts


def gc_instructions(dump: str) -> int:
    """Inclusive instructions of CPython's cyclic collector (``gc_collect_main``) in a dump."""
    try:
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
            capture_output=True, text=True, timeout=300,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    total = 0
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+) \(.*?\)\s+\S*:gc_collect_main(?:'\d+)?(?: |$)", line)
        if m:
            total += int(m.group(1).replace(",", ""))
    return total
