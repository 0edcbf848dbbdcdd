"""
What every bench script reads the same way: a server's CPU time from
``/proc/PID/stat`` and a baseline tree exported from this checkout with
``git archive``. One copy, so a fix (the ``comm`` field may hold spaces and
parentheses, hence the ``rindex(b")")``) reaches every script.
"""

from __future__ import annotations

import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid``, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    user, system = proc_cpu_times(pid)
    return user + system


def export_tree(ref: str, into: str) -> str:
    """``git archive ref`` of this checkout, unpacked into ``into`` (the repository is not touched)."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref], check=True, capture_output=True).stdout
    os.makedirs(into, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into
