"""
Postfix's ``smtp-source`` as the benchmark's load generator (``bench.py --client smtp-source``).

``smtp-source`` is a small C client (Debian package ``postfix``): it sends ``HELO``, then
``MAIL``/``RCPT``/``DATA`` lock-step (it never pipelines) and checks that every reply is
positive, exiting non-zero (``fatal: ...``) at the first one that is not.  A C client costs the
load-generator core far less than the asyncio one, so it shows a server's CPU per message with
less of the client's own scheduling in the way.  Flags used:

- ``-s N``: N sessions in parallel; ``-m M``: M messages in all;
- ``-d``: keep the connection for the next message (persist, large); without it every message
  gets its own connection (churn).  With ``-d`` the sessions share the ``-m`` count, so the
  load is sent as several runs of ``-m sessions*per_connection`` to keep the
  messages-per-connection of the asyncio client;
- ``-l BYTES``: the payload size (smtp-source adds a few header lines of its own);
- ``-M``, ``-f``, ``-t``: HELO name, sender and recipient, fixed so every server sees the same;
- ``-c``: print a counter after each message (``\\r``-separated): the last one is the number of
  messages the server accepted with a 250.
"""

from __future__ import annotations

import asyncio
import re
import time

import _load
import _toolchains

HELO_NAME = "client.test"
SENDER = "bench@client.test"
RECIPIENT = "sink@server.test"


def available() -> str | None:
    """None if smtp-source can be used here, else why not."""
    try:
        _toolchains.postfix_tool("smtp-source")
    except _toolchains.Unavailable as exc:
        return str(exc)
    return None


def argv(port: int, *, sessions: int, messages: int, size: int, keep: bool) -> list[str]:
    """One smtp-source invocation against 127.0.0.1:port."""
    cmd = [_toolchains.postfix_tool("smtp-source"), "-c", "-s", str(sessions), "-m", str(messages),
           "-l", str(size), "-M", HELO_NAME, "-f", SENDER, "-t", RECIPIENT]
    if keep:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{port}")
    return cmd


def _counted(stdout: bytes) -> int:
    """The last ``-c`` counter smtp-source printed (0 if none)."""
    numbers = re.findall(rb"\d+", stdout.replace(b"\r", b" "))
    return int(numbers[-1]) if numbers else 0


async def message_load(
    port: int,
    *,
    sessions: int,
    total: int,
    per_connection: int,
    size: int,
    tally: _load.Tally,
    deadline: float,
) -> None:
    """
    Send ``total`` messages of ``size`` payload bytes over ``sessions`` parallel sessions,
    ``per_connection`` per connection (1 = a new connection for each), and count them in
    ``tally``.  Bounded by ``deadline`` seconds; a failed run stops the load.
    """
    end = time.monotonic() + deadline
    keep = per_connection > 1
    batch = sessions * per_connection if keep else total
    left = total
    while left > 0 and not tally.give_up:
        count = min(batch, left)
        cmd = argv(port, sessions=min(sessions, count), messages=count, size=size, keep=keep)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), max(0.1, end - time.monotonic()))
        except asyncio.TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            tally.delivered += _counted(out)
            tally.fail(f"smtp-source: scenario deadline ({deadline:.0f} s)",
                       max(1, left - _counted(out)))
            return
        done = _counted(out)
        tally.delivered += done
        left -= count
        if proc.returncode != 0 or done != count:
            text = err.decode(errors="replace").strip().splitlines()
            tally.fail(f"smtp-source exited {proc.returncode} after {done}/{count} messages: "
                       f"{text[-1] if text else 'no message'}", max(1, count - done))
            return
