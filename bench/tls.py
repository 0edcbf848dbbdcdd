"""
TLS benchmark: what STARTTLS costs each server, and what session resumption saves.

Run ``python bench/tls.py`` (add ``--quick`` for a smoke run). Servers come
from ``_peers.py``: every kind in ``_peers.TLS_KINDS`` that can run here
(``_peers.unavailable``), started with ``_peers.command(kind, cert=PEM, key=PEM)``
in ``_peers.server_env()``: the one interface a peer needs to take part is
"offer STARTTLS with this certificate file and key file". The certificate is
made here: RSA-2048 (``--key-type rsa``, the issue's figures) or P-256
(``--key-type ecdsa``), self-signed, for ``bench``.

Scenarios (server CPU from /proc, per unit of work; the client never verifies
the certificate, runs lock-step and is pinned to another core than the server):

  - ``persist``: T threads, each one connection, STARTTLS, then M 1 KiB messages:
    CPU µs per message;
  - ``large``: one connection, STARTTLS, three 10 MiB messages: CPU ms per MiB;
  - ``plain``: connect, EHLO, QUIT without TLS: CPU µs per connection (the
    baseline the handshakes are measured against);
  - ``full``: connect, EHLO, STARTTLS, full handshake, EHLO, QUIT;
  - ``resumed``: the same offering the session ticket of the thread's
    previous connection (TLS 1.3 tickets, read after the handshake);
  - ``openssl`` (once, in this process): the server side of full and resumed
    TLS 1.3 handshakes with txsmtpsrv's contexts, OpenSSL alone.

``--implicit``: txsmtpsrv listens with implicit TLS (``secure=True``, port 465
style; ``$TXSMTPSRV_BENCH_IMPLICIT`` tells ``_peers.py``) and the client wraps
the socket before the greeting instead of STARTTLS; ``plain`` is skipped, so
``full`` and ``resumed`` are whole connections (the handshake ratio is theirs).

The handshake cost is ``full - plain`` and ``resumed - plain``; their ratio is
the issue's target (resumed <= 0.3x full). ``resumed`` also says how many
connections really resumed: a server without tickets (twisted.mail's
``CertificateOptions`` turns them off) does a full handshake every time.
Nothing is asserted: numbers are printed (``--json`` for a file).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _peers  # noqa: E402
from _common import NotReady, pin_cpus, proc_cpu_seconds, task_run_ns, wait_ready  # noqa: E402
from _load import make_message  # noqa: E402

TIMEOUT = 30.0  # every socket operation of the client
START_TIMEOUT = 30.0  # a server's READY line
SCENARIOS = ("persist", "large", "plain", "full", "resumed")
EXTRA = ("openssl",)  # not per server: see openssl_handshakes
#: --implicit: TLS from the first byte (txsmtpsrv's secure=True) instead of STARTTLS.
IMPLICIT = False


def cpu_seconds(pid: int) -> float:
    """
    CPU time of ``pid``: to the nanosecond (``/proc/PID/schedstat``, user and system)
    when it runs one thread, as the Python servers do; else utime + stime in clock
    ticks (10 ms: ~25 µs per connection over a 400-connection load), which, unlike
    the per-thread figures, keeps the time of threads that have ended.
    """
    runs = task_run_ns(pid)
    if len(runs) == 1:
        return next(iter(runs.values())) / 1e9
    return proc_cpu_seconds(pid)


def settle(pid: int, limit: float = 1.5) -> float:
    """The server's CPU time once it stops moving (it may still be closing connections)."""
    end = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < end:
        time.sleep(0.03)
        now = cpu_seconds(pid)
        if now - last < 50e-6:  # idle: at most a timer firing in 30 ms
            return now
        last = now
    return last


def make_certificate(directory: str, key_type: str) -> tuple[str, str]:
    """A self-signed certificate for ``bench`` (the library's helper): (cert path, key path)."""
    sys.path.insert(0, os.path.dirname(HERE))
    from txsmtpsrv._selfsigned import cert_pem, key_pem, self_signed

    key, cert = self_signed("bench", days=7, key_type="rsa" if key_type == "rsa" else "ec")
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem(cert))
    with open(key_path, "wb") as f:
        f.write(key_pem(key))
    return cert_path, key_path


# ---------------------------------------------------------------- the client


class Client:
    """One blocking SMTP connection; replies are checked (a wrong one raises)."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        if not IMPLICIT:
            self.expect(220)

    def expect(self, code: int) -> None:
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError(f"connection closed, expected {code}")
            if line[3:4] != b"-":
                break
        if int(line[:3]) != code:
            raise ConnectionError(f"expected {code}, got {line!r}")

    def command(self, line: bytes, code: int) -> None:
        self.sock.sendall(line)
        self.expect(code)

    def starttls(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
        if not IMPLICIT:
            self.command(b"EHLO client.bench\r\n", 250)
            self.command(b"STARTTLS\r\n", 220)
        tls = context.wrap_socket(self.sock, session=session)
        self.sock = tls
        self.reader = tls.makefile("rb")
        if IMPLICIT:
            self.expect(220)  # the greeting, under TLS
        self.command(b"EHLO client.bench\r\n", 250)  # after the handshake: TLS 1.3 tickets are read here
        return tls

    def send(self, body: bytes) -> None:
        self.command(b"MAIL FROM:<bench@client.bench>\r\n", 250)
        self.command(b"RCPT TO:<sink@server.bench>\r\n", 250)
        self.command(b"DATA\r\n", 354)
        self.sock.sendall(body)
        self.expect(250)

    def quit(self) -> None:
        try:
            self.command(b"QUIT\r\n", 221)
        finally:
            self.sock.close()


def session(port: int, tls: bool, messages: int, primed: Callable[[], None]) -> None:
    """One connection [with STARTTLS]: 3 messages, ``primed()``, ``messages`` more, QUIT."""
    body = make_message(1024)
    client = Client(port)
    if tls:
        client.starttls(client_context(), None)
    else:
        client.command(b"EHLO client.bench\r\n", 250)
    for _ in range(3):
        client.send(body)
    primed()
    for _ in range(messages):
        client.send(body)
    client.quit()


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Outcome:
    units: int = 0
    resumed: int = 0
    errors: list[str] = field(default_factory=list)


def in_threads(threads: int, work: Callable[[int, Outcome, threading.Lock], None]) -> Outcome:
    outcome = Outcome()
    lock = threading.Lock()

    def run(index: int) -> None:
        try:
            work(index, outcome, lock)
        except Exception as e:  # counted and shown, never hidden
            with lock:
                outcome.errors.append(f"{type(e).__name__}: {e}")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    return outcome


def persist(port: int, threads: int, messages: int) -> Outcome:
    body = make_message(1024)

    def work(index: int, outcome: Outcome, lock: threading.Lock) -> None:
        client = Client(port)
        client.starttls(client_context(), None)
        for _ in range(messages):
            client.send(body)
            with lock:
                outcome.units += 1
        client.quit()

    return in_threads(threads, work)


def large(port: int, messages: int) -> Outcome:
    body = make_message(10 * 1024 * 1024)

    def work(index: int, outcome: Outcome, lock: threading.Lock) -> None:
        client = Client(port)
        client.starttls(client_context(), None)
        for _ in range(messages):
            client.send(body)
            outcome.units += 10  # MiB
        client.quit()

    return in_threads(1, work)


def churn(port: int, threads: int, connections: int, mode: str,
          primed: Callable[[], None] | None = None) -> Outcome:
    """
    ``plain``, ``full`` or ``resumed`` connections: EHLO[, STARTTLS, EHLO], QUIT.
    ``primed`` (one thread only) is called once the thread is ready to start
    counting: after the connection that fetches the first ticket.
    """

    def work(index: int, outcome: Outcome, lock: threading.Lock) -> None:
        context = client_context()
        session = None
        if mode == "resumed":  # a first, unmeasured-in-kind connection gets the ticket
            client = Client(port)
            tls = client.starttls(context, None)
            session = tls.session
            client.quit()
        if primed is not None:
            primed()
        for _ in range(connections):
            client = Client(port)
            if mode == "plain":
                client.command(b"EHLO client.bench\r\n", 250)
            else:
                tls = client.starttls(context, session if mode == "resumed" else None)
                if mode == "resumed":
                    if tls.session_reused:
                        with lock:
                            outcome.resumed += 1
                    session = tls.session
            client.quit()
            with lock:
                outcome.units += 1

    return in_threads(threads, work)


# ---------------------------------------------------------------- OpenSSL alone


def openssl_handshakes(cert: str, key: str, count: int) -> dict[str, float]:
    """
    CPU of the server side of the handshake alone (OpenSSL through pyOpenSSL, in
    this process): µs per full and per resumed TLS 1.3 handshake of
    txsmtpsrv's TLS contexts, against Python's ssl client over memory BIOs.
    What Twisted, the kernel and the SMTP dialogue add is in the ``full`` and
    ``resumed`` scenarios; this is the floor resumption can reach.
    """
    sys.path.insert(0, os.path.dirname(HERE))
    from OpenSSL import SSL

    from txsmtpsrv._tls import TLSConfig, TLSContextHolder

    holder = TLSContextHolder(TLSConfig(cert=cert, key=key))
    client = client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_3

    def one(session: ssl.SSLSession | None) -> tuple[float, ssl.SSLSession, bool]:
        server = holder.serverConnectionForTLS(None)
        server.set_accept_state()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client.wrap_bio(incoming, outgoing, session=session)
        spent = 0.0
        for _ in range(20):
            done = True
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                done = False
            sent = outgoing.read()
            if sent:
                server.bio_write(sent)
            start = time.process_time()
            try:
                server.do_handshake()
            except SSL.WantReadError:
                pass
            spent += time.process_time() - start
            try:
                answer = server.bio_read(65536)
            except SSL.WantReadError:
                answer = b""
            incoming.write(answer)
            if done and not sent and not answer:
                break
        server.send(b"!")  # the client takes the tickets when it reads this
        incoming.write(server.bio_read(65536))
        tls.read(1)
        assert tls.session is not None
        return spent, tls.session, tls.session_reused

    _, session, _ = one(None)
    full = sum(one(None)[0] for _ in range(count)) / count
    resumed_total, reused = 0.0, 0
    for _ in range(count):
        spent, session, was = one(session)
        resumed_total += spent
        reused += was
    resumed = resumed_total / count
    return {"full_us": full * 1e6, "resumed_us": resumed * 1e6, "ratio": resumed / full,
            "resumed_share": reused / count}


# ---------------------------------------------------------------- servers


class Server:
    def __init__(self, kind: str, cert: str, key: str, cpu: int | None) -> None:
        argv = _peers.command(kind, cert=cert, key=key)
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.errors,
                                     env=_peers.server_env(), cwd=os.path.dirname(HERE))
        try:
            self.port, self.pid, self.detail = wait_ready(self.proc, START_TIMEOUT)
        except NotReady as e:
            self.stop()
            raise RuntimeError(f"{kind} did not start ({e}): {self.stderr()}") from None

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read().decode("utf-8", "replace")[-2000:]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def measure(server: Server, scenario: str, args: argparse.Namespace) -> tuple[float, Outcome]:
    """Server CPU seconds for one run of ``scenario``, and what the client did."""
    before = settle(server.pid)
    if scenario == "persist":
        outcome = persist(server.port, args.threads, args.messages)
    elif scenario == "large":
        outcome = large(server.port, args.large)
    else:
        outcome = churn(server.port, args.threads, args.connections, scenario)
    return settle(server.pid) - before, outcome



# ---------------------------------------------------------------- instruction counts


def instructions(args: argparse.Namespace, cert: str, key: str) -> dict[str, Any]:
    """
    User-space instructions per connection of txsmtpsrv (this tree, and ``--baseline``'s)
    for ``plain``, ``full`` and ``resumed`` connections, under callgrind (repeatable on
    a shared machine where /proc CPU figures swing 15-30 %). One lock-step client thread;
    each mode gets a warm-up, then a full ``gc.collect()`` in the server, then the count
    for ``--connections`` connections. ``--strace`` adds system calls per connection.
    Then per 1 KiB message on one connection without and with STARTTLS (``persist-plain``,
    ``persist-tls``): the difference of a ``--messages`` and a ``--messages``/5 count, so
    the connection's set-up and QUIT cancel out.
    """
    import instructions as _ins  # bench/instructions.py: the callgrind plumbing

    trees = [("new", os.path.dirname(HERE))]
    if args.baseline:
        scratch = tempfile.mkdtemp(prefix="txsmtpsrv-tls-baseline-")
        trees.insert(0, ("old", _ins.resolve_baseline(args.baseline, scratch)[0]))
    out: dict[str, Any] = {}
    for label, tree in trees:
        outdir = tempfile.mkdtemp(prefix="txsmtpsrv-tls-cg-")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p),
                   PYTHONHASHSEED="0")
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={os.path.join(outdir, 'callgrind.out.%p')}",
                   sys.executable, "-c", _ins.PEER_WRAPPER, os.path.join(HERE, "_peers.py"), "txsmtpsrv",
                   "--cert", cert, "--key", key]
        errors = tempfile.TemporaryFile()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                env=env, cwd=tree)
        try:
            port, pid, _ = wait_ready(proc, 600.0)
            server = _ins.Server.__new__(_ins.Server)
            server.pid, server.outdir, server.dumps = pid, outdir, 0
            figures: dict[str, Any] = {}
            for mode in ("full", "resumed") if IMPLICIT else ("plain", "full", "resumed"):
                churn(port, 1, 3, mode)  # warm-up
                tracers: list[Any] = []

                def primed() -> None:
                    asyncio_free_settle(pid)
                    os.kill(pid, signal.SIGUSR1)  # a full gc.collect(): every count starts alike
                    asyncio_free_settle(pid)
                    server.start_count()
                    if args.strace:
                        tracers.append(_ins.Strace(pid, os.path.join(outdir, f"strace.{mode}")))

                outcome = churn(port, 1, args.connections, mode, primed)
                tracer = tracers[0] if tracers else None
                asyncio_free_settle(pid)
                calls = tracer.finish() if tracer is not None else {}
                count, dump = server.dump_count()
                if outcome.errors:
                    raise RuntimeError(f"{label} {mode}: {outcome.errors[:2]}")
                gc_count = _ins.gc_instructions(dump)
                figures[mode] = {"per_conn": count / outcome.units, "gc_per_conn": gc_count / outcome.units,
                                 "resumed": outcome.resumed,
                                 "units": outcome.units, "dump": dump,
                                 "syscalls": {k: v / outcome.units for k, v in sorted(calls.items())}}
                print(f"{label} {mode}: {count / outcome.units:,.0f} instructions/connection "
                      f"({gc_count / outcome.units:,.0f} of them in the cyclic GC)"
                      + (f", {sum(calls.values()) / outcome.units:.1f} syscalls" if calls else ""), file=sys.stderr)
            for mode in ("persist-tls",) if IMPLICIT else ("persist-plain", "persist-tls"):
                counts = []
                for messages in (args.messages // 5, args.messages):
                    def counted() -> None:
                        asyncio_free_settle(pid)
                        os.kill(pid, signal.SIGUSR1)
                        asyncio_free_settle(pid)
                        server.start_count()

                    session(port, mode == "persist-tls", messages, counted)
                    asyncio_free_settle(pid)
                    counts.append(server.dump_count())
                per_message = (counts[1][0] - counts[0][0]) / (args.messages - args.messages // 5)
                figures[mode] = {"per_message": per_message, "dumps": [c[1] for c in counts]}
                print(f"{label} {mode}: {per_message:,.0f} instructions/message", file=sys.stderr)
            plain = figures["plain"]["per_conn"] if "plain" in figures else 0  # (--implicit: whole connections)
            full, again = figures["full"]["per_conn"] - plain, figures["resumed"]["per_conn"] - plain
            figures["handshake"] = {"full": full, "resumed": again, "ratio": again / full}
            out[label] = figures
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return out


def asyncio_free_settle(pid: int, quiet: float = 0.4, limit: float = 60.0) -> None:
    """Wait until the server has used no CPU for ``quiet`` seconds (it may still be closing)."""
    end = time.monotonic() + limit
    last, since = proc_cpu_seconds(pid), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now = proc_cpu_seconds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


UNITS = {"persist": ("µs/msg", 1e6), "large": ("ms/MiB", 1e3), "plain": ("µs/conn", 1e6),
         "full": ("µs/conn", 1e6), "resumed": ("µs/conn", 1e6)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    server_cpu, _ = pin_cpus()
    directory = tempfile.mkdtemp(prefix="txsmtpsrv-bench-tls-")
    cert, key = make_certificate(directory, args.key_type)
    results: dict[str, Any] = {"key_type": args.key_type, "servers": {}, "skipped": {}}
    if "openssl" in args.scenarios:
        runs = [openssl_handshakes(cert, key, args.connections * args.threads) for _ in range(args.repeat)]
        results["openssl"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"OpenSSL alone: {results['openssl']}", file=sys.stderr)
    for kind in args.servers:
        if kind not in _peers.TLS_KINDS:
            results["skipped"][kind] = "no STARTTLS in this peer"
            continue
        why = _peers.unavailable(kind)
        if why:
            results["skipped"][kind] = why
            print(f"{kind}: skipped ({why})", file=sys.stderr)
            continue
        figures: dict[str, Any] = {}
        for scenario in args.scenarios:
            if scenario not in SCENARIOS or (IMPLICIT and scenario == "plain"):
                continue
            values, resumed, errors = [], [], []
            for _ in range(args.repeat):
                server = Server(kind, cert, key, server_cpu)  # a fresh process per run
                try:
                    cpu, outcome = measure(server, scenario, args)
                finally:
                    server.stop()
                if outcome.errors or not outcome.units:
                    errors.extend(outcome.errors[:3] or ["no work done"])
                    continue
                values.append(cpu / outcome.units * UNITS[scenario][1])
                if scenario == "resumed":
                    resumed.append(outcome.resumed / outcome.units)
            entry: dict[str, Any] = {"unit": UNITS[scenario][0], "runs": values,
                                     "median": statistics.median(values) if values else None}
            if resumed:
                entry["resumed_share"] = statistics.median(resumed)
            if errors:
                entry["errors"] = errors[:5]
            figures[scenario] = entry
            print(f"{kind:13} {scenario:8} {entry['median'] if values else 'failed'} {entry['unit']}"
                  + (f" (resumed {entry['resumed_share']:.0%})" if resumed else "")
                  + (f" errors: {errors[:2]}" if errors else ""), file=sys.stderr)
        plain = figures.get("plain", {}).get("median")
        full = figures.get("full", {}).get("median")
        again = figures.get("resumed", {}).get("median")
        if IMPLICIT and full is not None and again is not None:
            plain = 0.0  # whole connections
        if plain is not None and full is not None and again is not None and full > plain:
            figures["handshake"] = {"full_us": full - plain, "resumed_us": again - plain,
                                    "ratio": (again - plain) / (full - plain)}
        results["servers"][kind] = figures
    return results


def table(results: dict[str, Any]) -> str:
    servers = list(results["servers"])
    rows = [f"| figure ({results['key_type'].upper()}) | " + " | ".join(servers) + " |",
            "|---|" + "---|" * len(servers)]
    for scenario in SCENARIOS:
        cells = []
        for kind in servers:
            entry = results["servers"][kind].get(scenario)
            if entry is None or entry["median"] is None:
                cells.append("–")
                continue
            cell = f"{entry['median']:,.0f}" if entry["median"] >= 20 else f"{entry['median']:.2f}"
            if "resumed_share" in entry:
                cell += f" ({entry['resumed_share']:.0%} resumed)"
            cells.append(cell)
        unit = UNITS[scenario][0]
        rows.append(f"| {scenario}: {unit} | " + " | ".join(cells) + " |")
    cells = []
    for kind in servers:
        h = results["servers"][kind].get("handshake")
        cells.append(f"{h['full_us']:,.0f} / {h['resumed_us']:,.0f} ({h['ratio']:.2f}x)" if h else "–")
    rows.append("| handshake µs: full / resumed (ratio) | " + " | ".join(cells) + " |")
    o = results.get("openssl")
    if o:
        rows.append(f"\nOpenSSL alone (txsmtpsrv's contexts, server side, TLS 1.3): full {o['full_us']:,.0f} µs, "
                    f"resumed {o['resumed_us']:,.0f} µs ({o['ratio']:.2f}x; {o['resumed_share']:.0%} resumed)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="txsmtpsrv,twisted.mail,aiosmtpd,node,go-smtp",
                        type=lambda s: [k for k in s.split(",") if k])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS + EXTRA),
                        type=lambda s: [k for k in s.split(",") if k in SCENARIOS + EXTRA])
    parser.add_argument("--key-type", choices=("rsa", "ecdsa"), default="rsa")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--messages", type=int, default=200, help="per thread, persist")
    parser.add_argument("--connections", type=int, default=100, help="per thread, plain/full/resumed")
    parser.add_argument("--large", type=int, default=3, help="10 MiB messages")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few of everything, one repeat")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--instructions", action="store_true",
                        help="txsmtpsrv only, under callgrind: instructions per plain/full/resumed connection")
    parser.add_argument("--baseline", help="with --instructions: also a git ref or a tree holding txsmtpsrv/")
    parser.add_argument("--strace", action="store_true", help="with --instructions: system calls per connection")
    parser.add_argument("--implicit", action="store_true",
                        help="txsmtpsrv only: implicit TLS (secure=True) instead of STARTTLS")
    args = parser.parse_args(argv)
    if args.implicit:
        global IMPLICIT
        IMPLICIT = True
        os.environ["TXSMTPSRV_BENCH_IMPLICIT"] = "1"  # to the server processes (_peers.py)
        args.servers = [k for k in args.servers if k == "txsmtpsrv"]
    if args.instructions:
        directory = tempfile.mkdtemp(prefix="txsmtpsrv-bench-tls-")
        cert, key = make_certificate(directory, args.key_type)
        found = instructions(args, cert, key)
        for label, figures in found.items():
            h = figures["handshake"]
            print(f"{label} ({args.key_type}): plain {figures.get('plain', {}).get('per_conn', 0):,.0f}, full "
                  f"{figures['full']['per_conn']:,.0f}, resumed {figures['resumed']['per_conn']:,.0f} "
                  f"({figures['resumed']['resumed']}/{figures['resumed']['units']} resumed) instructions/connection; "
                  f"handshake full {h['full']:,.0f} / resumed {h['resumed']:,.0f} = {h['ratio']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(found, f, indent=1)
        return 0
    if args.quick:
        args.repeat, args.messages, args.connections, args.large = 1, 20, 10, 1
    if not hasattr(_peers, "command"):
        print("bench/_peers.py has no command(kind, cert=, key=): the peers cannot be given a certificate",
              file=sys.stderr)
        return 2
    results = run(args)
    print(table(results))
    if results["skipped"]:
        for kind, why in results["skipped"].items():
            print(f"- {kind}: skipped ({why})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
