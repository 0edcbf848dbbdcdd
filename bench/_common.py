"""
What every bench script does the same way: read a server's CPU time from
``/proc/PID/stat``, export a baseline tree from this checkout with
``git archive`` (or take a directory as the baseline), wait for a server's
READY line, pin server and client to a core each. One copy, so a fix (the
``comm`` field may hold spaces and parentheses, hence the ``rindex(b")")``)
reaches every script.
"""

from __future__ import annotations

import math
import os
import select
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_times(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) seconds of ``pid``, all its threads, from /proc/PID/stat (thread ``tid`` alone: its task's stat)."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    user, system = proc_cpu_times(pid)
    return user + system


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` line (VmRSS, VmHWM, ...) of /proc/PID/status."""
    prefix = key.encode() + b":"
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(prefix):
                return int(line.split()[1])
    raise KeyError(key)


def task_run_ns(pid: int) -> dict[int, int]:
    """
    Nanoseconds each live thread of ``pid`` has run on a CPU, from
    ``/proc/PID/task/TID/schedstat`` (the scheduler's ``sum_exec_runtime``:
    exact, where ``/proc/PID/stat`` counts 10 ms ticks); empty where the kernel
    has no schedstat.
    """
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


class CPUClock:
    """
    CPU time of a server process over a load: exact run time from schedstat when
    every thread that ran at the start is still there at the end, else (a thread
    ended, and took its run time with it) ``/proc/PID/stat``'s utime + stime.
    ``user``/``system`` (tick-based, from stat) split it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_ns = task_run_ns(pid)
        self.start_user, self.start_system = proc_cpu_times(pid)

    def read(self) -> dict[str, float | str]:
        end_ns = task_run_ns(self.pid)
        user, system = proc_cpu_times(self.pid)
        ticks = (user - self.start_user) + (system - self.start_system)
        exact = bool(end_ns) and set(self.start_ns) <= set(end_ns)
        ran = sum(end_ns[t] - self.start_ns.get(t, 0) for t in end_ns) / 1e9 if exact else ticks
        return {"seconds": ran, "source": "schedstat" if exact else "stat", "tick_seconds": ticks,
                "user": user - self.start_user, "system": system - self.start_system}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """
    A confidence interval for the median of C{values} that assumes no
    distribution (order statistics): the k-th smallest and k-th largest value,
    k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2. Per-round
    ratios on this machine are skewed and heavy-tailed (a neighbour's burst
    lands in one server's slice), so a normal interval would mislead. None
    when there are too few values for the level (fewer than 6 at 95 %).
    """
    n = len(values)
    tail = (1 - level) / 2
    below = 0.0  # P(Binomial(n, 1/2) <= j - 1)
    k = 0
    for j in range(n + 1):
        p = math.comb(n, j) / 2 ** n
        if below + p > tail:
            break
        below += p
        k = j + 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def pin_cpus() -> tuple[int | None, int | None]:
    """Server on one core, this process on another, when at least two are available."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    server_cpu, client_cpu = cpus[0], cpus[1]
    os.sched_setaffinity(0, {client_cpu})
    return server_cpu, client_cpu


def export_tree(ref: str, into: str) -> str:
    """``git archive ref`` of this checkout, unpacked into ``into`` (the repository is not touched)."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref], check=True, capture_output=True).stdout
    os.makedirs(into, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def resolve_baseline(spec: str, scratch: str) -> tuple[str, str]:
    """(tree directory, description) for a directory holding txsmtpsrv/ or a git ref (exported into C{scratch})."""
    if os.path.isdir(os.path.join(spec, "txsmtpsrv")):
        return os.path.abspath(spec), f"directory {os.path.abspath(spec)}"
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", f"{spec}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return export_tree(commit, os.path.join(scratch, "baseline")), f"git {spec} ({commit})"


class NotReady(Exception):
    """The server gave no usable READY line; the message says why (its stderr is the caller's)."""


def wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, str]:
    """
    (port, pid, detail) from the ``READY <port> <pid> <detail>`` line every
    ``_peers.py`` server writes first. Bounded by ``timeout`` seconds (a server
    under valgrind starts slowly, a broken one may never write), so a ``select``
    loop rather than ``readline``; L{NotReady} if it times out, exits or writes
    something else.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    end = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0:
            raise NotReady(f"no READY line within {timeout:.0f} s")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait(10)
                raise NotReady(f"exited with {proc.returncode} before listening")
            line += chunk
    parts = line.decode().split(None, 3)
    if len(parts) < 3 or parts[0] != "READY":
        raise NotReady(f"unexpected start line {line!r}")
    return int(parts[1]), int(parts[2]), parts[3].strip() if len(parts) > 3 else ""
