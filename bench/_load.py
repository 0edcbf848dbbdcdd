"""
Load generator for the benchmark: a small, fast asyncio SMTP client.

It speaks just enough SMTP to push messages through a sink: greeting, EHLO,
MAIL/RCPT/DATA, the body, QUIT.  Every reply code is checked; a reply that is
not the expected one, a dropped connection or a timeout counts as a failure
and is remembered (the first few verbatim) so that the benchmark can report
it.  By default every server is driven lock-step (one command, one reply),
because neither aiosmtpd nor twisted.mail advertises PIPELINING; with
``pipelining=True`` MAIL, RCPT and DATA go out in one write whenever the server
advertises PIPELINING in its EHLO reply.

The client uses ``asyncio.Protocol`` directly (no streams) and one deadline per
scenario instead of a timer per reply, so that it stays cheap next to the
server it measures.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

HOST = "127.0.0.1"
WRITE_CHUNK = 256 * 1024
MAX_RECORDED_ERRORS = 5


class SMTPFailure(Exception):
    """A reply other than the expected one, or a connection that went away."""


@dataclass
class Tally:
    """What a scenario did: messages accepted, failures, and the first few errors."""

    delivered: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    max_failures: int = 20
    pipelining_advertised: bool | None = None

    def fail(self, what: str, count: int = 1) -> None:
        """Count ``count`` failed messages/connections and remember the reason."""
        self.failures += count
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append(what)

    @property
    def give_up(self) -> bool:
        """Too many failures: stop the scenario rather than hammer a broken server."""
        return self.failures >= self.max_failures


def make_message(size: int, seq: int = 0) -> bytes:
    """
    Return a dot-stuffed DATA payload (ending with CRLF.CRLF) whose unstuffed
    content is exactly ``size`` bytes: a few headers, then 78-byte CRLF lines,
    every 50th of which starts with a dot (so dot-unstuffing is exercised).
    """
    head = (
        "From: Bench Client <bench@client.test>\r\n"
        "To: Sink <sink@server.test>\r\n"
        f"Subject: benchmark message {seq}\r\n"
        f"Message-ID: <{seq}.{size}@client.test>\r\n"
        "Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode("ascii")
    alphabet = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 "
    lines = []
    for i in range(50):
        start = (i * 7) % len(alphabet)
        text = (alphabet[start:] + alphabet * 2)[:76]
        if i == 0:
            text = b"." + text[1:]
        lines.append(text + b"\r\n")
    block = b"".join(lines)  # 50 lines, 3900 bytes
    needed = size - len(head)
    if needed < 0:
        raise ValueError(f"message size {size} is smaller than the headers")
    body = (block * (needed // len(block) + 1))[:needed]
    body = body[: body.rfind(b"\r\n") + 2]  # whole lines only (empty if none fits)
    rest = needed - len(body)
    if rest >= 2:
        body += b"x" * (rest - 2) + b"\r\n"
    elif rest == 1:
        if not body:
            raise ValueError(f"message size {size} cannot end with CRLF")
        body = body[:-2] + b"x\r\n"  # make the last line one byte longer
    content = head + body
    assert len(content) == size and content.endswith(b"\n")
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


class ClientProtocol(asyncio.Protocol):
    """One SMTP client connection: parses replies and hands them to waiters in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current: list[bytes] = []
        self.replies: collections.deque[tuple[int, bytes]] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[tuple[int, bytes]]] = (
            collections.deque()
        )
        self.closed: asyncio.Future[None] = loop.create_future()
        self.lost: Exception | None = None
        self.paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.pipelining = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start : nl + 1])
            start = nl + 1
            self.current.append(line)
            if line[3:4] == b"-":
                continue
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
            reply = (code, b"".join(self.current))
            self.current = []
            while self.waiters and self.waiters[0].done():
                self.waiters.popleft()  # its task was cancelled (deadline, Ctrl-C)
            if self.waiters:
                self.waiters.popleft().set_result(reply)
            else:
                self.replies.append(reply)
        if start:
            del buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed by server")
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SMTPFailure(f"connection lost: {self.lost!r}"))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(SMTPFailure("connection lost while writing"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        self.drain_waiter = None

    # client API

    def reply(self) -> Awaitable[tuple[int, bytes]]:
        """The next reply (code, full text), in order."""
        fut = self.loop.create_future()
        if self.replies:
            fut.set_result(self.replies.popleft())
        elif self.lost is not None:
            fut.set_exception(SMTPFailure(f"connection lost: {self.lost!r}"))
        else:
            self.waiters.append(fut)
        return fut

    async def expect(self, code: int, what: str) -> bytes:
        """Wait for the next reply and fail unless it has ``code``."""
        got, text = await self.reply()
        if got != code:
            raise SMTPFailure(f"{what}: expected {code}, got {text[:200]!r}")
        return text

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def write_large(self, data: bytes) -> None:
        """Write ``data`` in chunks, honouring the transport's flow control."""
        view = memoryview(data)
        for off in range(0, len(view), WRITE_CHUNK):
            if self.lost is not None:
                raise SMTPFailure(f"connection lost while writing: {self.lost!r}")
            self.write(view[off : off + WRITE_CHUNK])
            if self.paused:
                self.drain_waiter = self.loop.create_future()
                await self.drain_waiter


async def connect(port: int) -> ClientProtocol:
    """Open a connection and read the 220 greeting."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: ClientProtocol(loop), HOST, port)
    await proto.expect(220, "greeting")
    return proto


async def ehlo(proto: ClientProtocol) -> None:
    """EHLO, remembering whether the server advertised PIPELINING."""
    proto.write(b"EHLO client.test\r\n")
    text = await proto.expect(250, "EHLO")
    proto.pipelining = b"PIPELINING" in text.upper()


async def send_message(proto: ClientProtocol, payload: bytes, pipelining: bool) -> None:
    """One transaction: MAIL, RCPT, DATA, payload; raises SMTPFailure unless all succeed."""
    envelope = b"MAIL FROM:<bench@client.test>\r\n", b"RCPT TO:<sink@server.test>\r\n"
    if pipelining and proto.pipelining:
        proto.write(envelope[0] + envelope[1] + b"DATA\r\n")
        await proto.expect(250, "MAIL")
        await proto.expect(250, "RCPT")
        await proto.expect(354, "DATA")
    else:
        proto.write(envelope[0])
        await proto.expect(250, "MAIL")
        proto.write(envelope[1])
        await proto.expect(250, "RCPT")
        proto.write(b"DATA\r\n")
        await proto.expect(354, "DATA")
    if len(payload) > WRITE_CHUNK:
        await proto.write_large(payload)
    else:
        proto.write(payload)
    await proto.expect(250, "end of data")


async def quit(proto: ClientProtocol) -> None:
    """QUIT, then wait until the server has closed the connection."""
    proto.write(b"QUIT\r\n")
    await proto.expect(221, "QUIT")
    await proto.closed


async def connection_run(
    port: int, count: int, payload: bytes, pipelining: bool, tally: Tally
) -> None:
    """One connection sending ``count`` messages; failures are counted, not raised."""
    sent = 0
    proto: ClientProtocol | None = None
    try:
        proto = await connect(port)
        await ehlo(proto)
        tally.pipelining_advertised = proto.pipelining
        for _ in range(count):
            await send_message(proto, payload, pipelining)
            sent += 1
            tally.delivered += 1
        await quit(proto)
    except (SMTPFailure, OSError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}", max(count - sent, 1))
    finally:
        if proto is not None and proto.transport is not None:
            proto.transport.close()


async def message_load(
    port: int,
    *,
    sessions: int,
    total: int,
    per_connection: int,
    payload: bytes,
    pipelining: bool,
    tally: Tally,
    deadline: float,
) -> None:
    """
    ``sessions`` concurrent clients deliver ``total`` messages, opening a new
    connection every ``per_connection`` messages.  Bounded by ``deadline``
    seconds; anything not delivered by then is counted as failed.
    """
    counts = [total // sessions + (1 if i < total % sessions else 0) for i in range(sessions)]

    async def session(n: int) -> None:
        while n > 0 and not tally.give_up:
            k = min(per_connection, n)
            await connection_run(port, k, payload, pipelining, tally)
            n -= k

    tasks = [asyncio.ensure_future(session(n)) for n in counts if n]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        missing = total - tally.delivered - tally.failures
        tally.fail(f"deadline of {deadline:.0f} s exceeded", max(missing, 1))
    for task in done:
        if task.exception() is not None:
            tally.fail(f"client error: {task.exception()!r}")


async def idle_connections(
    port: int,
    *,
    count: int,
    concurrency: int,
    tally: Tally,
    deadline: float,
    while_open: Callable[[], Awaitable[None]],
) -> int:
    """
    Open ``count`` connections, each greeted and past EHLO, then await
    ``while_open()`` (which measures the server) and close them all.
    Returns how many connections were open during the measurement.
    """
    opened: list[ClientProtocol] = []
    gate = asyncio.Semaphore(concurrency)  # stay under the servers' listen backlogs

    async def one() -> None:
        async with gate:
            if tally.give_up:
                return
            try:
                proto = await connect(port)
                opened.append(proto)
                await ehlo(proto)
            except (SMTPFailure, OSError) as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")

    try:
        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            tally.fail(f"deadline of {deadline:.0f} s exceeded opening connections")
        alive = sum(1 for p in opened if p.lost is None)
        if alive < count:
            tally.fail(f"only {alive} of {count} idle connections open", count - alive)
        await while_open()
        alive_after = sum(1 for p in opened if p.lost is None)
        if alive_after < alive:
            tally.fail(f"server dropped {alive - alive_after} idle connections", alive - alive_after)
        return alive
    finally:
        for proto in opened:
            if proto.transport is not None:
                proto.transport.abort()


async def latency(
    port: int, *, count: int, payload: bytes, tally: Tally, deadline: float
) -> list[int]:
    """One lock-step client: wall-clock nanoseconds per transaction (MAIL .. 250 after the dot)."""
    samples: list[int] = []

    async def run() -> None:
        proto = await connect(port)
        try:
            await ehlo(proto)
            for _ in range(count):
                t0 = time.perf_counter_ns()
                await send_message(proto, payload, pipelining=False)
                samples.append(time.perf_counter_ns() - t0)
                tally.delivered += 1
            await quit(proto)
        finally:
            if proto.transport is not None:
                proto.transport.close()

    try:
        await asyncio.wait_for(run(), deadline)
    except (SMTPFailure, OSError, asyncio.TimeoutError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}", max(count - len(samples), 1))
    return samples
