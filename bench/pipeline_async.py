"""
How long does a pipelining client wait when a hook answers later?

A sender that pipelines (Postfix does) writes MAIL, RCPT, RCPT, RSET in one
go and reads the four replies. With an asynchronous C{on_rcpt_to} (a
gateway asking an API, here a C{callLater} of C{--hook-ms}), the MAIL's 250
leaves first and each RCPT's reply later, as a second small segment while
the first is still unacknowledged. Under Nagle's algorithm that segment
waits for the client's delayed ACK (40 ms on Linux); with C{TCP_NODELAY}
(L{txsmtpsrv._sendnow.no_delay}) it leaves at once.

Starts a server from this checkout and, with C{--baseline REF}, one from
that commit (C{git archive}), and times C{--groups} pipelined groups
against each, one server at a time. Prints the median and the maximum per
group. A benchmark, never a test: nothing is asserted.

    python bench/pipeline_async.py [--baseline REF] [--groups 50] [--hook-ms 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import export_tree, wait_ready  # noqa: E402

SERVER = r"""
import os, sys
from twisted.internet import defer, reactor
from txsmtpsrv import Hooks, SMTPServer

delay = float(sys.argv[1]) / 1000

class Later(Hooks):
    def on_rcpt_to(self, session, address):
        d = defer.Deferred()
        reactor.callLater(delay, d.callback, None)
        return d

server = SMTPServer(Later(), name="bench", disable_reverse_lookup=True)

def ready(port):
    sys.stdout.write("READY %d %d\n" % (port.getHost().port, os.getpid()))
    sys.stdout.flush()

server.listen("tcp:0:interface=127.0.0.1").addCallback(ready)
reactor.run()
"""

GROUP = b"MAIL FROM:<a@example.test>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@example.test>\r\nRSET\r\n"


def final_replies(sock: socket.socket, count: int) -> None:
    """Read until C{count} final reply lines arrived (bounded by the socket's timeout)."""
    buf = b""
    seen = 0
    while seen < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
        *lines, buf = buf.split(b"\r\n")
        seen += sum(1 for line in lines if line[3:4] == b" ")


def run(tree: str, groups: int, hook_ms: float) -> List[float]:
    """Milliseconds per pipelined group against a server from C{tree}."""
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(hook_ms)], cwd=tree, env=env,
                            stdout=subprocess.PIPE)
    try:
        port, _, _ = wait_ready(proc, 30)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            final_replies(s, 1)
            s.sendall(b"EHLO bench.test\r\n")
            final_replies(s, 1)
            times = []
            for _ in range(groups):
                start = time.perf_counter()
                s.sendall(GROUP)
                final_replies(s, 4)
                times.append((time.perf_counter() - start) * 1000)
            s.sendall(b"QUIT\r\n")
        return times
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit to compare with (git archive of this checkout)")
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--hook-ms", type=float, default=2.0)
    args = parser.parse_args()
    trees = [("this checkout", ROOT)]
    with tempfile.TemporaryDirectory(prefix="txsmtpsrv-bench-") as scratch:
        if args.baseline:
            trees.insert(0, (args.baseline, export_tree(args.baseline, os.path.join(scratch, "old"))))
        for name, tree in trees:
            times = run(tree, args.groups, args.hook_ms)
            print(f"{name}: {len(times)} groups, ms per group median {statistics.median(times):.2f}, "
                  f"max {max(times):.2f} (hook {args.hook_ms} ms x 2 RCPT)")


if __name__ == "__main__":
    main()
