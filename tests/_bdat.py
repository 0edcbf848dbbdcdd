# -*- test-case-name: tests.test_bdat_delivery,tests.test_bdat_errors,tests.test_bdat_lmtp,tests.test_bdat_bytes -*-
"""
What the BDAT tests (tests/test_bdat_*.py) share: MAIL and RCPT in one
write, data hooks that read the whole body (L{Recorder}) or stream it to a
L{Reader} and answer later (L{Pending}), a client after EHLO, and BDAT
commands for given chunks.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txsmtpsrv.testing import TestClient, make_server


MAIL_RCPT = b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n"


class Recorder:
    """Hooks that read the whole body with content() and keep it."""

    def __init__(self) -> None:
        self.bodies: List[bytes] = []
        self.streams: List[Any] = []
        self.errors: List[Failure] = []

    async def on_data(self, session, stream):
        self.streams.append(stream)
        try:
            body = await stream.content()
        except Exception:
            self.errors.append(Failure())
            raise
        self.bodies.append(body)


class Reader:
    """An IProtocol for MessageStream.deliver_body that records what it gets."""

    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.reason: Optional[Failure] = None
        self.producer: Any = None

    def makeConnection(self, producer):
        self.producer = producer

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.reason = reason


class Pending:
    """A data hook that reads with a L{Reader} and answers with a Deferred the test fires."""

    def __init__(self) -> None:
        self.readers: List[Reader] = []
        self.answers: List[Deferred] = []
        self.cancelled: List[Deferred] = []

    def on_data(self, session, stream):
        reader = Reader()
        self.readers.append(reader)
        stream.deliver_body(reader)
        d: Deferred = Deferred(self.cancelled.append)
        self.answers.append(d)
        return d


def greeted(hooks: Any = None, **options: Any) -> TestClient:
    """A client that has sent EHLO."""
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    return client


def bdat(*chunks: bytes, last: bool = True) -> bytes:
    """BDAT commands carrying C{chunks}, the final one marked LAST (if C{last})."""
    out = b""
    for i, chunk in enumerate(chunks):
        tail = b" LAST" if last and i == len(chunks) - 1 else b""
        out += b"BDAT %d%s\r\n" % (len(chunk), tail) + chunk
    return out
