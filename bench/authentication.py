"""
CPU per message with sender authentication on (SPF, DKIM, DMARC, ARC) versus off.

    python bench/authentication.py            # 1 KiB x 400 and 10 MiB x 6, 3 repeats, median
    python bench/authentication.py --quick    # 1 KiB x 100 and 10 MiB x 2, 1 repeat

Each message goes through a real SMTPServer protocol in memory (the
C{txsmtpsrv.testing} client writes straight into it: no sockets), into a sink
hook that reads the body; with verification on, the sink sits behind an
C{AuthVerifier}. DNS is answered by an in-memory C{IResolver} (twisted.names
records, no UDP): the figures are our CPU cost, not DNS latency. Every
message carries one DKIM-Signature (rsa-sha256, 2048-bit key) made by dkimpy,
and the SPF and DMARC records make every verdict pass. Reported: process CPU
seconds per message (user+sys, C{time.process_time}), the difference, and
the throughput of the body hashing for the big message. It never asserts.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from twisted.internet.defer import fail, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.names import common, dns, error  # noqa: E402

from txsmtpsrv import AuthVerifier  # noqa: E402
from txsmtpsrv.testing import TestClient, make_server  # noqa: E402

CLIENT = "192.0.2.10"


class Resolver(common.ResolverBase):
    """TXT records from a dictionary; everything else does not exist."""

    def __init__(self, txt: Dict[str, str]) -> None:
        super().__init__()
        self.txt = txt

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any) -> Any:
        text = name.decode() if isinstance(name, bytes) else str(name)
        value = self.txt.get(text.lower().rstrip("."))
        if value is None or type != dns.TXT:
            return fail(error.DNSNameError(text))
        data = value.encode()
        record = dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)])
        return succeed(([dns.RRHeader(text, dns.TXT, dns.IN, 60, record)], [], []))


class Sink:
    """Reads every body, keeps nothing."""

    def on_data(self, session: Any, stream: Any) -> Any:
        return stream.collect(lambda chunk: None)


def make_world() -> Tuple[bytes, Resolver]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    resolver = Resolver({
        "example.com": f"v=spf1 ip4:{CLIENT} -all",
        "client.example.com": f"v=spf1 ip4:{CLIENT} -all",
        "sel._domainkey.example.com": "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode(),
        "_dmarc.example.com": "v=DMARC1; p=reject",
    })
    return pem, resolver


def message(pem: bytes, size: int) -> bytes:
    head = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: bench\r\n"
            b"Date: Tue, 25 Nov 2025 10:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 " * 17 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    msg = head + body
    signature = dkim.sign(msg, b"sel", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + msg


def run(msg: bytes, count: int, verify: bool, resolver: Resolver) -> Tuple[float, bool]:
    """CPU seconds per message for C{count} messages on one connection; and whether DKIM passed."""
    clock = Clock()
    seen: List[Any] = []

    class Recording(Sink):
        def on_data(self, session: Any, stream: Any) -> Any:
            seen.append(session.envelope.auth)
            return super().on_data(session, stream)

    hooks: Any = Recording()
    if verify:
        hooks = AuthVerifier(hooks, authserv_id="mx.bench", resolver=resolver, reactor=clock)
    server, _ = make_server(hooks, size=0)
    client = TestClient(server, peer=(CLIENT, 40000))
    client.command("EHLO client.example.com")
    chunks = [msg[i:i + 65536] for i in range(0, len(msg), 65536)]
    start = time.process_time()
    for _ in range(count):
        client.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        for chunk in chunks:
            client.send(chunk)
        client.send(b".\r\n")
        while clock.getDelayedCalls():
            clock.advance(0)
        replies = client.replies()
        if not replies or replies[-1].code != 250:
            raise SystemExit(f"unexpected replies: {replies}")
    elapsed = time.process_time() - start
    ok = all(a is None or [d.result for d in a.dkim] == ["pass"] for a in seen)
    return elapsed / count, ok


def median_of(repeats: int, fn: Callable[[], Tuple[float, bool]]) -> Tuple[float, bool]:
    results = [fn() for _ in range(repeats)]
    return statistics.median(r[0] for r in results), all(r[1] for r in results)


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    pem, resolver = make_world()
    rows = []
    for label, size, count in (("1 KiB", 1024, 100 if args.quick else 400),
                               ("10 MiB", 10 * 1024 * 1024, 2 if args.quick else 6)):
        msg = message(pem, size)
        off, _ = median_of(repeats, lambda: run(msg, count, False, resolver))
        on, ok = median_of(repeats, lambda: run(msg, count, True, resolver))
        rows.append((label, len(msg), count, off, on, ok))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, repeats={repeats} (median)")
    print(f"{'message':>8} {'bytes':>10} {'msgs':>5} {'off ms/msg':>11} {'on ms/msg':>10} {'added ms':>9} "
          f"{'added MiB/s':>11} dkim")
    for label, length, count, off, on, ok in rows:
        added = on - off
        rate = (length / 2**20) / added if added > 0 else float("inf")
        print(f"{label:>8} {length:>10} {count:>5} {off * 1e3:>11.3f} {on * 1e3:>10.3f} {added * 1e3:>9.3f} "
              f"{rate:>11.1f} {'pass' if ok else 'NOT PASS'}")


if __name__ == "__main__":
    main(sys.argv[1:])
