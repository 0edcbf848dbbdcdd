# -*- test-case-name: tests.test_oversized -*-
"""
Issue 10 item 6: C{reject_oversized}. By default (True) the server answers
552 5.3.4 itself (RFC 1870 4); with False the application decides: the whole
body streams to C{on_data} with C{stream.size_exceeded} set, nothing is
buffered for it, and the hook's answer stands. DATA and BDAT.
"""

from __future__ import annotations

import tracemalloc
from typing import Any, List

import pytest

from txsmtpsrv import SMTPError
from txsmtpsrv.testing import TestClient, make_server

LINE = b"x" * 78 + b"\r\n"


class Counting:
    """A data hook that streams the body through collect(), keeping only counts, and decides by size."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.received = 0
        self.exceeded: List[bool] = []
        self.streams: List[Any] = []
        self.max_buffered = 0

    def on_data(self, session, stream):
        self.streams.append(stream)

        def chunk(data: bytes) -> None:
            self.received += len(data)
            self.max_buffered = max(self.max_buffered, sum(map(len, stream._buffer)))

        def done(_: object) -> None:
            self.exceeded.append(stream.size_exceeded)
            if stream.size_exceeded and not self.accept:
                raise SMTPError(552, "Quarantine is full", "5.3.4")

        return stream.collect(chunk).addCallback(done)


def greeted(hooks: Any, **options: Any) -> TestClient:
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    return client


def test_default_still_rejects():
    """Default: over the limit is 552 5.3.4, the hook's stream fails."""
    hooks = Counting()
    client = greeted(hooks, size=1000)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + LINE * 20 + b".\r\n")
    assert client.codes()[-1] == (552, "5.3.4")
    assert hooks.exceeded == []


def test_large_body_streams_to_the_hook_with_flat_memory():
    """reject_oversized=False: 16 MiB through a 1 MiB limit reaches collect() chunk by chunk, 250 stands,
    size_exceeded is set, the stream never buffers, and memory stays flat (no copy of the body kept)."""
    hooks = Counting()
    client = greeted(hooks, size=1024 * 1024, reject_oversized=False)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert [c for c, _ in client.codes()] == [250, 250, 354]
    block = LINE * 800  # 64,000 bytes per read
    total = 16 * 1024 * 1024 // len(block) * len(block)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(total // len(block)):
            client.send(block)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    client.send(b".\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert hooks.received == total
    assert hooks.exceeded == [True]
    assert hooks.streams[0].byte_length == total
    assert hooks.max_buffered == 0
    assert peak < 2 * 1024 * 1024, peak  # a few reads' worth, not 16 MiB


def test_hook_refusal_stands():
    """reject_oversized=False and a hook that refuses oversized mail: its own reply goes out."""
    hooks = Counting(accept=False)
    client = greeted(hooks, size=1000, reject_oversized=False)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + LINE * 20 + b".\r\n")
    replies = client.replies()
    assert (replies[-1].code, replies[-1].enhanced, replies[-1].text) == (552, "5.3.4", "Quarantine is full")
    assert hooks.received == 20 * len(LINE)


def test_small_message_not_flagged():
    hooks = Counting()
    client = greeted(hooks, size=1000, reject_oversized=False)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + LINE + b".\r\n")
    assert client.codes()[-1] == (250, "2.0.0")
    assert hooks.exceeded == [False]


@pytest.mark.parametrize("reject,expected", [(True, (552, "5.3.4")), (False, (250, "2.1.0"))])
def test_declared_size_at_mail(reject, expected):
    """MAIL SIZE= over the limit: 552 when rejecting; accepted (on_mail_from sees SIZE) when the app decides."""
    seen: List[Any] = []

    class Hooks:
        def on_mail_from(self, session, address):
            seen.append(address.params.get("SIZE"))

    client = greeted(Hooks(), size=1000, reject_oversized=reject)
    assert (lambda r: (r.code, r.enhanced))(client.command("MAIL FROM:<a@x.test> SIZE=5000")) == expected
    assert seen == ([] if reject else ["5000"])


def bdat_wire(chunks: List[bytes]) -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        out += b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if i == len(chunks) - 1 else b"") + chunk
    return out


@pytest.mark.parametrize("reject", [True, False])
def test_bdat(reject):
    """BDAT: 552 per chunk once over the limit when rejecting; otherwise every chunk 250 and the hook decides."""
    hooks = Counting()
    client = greeted(hooks, size=1000, reject_oversized=reject)
    chunks = [LINE * 5] * 6  # 2400 bytes in six chunks
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n" + bdat_wire(chunks))
    got = client.codes()[2:]
    if reject:
        assert got[-1] == (552, "5.3.4") and (552, "5.3.4") in got[:-1]
        assert hooks.exceeded == []
    else:
        assert got == [(250, "2.0.0")] * 6
        assert hooks.received == sum(map(len, chunks)) and hooks.exceeded == [True]


def test_twistd_keeps_rejecting(tmp_path):
    """twistd smtpsrv has no switch for it: its servers reject oversized mail."""
    from twisted.internet.testing import MemoryReactorClock
    from txsmtpsrv._tap import Options, makeService
    options = Options()
    options.parseOptions(["--maildir", str(tmp_path / "md"), "--size", "1000", "--no-reverse-lookup"])
    service = makeService(options, reactor=MemoryReactorClock())
    assert service.server.options.reject_oversized is True
