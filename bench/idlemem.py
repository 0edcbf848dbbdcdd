#!/usr/bin/env python3
"""
What one idle connection holds in the bench's txsmtpsrv sink, object by object.

The server runs in this process (the sink of C{bench/_peers.py}: an
C{on_data} hook that collects and drops, C{size=0}, Twisted logging filtered
at warn); a child process opens C{--connections} loopback connections, reads
each greeting, says EHLO, reads the reply and waits. We then report:

  - RSS growth per connection (what C{bench.py --scenarios idle} measures);
  - C{tracemalloc} bytes per connection, grouped by the allocating line
    (traces taken while the connections were opened, net of what was freed);
  - a census of one connection: every object reachable from its transport
    that no other connection shares, with C{sys.getsizeof}, grouped by type.

Usage: C{python bench/idlemem.py [--connections 2000] [--server txsmtpsrv|twisted.mail]}.
Not a timing benchmark: no lock needed (it is light), though it uses loopback.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import tracemalloc
from collections import Counter
from typing import Any, Dict, List, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from _common import proc_status_kib  # noqa: E402

CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    s.sendall(b"EHLO client.example\r\n")
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    socks.append((s, f))
sys.stdout.write("open\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def build_server(kind: str, reactor: Any) -> Any:
    if kind == "txsmtpsrv":
        from txsmtpsrv import SMTPServer

        class SinkHooks:
            def on_data(self, session: Any, stream: Any) -> Any:
                return stream.collect(lambda chunk: None)

        server = SMTPServer(SinkHooks(), name="bench", size=0, socket_timeout=300, reactor=reactor)
        return server.listen("tcp:0:interface=127.0.0.1")
    from twisted.internet.endpoints import serverFromString
    from twisted.mail import smtp

    class SinkFactory(smtp.SMTPFactory):
        protocol = smtp.ESMTP
        domain = "bench"
        timeout = 300

        def buildProtocol(self, addr: Any) -> Any:
            p = smtp.SMTPFactory.buildProtocol(self, addr)
            p.timeout = self.timeout
            p.noisy = False
            return p

    return serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(SinkFactory())


def transports(kind: str) -> List[Any]:
    from twisted.internet import tcp
    return [o for o in gc.get_objects() if type(o) is tcp.Server]


def census(root: Any, shared: Set[int]) -> List[Tuple[str, int]]:
    """Objects reachable from C{root} that are not in C{shared} (ids), with their sizes."""
    seen: Set[int] = set()
    out: List[Tuple[str, int]] = []
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in shared:
            continue
        if isinstance(obj, type) or type(obj).__name__ in ("module", "function", "code", "cell"):
            continue
        seen.add(id(obj))
        out.append((describe(obj), sys.getsizeof(obj)))
        stack.extend(gc.get_referents(obj))
    return out


def describe(obj: Any) -> str:
    t = type(obj)
    name = f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__
    if t is dict:
        return "dict"
    if t.__name__ == "method":
        return f"bound method {obj.__func__.__qualname__}"
    return name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--server", default="txsmtpsrv")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rss", action="store_true", help="RSS only (no tracemalloc: its traces cost memory)")
    args = ap.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(lambda e: None, [predicate])], redirectStandardIO=False)

    result: Dict[str, Any] = {}

    def run_client(port: int, n: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(n)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    def step(port: int) -> None:
        # Warm: 50 connections opened and closed.
        warm = run_client(port, 50)
        wait_line(warm, lambda: finish_warm(port, warm))

    def wait_line(proc: subprocess.Popen[str], then: Any) -> None:
        from twisted.internet import threads
        threads.deferToThread(proc.stdout.readline).addCallback(lambda _: then())

    def finish_warm(port: int, warm: subprocess.Popen[str]) -> None:
        warm.stdin.write("\n")
        warm.stdin.flush()
        warm.wait()
        reactor.callLater(0.3, measure, port)

    def measure(port: int) -> None:
        gc.collect()
        result["rss0"] = proc_status_kib(os.getpid(), "VmRSS")
        if not args.rss:
            tracemalloc.start(1)
        result["snap0"] = tracemalloc.take_snapshot() if not args.rss else None
        proc = run_client(port, args.connections)
        wait_line(proc, lambda: reactor.callLater(0.3, after, proc))

    def after(proc: subprocess.Popen[str]) -> None:
        gc.collect()
        result["snap1"] = tracemalloc.take_snapshot() if not args.rss else None
        tracemalloc.stop()
        result["rss1"] = proc_status_kib(os.getpid(), "VmRSS")
        ts = transports(args.server)
        result["n"] = len(ts)
        # Census of one connection: objects shared with another connection are excluded.
        a, b = ts[len(ts) // 2], ts[len(ts) // 2 + 1]
        stop = {id(o) for o in shared_roots(a) + shared_roots(b)}
        reach_b = {id(o) for o in walk(b, stop)}
        result["census"] = census(a, reach_b | stop)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait()
        reactor.stop()

    def listening(port: Any) -> None:
        step(port.getHost().port)

    d = build_server(args.server, reactor)
    d.addCallback(listening)
    d.addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()

    n = result["n"]
    print(f"server {args.server}: {n} idle connections")
    print(f"RSS growth: {(result['rss1'] - result['rss0']) / n:.2f} KiB per connection")
    if args.rss:
        return
    stats = result["snap1"].compare_to(result["snap0"], "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"tracemalloc growth: {total / n:.0f} B per connection (net); by line:")
    for s in sorted(stats, key=lambda s: -s.size_diff)[: args.top]:
        if s.size_diff / n < 4:
            break
        frame = s.traceback[0]
        import linecache
        text = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        print(f"  {s.size_diff / n:7.1f} B  {s.count_diff / n:5.2f} blocks  {short(frame.filename)}:{frame.lineno}  {text}")
    rows = result["census"]
    print(f"census of one connection: {len(rows)} objects, {sum(s for _, s in rows)} B (getsizeof, excl. GC headers)")
    by: Dict[str, List[int]] = {}
    for name, size in rows:
        by.setdefault(name, []).append(size)
    for name, sizes in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {sum(sizes):6d} B  {len(sizes):3d} x {name}")


def walk(root: Any, stop: Set[int]) -> List[Any]:
    seen: Set[int] = set(stop)
    out = []
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ in ("module", "function", "code"):
            continue
        seen.add(id(obj))
        out.append(obj)
        stack.extend(gc.get_referents(obj))
    return out


def shared_roots(transport: Any) -> List[Any]:
    """Big shared things to stop the walk at (the reactor, the factory, the server's context...)."""
    from twisted.internet import reactor
    proto = transport.protocol
    roots = [reactor, reactor.__dict__, getattr(proto, "factory", None), getattr(proto, "context", None),
             getattr(proto, "options", None), getattr(proto, "delivery", None), getattr(proto, "portal", None)]
    return [r for r in roots if r is not None]


def short(path: str) -> str:
    for marker in ("site-packages/", "wt-idle13/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


if __name__ == "__main__":
    main()
