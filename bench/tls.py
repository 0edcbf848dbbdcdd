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

Its parts: ``_tls_client.py`` (the client and its loads),
``_tls_instructions.py`` (``--instructions``: callgrind counts of txsmtpsrv).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _peers  # noqa: E402
import _tls_client  # noqa: E402
from _common import ROOT, pin_cpus, proc_cpu_seconds, task_run_ns  # noqa: E402
from _server import ServerError, ServerProcess  # noqa: E402
from _settle import settle  # noqa: E402
from _tls_client import Outcome, churn, client_context, large, persist  # noqa: E402
from _tls_instructions import instructions  # noqa: E402

START_TIMEOUT = 30.0  # a server's READY line
SCENARIOS = ("persist", "large", "plain", "full", "resumed")
EXTRA = ("openssl",)  # not per server: see openssl_handshakes
#: A server whose CPU time moved less than this in 30 ms is idle (at most a timer fired).
IDLE_CPU = 50e-6


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


def start_server(kind: str, cert: str, key: str, cpu: int | None) -> ServerProcess:
    """A fresh server offering STARTTLS with C{cert} and C{key}, pinned (from its start) with taskset."""
    argv = _peers.command(kind, cert=cert, key=key)
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    server = ServerProcess(kind, argv, env=_peers.server_env(), cwd=ROOT)
    try:
        server.wait_ready(START_TIMEOUT)
    except ServerError as e:
        server.stop(grace=0)
        raise RuntimeError(f"{kind} did not start ({e}): {server.stderr_text}") from None
    return server


def measure(server: ServerProcess, scenario: str, args: argparse.Namespace) -> tuple[float, Outcome]:
    """Server CPU seconds for one run of ``scenario``, and what the client did."""
    before = settle(server.pid, read=cpu_seconds, resolution=IDLE_CPU)
    if scenario == "persist":
        outcome = persist(server.port, args.threads, args.messages)
    elif scenario == "large":
        outcome = large(server.port, args.large)
    else:
        outcome = churn(server.port, args.threads, args.connections, scenario)
    return settle(server.pid, read=cpu_seconds, resolution=IDLE_CPU) - before, outcome


UNITS = {"persist": ("µs/msg", 1e6), "large": ("ms/MiB", 1e3), "plain": ("µs/conn", 1e6),
         "full": ("µs/conn", 1e6), "resumed": ("µs/conn", 1e6)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every server, every scenario, C{--repeat} fresh processes each: medians, and the handshake costs."""
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
            if scenario not in SCENARIOS or (args.implicit and scenario == "plain"):
                continue
            values, resumed, errors = [], [], []
            for _ in range(args.repeat):
                server = start_server(kind, cert, key, server_cpu)  # a fresh process per run
                try:
                    cpu, outcome = measure(server, scenario, args)
                finally:
                    server.stop(grace=0)
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
        if args.implicit and full is not None and again is not None:
            plain = 0.0  # whole connections
        if plain is not None and full is not None and again is not None and full > plain:
            figures["handshake"] = {"full_us": full - plain, "resumed_us": again - plain,
                                    "ratio": (again - plain) / (full - plain)}
        results["servers"][kind] = figures
    return results


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (bench/README.md quotes them)."""
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
    """Measure (or with C{--instructions}, count), print; 2 if the peers cannot be given a certificate."""
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
        _tls_client.IMPLICIT = True
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
