"""
tls.py's client: one blocking SMTP connection per thread that says STARTTLS
(or, with C{IMPLICIT}, wraps the socket before the greeting), checks every
reply and never verifies the certificate, and the loads built on it, each
run in threads -- persist, large, and plain / full / resumed connections
(resumed: offering the session ticket of the thread's previous connection).
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Callable

from _load import make_message

TIMEOUT = 30.0  # every socket operation of the client
#: --implicit: TLS from the first byte (txsmtpsrv's secure=True) instead of STARTTLS; set by tls.py.
IMPLICIT = False


class Client:
    """One blocking SMTP connection; replies are checked (a wrong one raises)."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        if not IMPLICIT:
            self.expect(220)

    def expect(self, code: int) -> None:
        """Read one (multi-line) reply; ConnectionError unless its code is C{code}."""
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError(f"connection closed, expected {code}")
            if line[3:4] != b"-":
                break
        if int(line[:3]) != code:
            raise ConnectionError(f"expected {code}, got {line!r}")

    def command(self, line: bytes, code: int) -> None:
        """Send C{line}, expect C{code}."""
        self.sock.sendall(line)
        self.expect(code)

    def starttls(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
        """The handshake (after STARTTLS, or first with C{IMPLICIT}), offering C{session}; then EHLO."""
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
        """One transaction; C{body} ends with the terminating dot."""
        self.command(b"MAIL FROM:<bench@client.bench>\r\n", 250)
        self.command(b"RCPT TO:<sink@server.bench>\r\n", 250)
        self.command(b"DATA\r\n", 354)
        self.sock.sendall(body)
        self.expect(250)

    def quit(self) -> None:
        """QUIT and close, even if the reply is wrong."""
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
    """A TLS client context that accepts the self-signed certificate (nothing is verified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Outcome:
    """What a load's threads did: units of work (messages, MiB or connections), resumptions, errors."""

    units: int = 0
    resumed: int = 0
    errors: list[str] = field(default_factory=list)


def in_threads(threads: int, work: Callable[[int, Outcome, threading.Lock], None]) -> Outcome:
    """C{work(index, outcome, lock)} in C{threads} threads at once; an exception is an error, not a crash."""
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
    """C{threads} connections, STARTTLS, C{messages} 1 KiB messages each."""
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
    """One connection, STARTTLS, C{messages} 10 MiB messages (units: MiB)."""
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
