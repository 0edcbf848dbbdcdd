#!/usr/bin/env python3
"""
The ``deliver`` scenario: ``twistd -n smtpsrv`` storing into its Maildir
under 20 concurrent sessions, while one more client sends NOOPs and times the
replies -- before and after, in the same run.

"Before" is another tree (by default ``git archive main`` of this checkout,
unpacked into a temporary directory), "after" is the working tree. Each run
starts a fresh daemon with ``--maildir`` in a fresh temporary directory on
the same file system as ``--dir`` (default: the system temp directory),
pinned to one CPU (the load generator on the other), and reports:

- messages per second (wall clock, accepted messages / load duration) -- the
  figure issue 13 sets a target on, so it is the headline here, with the
  usual caveat that wall-clock rates swing on shared machines; compare the
  two trees within one run;
- server CPU per message (``/proc/PID/stat``, all threads), and how it
  splits between the reactor (main) thread and the others (the delivery
  pool), with how often the reactor thread was preempted (involuntary
  context switches, ``/proc/PID/task/TID/status``);
- NOOP reply latency during the load: p50, p99, max (one NOOP every 5 ms,
  on its own connection, past EHLO), from two clients at once: the original
  one, a task in the load generator's own event loop (so its figure includes
  waiting behind the load generator's work on that core), and one in its
  own process with a blocking socket and ``perf_counter`` (what a client
  that is not the load sees). Both on the load generator's core.

``--instrument`` also times the daemon from the inside (see L{INSTRUMENT}):
every reactor loop pass (wall time, on the CPU, in the run queue, asleep --
which in a pass means waiting for the GIL), every cyclic GC, and for each
NOOP where its time went between the kernel receiving it and the reply.

Messages are 1 KiB, 100 per connection (the persist pattern), checked reply
by reply by ``_load.py``; failures are counted and reported. A benchmark,
not a test: nothing is asserted.

    python bench/deliver.py                       # main vs working tree, 3 repeats
    python bench/deliver.py --baseline HEAD~3 --messages 2000 --repeat 1
    python bench/deliver.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _load  # noqa: E402
from _common import export_tree, pin_cpus, proc_cpu_seconds, proc_cpu_times  # noqa: E402

SESSIONS = 20
PER_CONNECTION = 100
NOOP_INTERVAL = 0.005

#: Prepended to the daemon's start-up code by ``--instrument``: wraps the epoll
#: reactor's poller so every loop pass is timed -- from the moment ``epoll_wait``
#: returned (GIL re-taken) to the next ``epoll_wait`` call, i.e. the reactor's
#: own work per pass, with the number of ready events -- and writes the passes
#: (CLOCK_MONOTONIC end time, busy seconds, events) to ``$DELIVER_STATS`` at
#: shutdown, with every cyclic garbage collection (end time, seconds,
#: generation) and, for every NOOP the daemon answers, where its time went:
#: waiting for the reactor to finish an earlier pass, from ``epoll_wait`` being
#: called to it returning into Python (wake-up, CPU and GIL), within the pass
#: until the socket was read, and read to reply sent (the kernel's receive
#: time from SO_TIMESTAMPNS; patched ``socket.recv``/``send`` on the class),
#: and how much of the ``epoll_wait`` part the reactor thread spent runnable
#: but off the CPU (run-queue delay from ``/proc/thread-self/schedstat``; the
#: rest of it is the kernel's wake-up and waiting for the GIL).
#: The bench keeps what falls inside the load window. Costs two
#: ``perf_counter`` calls per pass; compare instrumented runs with each other.
INSTRUMENT = r"""
import array, gc, json, os, socket as _s, struct, time
if os.environ.get("DELIVER_REACTOR"):  # --reactor: installed here, before the import below installs the default
    from twisted.application.reactors import installReactor
    installReactor(os.environ["DELIVER_REACTOR"])
else:  # the tree's own twistd default, as its Options.parseOptions would install it
    try:
        from txsmtpsrv._reactor import install_unless_chosen
    except ImportError:  # a tree from before smtpsrv-epoll, or before it became the default: Twisted's
        pass
    else:
        install_unless_chosen()
from twisted.internet import reactor as _r
_gc = {"start": 0.0, "runs": []}
def _gc_timer(phase, info):
    if phase == "start":
        _gc["start"] = time.monotonic()
    else:
        now = time.monotonic()
        _gc["runs"].append((now, now - _gc["start"], info["generation"], info["collected"]))
gc.callbacks.append(_gc_timer)
class _TimedPoller:
    def __init__(self, real):
        self._real, self.ends, self.busy, self.events = real, array.array("d"), array.array("d"), array.array("i")
        self.pass_runq, self.pass_cpu = array.array("d"), array.array("d")
        self._cpu_after = 0.0
        self._back = self._called = self.runq = 0.0
        self._waited_after = 0
        self._n = 0
        self._sched = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    def poll(self, timeout=-1, maxevents=-1):
        start = self._called = time.monotonic()
        cpu = time.thread_time()
        waited = int(os.pread(self._sched, 100, 0).split()[1])
        if self._back:
            self.ends.append(start); self.busy.append(start - self._back); self.events.append(self._n)
            self.pass_runq.append((waited - self._waited_after) / 1e9)
            self.pass_cpu.append(cpu - self._cpu_after)
        got = self._real.poll(timeout, maxevents)
        self._back, self._n = time.monotonic(), len(got)
        # Time this thread spent runnable but not running (another thread or process had the CPU).
        self._waited_after = int(os.pread(self._sched, 100, 0).split()[1])
        self._cpu_after = time.thread_time()
        self.runq = (self._waited_after - waited) / 1e9
        return got
    def __getattr__(self, name):
        return getattr(self._real, name)
_p = _r._poller = _TimedPoller(_r._poller)
# NOOPs: the kernel's receive time (SO_TIMESTAMPNS, from a connection's second NOOP on), when
# epoll handed the socket back, when it was read, when the reply was sent.
_TS = getattr(_s, "SO_TIMESTAMPNS", 35)
_recv, _send = _s.socket.recv, _s.socket.send
_stamped, _pending, _noops = set(), {}, []
def _timed_recv(self, n, *a):
    fd = self.fileno()
    if fd not in _stamped:
        data = _recv(self, n, *a)
        if data == b"NOOP\r\n":
            self.setsockopt(_s.SOL_SOCKET, _TS, 1)
            _stamped.add(fd)
        return data
    data, anc, _f, _a = self.recvmsg(n, 64)
    wall, mono = time.time(), time.monotonic()
    for level, kind, raw in anc:
        if level == _s.SOL_SOCKET and kind == _TS and data == b"NOOP\r\n":
            sec, nsec = struct.unpack("qq", raw[:16])
            arrived = mono - (wall - (sec + nsec / 1e9))
            _pending[fd] = (arrived, _p._called, _p._back, mono, _p.runq)
    return data
def _timed_send(self, data, *a):
    sent = _send(self, data, *a)
    got = _pending.pop(self.fileno(), None) if _pending else None
    if got is not None:
        arrived, called, back, read, runq = got
        now = time.monotonic()
        busy_wait = max(0.0, called - arrived)  # the reactor was still busy with an earlier pass
        _noops.append((now, busy_wait, back - max(arrived, called), read - back, now - read, min(runq, back - max(arrived, called))))
    return sent
_s.socket.recv, _s.socket.send = _timed_recv, _timed_send
def _dump():
    with open(os.environ["DELIVER_STATS"], "w") as f:
        json.dump({"ends": _p.ends.tolist(), "busy": _p.busy.tolist(), "events": _p.events.tolist(),
                   "pass_runq": _p.pass_runq.tolist(), "pass_cpu": _p.pass_cpu.tolist(),
                   "gc": _gc["runs"], "objects": len(gc.get_objects()), "noops": _noops}, f)
_r.addSystemEventTrigger("after", "shutdown", _dump)
"""


def _has_option(tree: str, name: str) -> bool:
    """Whether the daemon in C{tree} knows C{--name} (looked up in its sources)."""
    package = os.path.join(tree, "txsmtpsrv")
    for entry in os.listdir(package):
        if entry.endswith(".py"):
            with open(os.path.join(package, entry), encoding="utf-8") as f:
                if f'"{name}"' in f.read():
                    return True
    return False


class Daemon:
    """``twistd -n smtpsrv --maildir`` from a given tree."""

    def __init__(self, tree: str, workdir: str, cpu: Optional[int], instrument: bool = False,
                 reactor: Optional[str] = None) -> None:
        env = dict(os.environ, PYTHONPATH=tree)
        self.maildir = os.path.join(workdir, "Maildir")
        self.stats_path: Optional[str] = None
        self.reactor_class = "?"
        code = "from twisted.scripts.twistd import run; run()"
        chosen = [f"--reactor={reactor}"] if reactor else []
        if instrument:
            # INSTRUMENT imports the reactor before twistd runs: it installs the chosen one, or
            # the tree's own default, itself.
            self.stats_path = env["DELIVER_STATS"] = os.path.join(workdir, "stats.json")
            env["DELIVER_REACTOR"] = reactor or ""
            code = INSTRUMENT + code
            chosen = []
        # The daemon's anti-abuse defaults would refuse the load itself: 21 connections from
        # one address (limit 20), 120 connections a minute, and the NOOP clients' NOOPs
        # (cut off with 421 after 100, i.e. after half a second). Trees from before those
        # limits (the pre-issue-13 code, for the ">= 3x" comparison) have no such options.
        limits = ["--max-clients-per-ip", "0", "--max-connect-rate", "0", "--max-junk-commands", "0"]
        if not _has_option(tree, "max-junk-commands"):
            limits = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "-n", "--pidfile=", *chosen,
             "smtpsrv", "-l", "tcp:0:interface=127.0.0.1", "--maildir", self.maildir, *limits],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        self.port = 0
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode("utf-8", "replace")
            seen.append(line)
            if not line:
                break
            found = re.search(r"reactor class: ([\w.]+)\.$", line.rstrip())
            if found:
                self.reactor_class = found.group(1).rsplit(".", 1)[-1]
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError("twistd did not start:\n" + "".join(seen))
        # Drain its log so the pipe never fills (one info line per message).
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_drain", None) is not None:
            self._drain.wait(timeout=10)

    def stats(self) -> Optional[Dict[str, Any]]:
        """What the instrumented daemon recorded (after L{stop})."""
        if self.stats_path is None or not os.path.exists(self.stats_path):
            return None
        with open(self.stats_path) as f:
            result: Dict[str, Any] = json.load(f)
        return result


def probe_process(port: int, interval: float) -> None:
    """
    The NOOP client as its own process (``--probe PORT``): a blocking socket,
    one NOOP every C{interval} seconds, each timed with C{perf_counter} from
    just before C{send} to the reply's last byte -- nobody's event loop in
    between. Runs until stdin closes, then writes the latencies (seconds) as
    one JSON line on stdout.
    """
    import select
    import socket

    latencies: List[float] = []
    error = ""
    sock = socket.create_connection((_load.HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""

    def reply() -> bytes:
        nonlocal buf
        while True:
            end = buf.find(b"\n")
            while end >= 0 and buf[3:4] == b"-":
                buf = buf[end + 1 :]
                end = buf.find(b"\n")
            if end >= 0:
                line, buf = buf[: end + 1], buf[end + 1 :]
                return line
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk

    try:
        reply()  # greeting
        sock.sendall(b"EHLO probe.test\r\n")
        reply()
        print("ready", flush=True)
        while not select.select([sys.stdin], [], [], interval)[0]:
            t0 = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            line = reply()
            latencies.append(time.perf_counter() - t0)
            if not line.startswith(b"250"):
                error = f"NOOP: {line[:200]!r}"
                break
        sock.sendall(b"QUIT\r\n")
        reply()
    except OSError as exc:
        error = f"NOOP probe: {exc}"
    finally:
        sock.close()
    print(json.dumps({"latencies": latencies, "error": error}), flush=True)


class Prober:
    """L{probe_process} started on C{cpu} (the load generator's core, never the server's)."""

    def __init__(self, port: int, cpu: Optional[int]) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--probe", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready": past EHLO

    def finish(self) -> Dict[str, Any]:
        out, _ = self.proc.communicate(b"", timeout=30)
        result: Dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result


def thread_times(pid: int) -> Dict[str, List[float]]:
    """
    Per thread of C{pid}: [CPU seconds, involuntary context switches], the
    main (reactor) thread under "reactor", every other thread summed under
    "threads" (the delivery pool).
    """
    out = {"reactor": [0.0, 0.0], "threads": [0.0, 0.0]}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu = sum(proc_cpu_times(pid, int(tid)))
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue
        m = re.search(r"nonvoluntary_ctxt_switches:\s*(\d+)", status)
        key = "reactor" if int(tid) == pid else "threads"
        out[key][0] += cpu
        out[key][1] += int(m.group(1)) if m else 0
    return out


def pct(values: List[float], p: float) -> float:
    """The C{p} quantile of sorted C{values} (nan if empty)."""
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


async def noop_prober(port: int, stop: asyncio.Event, latencies: List[float], tally: _load.Tally) -> None:
    try:
        proto = await _load.connect(port)
        await _load.ehlo(proto)
        while not stop.is_set():
            t0 = time.perf_counter()
            proto.write(b"NOOP\r\n")
            await proto.expect(250, "NOOP")
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(NOOP_INTERVAL)
        await _load.quit(proto)
    except (_load.SMTPFailure, OSError) as exc:
        tally.fail(f"NOOP client: {exc}")


async def load(port: int, messages: int, pid: int, probe_cpu: Optional[int]) -> Dict[str, Any]:
    payload = _load.make_message(1024)
    warm = _load.Tally()
    await _load.message_load(port, sessions=4, total=40, per_connection=10, payload=payload,
                             pipelining=False, tally=warm, deadline=60)
    tally = _load.Tally()
    latencies: List[float] = []
    stop = asyncio.Event()
    # Two NOOP clients at once: the old one, in this event loop next to the 20 sessions (its
    # figure includes waiting behind the load generator's own work on this core), and one in its
    # own process with a blocking socket (what a client that is not the load itself sees).
    prober = asyncio.ensure_future(noop_prober(port, stop, latencies, tally))
    separate = Prober(port, probe_cpu)
    await asyncio.sleep(0.1)
    threads0 = thread_times(pid)
    cpu0, t0, mono0 = proc_cpu_seconds(pid), time.perf_counter(), time.monotonic()
    await _load.message_load(port, sessions=SESSIONS, total=messages, per_connection=PER_CONNECTION,
                             payload=payload, pipelining=False, tally=tally, deadline=300)
    wall, cpu, mono1 = time.perf_counter() - t0, proc_cpu_seconds(pid) - cpu0, time.monotonic()
    threads1 = thread_times(pid)
    stop.set()
    await prober
    probed = await asyncio.get_running_loop().run_in_executor(None, separate.finish)
    if probed["error"]:
        tally.fail(probed["error"])
    latencies.sort()
    own = sorted(probed["latencies"])
    n = max(tally.delivered, 1)
    return {
        "delivered": tally.delivered, "failures": tally.failures + warm.failures,
        "errors": tally.errors[:3] + warm.errors[:3],
        "msgs_per_s": tally.delivered / wall, "cpu_us_per_msg": cpu / n * 1e6,
        "noop_count": len(latencies), "noop_p50_ms": pct(latencies, 0.50) * 1000,
        "noop_p99_ms": pct(latencies, 0.99) * 1000,
        "noop_max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "probe_count": len(own), "probe_p50_ms": pct(own, 0.50) * 1000, "probe_p99_ms": pct(own, 0.99) * 1000,
        "probe_max_ms": own[-1] * 1000 if own else float("nan"),
        "reactor_cpu_us_per_msg": (threads1["reactor"][0] - threads0["reactor"][0]) / n * 1e6,
        "threads_cpu_us_per_msg": (threads1["threads"][0] - threads0["threads"][0]) / n * 1e6,
        "reactor_preempted_per_msg": (threads1["reactor"][1] - threads0["reactor"][1]) / n,
        "window": [mono0, mono1],
    }


def pass_stats(stats: Dict[str, Any], window: List[float]) -> Dict[str, float]:
    """Loop passes of an instrumented daemon inside the load window: busy ms p50/p99/max, events."""
    inside = [(b, e, q, c) for t, b, e, q, c in zip(stats["ends"], stats["busy"], stats["events"], stats["pass_runq"],
                                                    stats["pass_cpu"]) if window[0] <= t <= window[1]]
    # A pass's wall time is: on the CPU (thread CPU time) + runnable but off the CPU (run queue) +
    # neither: asleep, which in a pass means waiting for the GIL (or a blocking call).
    asleep = sorted(max(0.0, b - q - c) for b, _, q, c in inside)
    oncpu = sorted(c for _, _, _, c in inside)
    busy = sorted(b for b, _, _, _ in inside)
    events = sorted(e for _, e, _, _ in inside)
    window_s = window[1] - window[0]
    gcs = [(d, g) for t, d, g, _ in stats["gc"] if window[0] <= t <= window[1]]
    full = [d for d, g in gcs if g == 2]
    noops = [n for n in stats["noops"] if window[0] <= n[0] <= window[1]]
    split: Dict[str, float] = {"server_noops": len(noops)}
    for i, name in enumerate(("busy_wait", "wake", "in_pass", "reply", "runq", "total"), 1):
        vals = sorted(sum(n[1:5]) if name == "total" else n[i] for n in noops)
        split[f"srv_{name}_p50_ms"] = pct(vals, 0.5) * 1000
        split[f"srv_{name}_p99_ms"] = pct(vals, 0.99) * 1000
        split[f"srv_{name}_max_ms"] = vals[-1] * 1000 if vals else float("nan")
    return {**split, "gc_runs": len(gcs), "gc_ms_total": sum(d for d, _ in gcs) * 1000, "gc_full": len(full),
            "gc_full_max_ms": max(full, default=0.0) * 1000, "gc_max_ms": max((d for d, _ in gcs), default=0.0) * 1000,
            "objects_at_exit": stats["objects"],"passes": len(inside), "pass_p50_ms": pct(busy, 0.5) * 1000, "pass_p99_ms": pct(busy, 0.99) * 1000,
            "pass_max_ms": busy[-1] * 1000 if busy else float("nan"),
            "pass_oncpu_p99_ms": pct(oncpu, 0.99) * 1000,
            "pass_oncpu_max_ms": oncpu[-1] * 1000 if oncpu else float("nan"),
            "pass_asleep_p99_ms": pct(asleep, 0.99) * 1000, "pass_asleep_max_ms": asleep[-1] * 1000 if asleep else 0.0,
            "pass_cpu_share": sum(oncpu) / window_s, "pass_runq_share": sum(q for _, _, q, _ in inside) / window_s,
            "pass_asleep_share": sum(asleep) / window_s,
            "events_p50": pct(events, 0.5), "events_p99": pct(events, 0.99),
            "busy_share": sum(busy) / (window[1] - window[0])}


def run_once(tree: str, base_dir: str, messages: int, cpus: tuple, instrument: bool = False,
             reactor: Optional[str] = None) -> Dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="deliver-", dir=base_dir)
    try:
        daemon = Daemon(tree, workdir, cpus[0], instrument, reactor)
        try:
            res = asyncio.run(load(daemon.port, messages, daemon.proc.pid, cpus[1]))
        finally:
            daemon.stop()
        stats = daemon.stats()
        if stats is not None:
            res.update(pass_stats(stats, res["window"]))
        res["stored"] = len(os.listdir(os.path.join(daemon.maildir, "new")))
        res["reactor_class"] = daemon.reactor_class
        return res
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="main", help="git ref for the 'before' tree (default main)")
    p.add_argument("--baseline-tree", help="use this directory as the 'before' tree instead")
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the Maildirs go (default: system temp dir)")
    p.add_argument("--json", help="write all runs here")
    p.add_argument("--instrument", action="store_true",
                   help="time every reactor loop pass in the daemons (adds a little CPU to both trees)")
    p.add_argument("--reactor", metavar="NAME",
                   help="twistd --reactor for both trees (default: each tree's own twistd default; "
                        "smtpsrv-epoll since it became the daemon's default, Twisted's epoll before). "
                        "Both trees must know NAME (smtpsrv-epoll: from 07bdd63 on); --instrument "
                        "needs an epoll reactor (it wraps the reactor's _poller)")
    p.add_argument("--probe", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the NOOP prober process
    args = p.parse_args(argv)
    if args.probe:
        probe_process(args.probe, NOOP_INTERVAL)
        return 0
    pinned = pin_cpus()
    tmp = tempfile.mkdtemp(prefix="deliver-trees-")
    try:
        before = args.baseline_tree or export_tree(args.baseline, tmp)
        trees = {"before": before, "after": ROOT}
        runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in trees}
        for rep in range(args.repeat):
            order = list(trees) if rep % 2 == 0 else list(reversed(trees))
            for name in order:
                res = run_once(trees[name], args.dir or tempfile.gettempdir(), args.messages, pinned,
                               args.instrument, args.reactor)
                runs[name].append(res)
                print(f"{name:6} run {rep + 1}: {res['msgs_per_s']:7.0f} msg/s  {res['cpu_us_per_msg']:6.0f} µs CPU/msg"
                      f" (reactor {res['reactor_cpu_us_per_msg']:.0f}, threads {res['threads_cpu_us_per_msg']:.0f},"
                      f" reactor preempted {res['reactor_preempted_per_msg']:.2f}/msg)"
                      f"  NOOP in-loop p50 {res['noop_p50_ms']:.2f} p99 {res['noop_p99_ms']:.2f}"
                      f" max {res['noop_max_ms']:.1f} ms; own process p50 {res['probe_p50_ms']:.2f}"
                      f" p99 {res['probe_p99_ms']:.2f} max {res['probe_max_ms']:.1f} ms"
                      f"  ({res['delivered']} ok, {res['failures']} failed, {res['stored']} stored)"
                      f"  on {res['reactor_class']}", file=sys.stderr)
                if "passes" in res:
                    print(f"{'':6}        loop passes {res['passes']}: busy p50 {res['pass_p50_ms']:.2f} p99"
                          f" {res['pass_p99_ms']:.2f} max {res['pass_max_ms']:.1f} ms (on the CPU: p99"
                          f" {res['pass_oncpu_p99_ms']:.2f} max {res['pass_oncpu_max_ms']:.1f}; asleep (GIL): p99"
                          f" {res['pass_asleep_p99_ms']:.2f} max {res['pass_asleep_max_ms']:.1f}; share of the window"
                          f" on CPU {res['pass_cpu_share']:.0%}, run queue {res['pass_runq_share']:.0%}, asleep"
                          f" {res['pass_asleep_share']:.0%}), events p50"
                          f" {res['events_p50']:.0f} p99 {res['events_p99']:.0f}, busy {res['busy_share']:.0%}"
                          f" of the window; gc {res['gc_runs']} runs {res['gc_ms_total']:.1f} ms in all, max"
                          f" {res['gc_max_ms']:.2f} ms, {res['gc_full']} full (max {res['gc_full_max_ms']:.1f} ms),"
                          f" {res['objects_at_exit']} objects at exit", file=sys.stderr)
                    print(f"{'':6}        NOOPs seen by the daemon {res['server_noops']}, arrival to reply p50/p99/max ms:"
                          + "".join(f" {k} {res[f'srv_{k}_p50_ms']:.2f}/{res[f'srv_{k}_p99_ms']:.2f}"
                                    f"/{res[f'srv_{k}_max_ms']:.1f}"
                                    for k in ("total", "busy_wait", "wake", "runq", "in_pass", "reply")), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {"msgs_per_s": "messages/s", "cpu_us_per_msg": "server CPU µs/msg",
              "reactor_cpu_us_per_msg": "  of which reactor thread", "threads_cpu_us_per_msg": "  of which other threads",
              "reactor_preempted_per_msg": "reactor thread preempted per msg",
              "noop_p50_ms": "NOOP p50 ms, in the load's loop", "noop_p99_ms": "NOOP p99 ms, in the load's loop",
              "noop_max_ms": "NOOP max ms, in the load's loop",
              "probe_p50_ms": "NOOP p50 ms, own process", "probe_p99_ms": "NOOP p99 ms, own process",
              "probe_max_ms": "NOOP max ms, own process",
              "pass_p50_ms": "loop pass busy p50 ms", "pass_p99_ms": "loop pass busy p99 ms",
              "pass_max_ms": "loop pass busy max ms", "pass_oncpu_p99_ms": "loop pass on the CPU p99 ms",
              "pass_oncpu_max_ms": "loop pass on the CPU max ms",
              "pass_asleep_p99_ms": "loop pass asleep (GIL) p99 ms", "pass_asleep_share": "share of window: passes asleep (GIL)",
              "pass_runq_share": "share of window: passes off the CPU (run queue)", "events_p99": "ready events per pass p99",
              "gc_ms_total": "cyclic GC ms in the window", "gc_max_ms": "longest cyclic GC ms",
              "srv_total_p99_ms": "daemon: NOOP arrival to reply p99 ms",
              "srv_busy_wait_p99_ms": "daemon: .. waiting for an earlier pass p99 ms",
              "srv_wake_p99_ms": "daemon: .. epoll_wait to Python (CPU, GIL) p99 ms",
              "srv_runq_p99_ms": "daemon: .. .. of which waiting for the CPU p99 ms",
              "srv_in_pass_p99_ms": "daemon: .. in its pass before the read p99 ms",
              "srv_total_max_ms": "daemon: NOOP arrival to reply max ms"}
    keys = [k for k in labels if all(k in r for rs in runs.values() for r in rs)]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    print(f"deliver: twistd smtpsrv -> Maildir, {SESSIONS} sessions, 1 KiB, {args.messages} messages, "
          f"median of {args.repeat}; before = {args.baseline_tree or args.baseline}, after = working tree")
    print("| figure | before | after | after/before |\n|---|---|---|---|")
    for k in keys:
        b, a = med["before"][k], med["after"][k]
        print(f"| {labels[k]} | {b:.2f} | {a:.2f} | {a / b if b else float('nan'):.2f} |")
    failures = sum(r["failures"] for rs in runs.values() for r in rs)
    if failures:
        print(f"FAILURES: {failures}; first errors: {[r['errors'] for rs in runs.values() for r in rs][:3]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "median": med}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
