"""
Does AUTH against a big credential file slow everyone else down?

Starts a txsmtpsrv server process with C{CredAuthenticator} over a
100,000-user password file, lets 4 clients send failing AUTH PLAIN
attempts at 20 per second each, and measures a fifth client's latency
from connect to the end of its EHLO reply (greeting + EHLO), 20 times a
second. Prints percentiles per checker:

  - C{baseline}: the C{file} checker with no AUTH load, to see the
    machine's own noise;
  - C{filepassworddb}: Twisted's C{FilePasswordDB}, which C{--auth file:}
    used before issue 12: the file is re-read and scanned on every attempt,
    in the reactor thread;
  - C{file}: L{FileCredentialsChecker}, plaintext passwords: the file in
    memory, a dictionary lookup per attempt;
  - C{file-scrypt}: L{FileCredentialsChecker} with scrypt hashes
    (ln=14, ~50 ms of CPU each), verified in the auth thread pool.

A benchmark, never a test: nothing is asserted. Run from a checkout:

    python bench/auth_latency.py [--seconds 10] [--users 100000] [--rate 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import proc_cpu_seconds  # noqa: E402

SERVER = r"""
import sys
from twisted.internet import reactor
from twisted.cred.checkers import FilePasswordDB
from txsmtpsrv import SMTPServer
from txsmtpsrv._cred import CredAuthenticator, FileCredentialsChecker

kind, path = sys.argv[1], sys.argv[2]
checker = FilePasswordDB(path) if kind == "filepassworddb" else FileCredentialsChecker(path)

class Hooks:
    on_auth = CredAuthenticator(checker)
    def on_data(self, session, stream):
        return stream.collect(lambda chunk: None)

server = SMTPServer(Hooks(), name="bench", allow_insecure_auth=True, auth_optional=True,
                    max_auth_failures=0, disable_reverse_lookup=True, socket_timeout=300)

def ready(port):
    print("READY", port.getHost().port, flush=True)

server.listen("tcp:0:interface=127.0.0.1").addCallback(ready)
reactor.run()
"""


def make_file(path: str, users: int, hashed: bool) -> None:
    stored = b"pw%d"
    if hashed:
        sys.path.insert(0, ROOT)
        from txsmtpsrv._passwd import hash_password
        one = hash_password(b"secret", "scrypt", ln=14)
    with open(path, "wb") as f:
        for i in range(users):
            f.write(b"user%d:%s\n" % (i, one if hashed else stored % i))


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line or line[3:4] == b" ":
            return line


async def attacker(port: int, rate: float, until: float, counts: List[int], n: int) -> None:
    interval = 1.0 / rate
    # A guesser: user names that mostly do not exist (FilePasswordDB then scans the whole file).
    auth = b"AUTH PLAIN " + base64.b64encode(b"\0guess%d\0wrong" % n) + b"\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_reply(reader)
    writer.write(b"EHLO attacker\r\n")
    await read_reply(reader)
    next_at = time.monotonic()
    while time.monotonic() < until:
        writer.write(auth)
        reply = await read_reply(reader)
        counts[0] += 1
        if not reply.startswith(b"535"):
            counts[1] += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    writer.close()


async def prober(port: int, until: float, samples: List[float]) -> None:
    while time.monotonic() < until:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await read_reply(reader)
        writer.write(b"EHLO prober\r\n")
        ehlo = await read_reply(reader)
        samples.append(time.perf_counter() - t0)
        assert greeting.startswith(b"220") and ehlo.startswith(b"250"), (greeting, ehlo)
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        writer.close()
        await asyncio.sleep(0.05)


async def scenario(port: int, seconds: float, rate: float, clients: int) -> Tuple[List[float], List[int]]:
    until = time.monotonic() + seconds
    samples: List[float] = []
    counts = [0, 0]
    # Warm up: one probe before the load starts.
    await prober(port, time.monotonic() + 0.01, [])
    await asyncio.gather(prober(port, until, samples),
                         *(attacker(port, rate, until, counts, n) for n in range(clients)))
    return samples, counts


def run(kind: str, path: str, args: argparse.Namespace, label: str) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, kind, path], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        port = int(line[1])
        if len(os.sched_getaffinity(0)) >= 2:  # server and load on different cores
            os.sched_setaffinity(proc.pid, {0})
            os.sched_setaffinity(0, {1})
        cpu0 = proc_cpu_seconds(proc.pid)
        samples, counts = asyncio.run(scenario(port, args.seconds, args.rate, args.clients))
        cpu = proc_cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    print(f"{label:15} attempts {counts[0]:5} ({counts[0] / args.seconds:5.1f}/s, {counts[1]} not 535)  "
          f"server CPU {cpu / args.seconds * 100:5.1f}%  greeting+EHLO ms: p50 {q[49]:6.2f}  "
          f"p95 {q[94]:6.2f}  p99 {q[98]:6.2f}  max {ms[-1]:6.2f}  (n={len(ms)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=20, help="AUTH attempts per second per client")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--checkers", default="baseline,filepassworddb,file,file-scrypt",
                        help="baseline: the file checker with no AUTH load, for comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.checkers.split(","):
            path = os.path.join(tmp, kind)
            make_file(path, args.users, kind == "file-scrypt")
            if kind == "baseline":
                run("file", path, argparse.Namespace(**{**vars(args), "clients": 0}), label=kind)
            else:
                run("file" if kind.startswith("file-") else kind, path, args, label=kind)


if __name__ == "__main__":
    main()
