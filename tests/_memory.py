# -*- test-case-name: tests.test_protocol_commands,tests.test_protocol_transaction,tests.test_protocol_hooks,tests.test_protocol_observers -*-
"""
Small helpers shared by the in-memory protocol tests (L{Pending} now lives in txsmtpsrv.testing):
reply codes, write counting, and the connection, dialogue steps and hooks the
C{tests/test_protocol_*.py} modules use.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, List, Optional, Tuple

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv.testing import Pending, TestClient, make_server

__all__ = ["ENHANCED_ON_WIRE", "Collect", "Pending", "Recorder", "Rejector", "answer", "codes", "connect",
           "count_writes", "ehlo", "mail", "rcpt"]

ENHANCED_ON_WIRE = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)", re.M)


def codes(replies: Iterable[Reply]) -> List[Tuple[int, Optional[str]]]:
    """(code, enhanced) of each reply."""
    return [(r.code, r.enhanced) for r in replies]


def count_writes(client: TestClient) -> List[bytes]:
    """Record every transport.write the server makes from now on."""
    writes: List[bytes] = []
    original = client.transport.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    client.transport.write = write  # type: ignore[method-assign]
    return writes


class Collect:
    """Hooks whose data hook reads each whole body into C{self.bodies}."""

    def __init__(self) -> None:
        self.bodies: List[bytes] = []

    async def on_data(self, session: Any, stream: Any) -> None:
        self.bodies.append(await stream.content())


def connect(hooks: Any = None, **options: Any):
    """A server and one greeted client; returns (server, clock, client)."""
    server, clock = make_server(hooks, **options)
    return server, clock, TestClient(server)


def ehlo(client: TestClient, name: str = "client.test") -> Reply:
    """EHLO that must succeed."""
    reply = client.command(f"EHLO {name}")
    assert reply.code == 250, reply
    return reply


def mail(client: TestClient, sender: str = "a@x.test") -> None:
    """EHLO plus an accepted MAIL FROM."""
    ehlo(client)
    reply = client.command(f"MAIL FROM:<{sender}>")
    assert reply.code == 250, reply


def rcpt(client: TestClient, sender: str = "a@x.test", to: str = "b@y.test") -> None:
    """EHLO, MAIL and one accepted RCPT."""
    mail(client, sender)
    reply = client.command(f"RCPT TO:<{to}>")
    assert reply.code == 250, reply


def answer(line: str, after: Callable[[TestClient], Any] = ehlo, **options: Any) -> tuple:
    """(code, enhanced) of the reply to C{line} on a new connection, sent after C{after} (ehlo, mail or rcpt)."""
    _, _, client = connect(**options)
    after(client)
    reply = client.command(line)
    return reply.code, reply.enhanced


class Recorder:
    """Hooks that record their calls and accept everything."""

    def __init__(self) -> None:
        self.calls: list = []
        self.bodies: list = []

    def on_connect(self, session):
        self.calls.append(("connect", session))

    def on_helo(self, session, hostname):
        self.calls.append(("helo", hostname))

    def on_mail_from(self, session, address):
        self.calls.append(("mail", address))

    def on_rcpt_to(self, session, address):
        self.calls.append(("rcpt", address))

    async def on_data(self, session, stream):
        self.bodies.append(await stream.content())

    def on_close(self, session):
        self.calls.append(("close", session))


class Rejector:
    """Hooks that reject or fail in each phase, to see codes in error replies."""

    def on_rcpt_to(self, session, address):
        if address.local_part == "fail":
            raise RuntimeError("boom")
        if address.local_part == "reply":
            return Reply(250, "fine", "2.1.5")
        raise SMTPError(550, "No such user", "5.1.1")

    def on_data(self, session, stream):
        raise SMTPError(554, "Rejected")


class FakeSocket:
    """Takes at most C{room} bytes per send, or raises what it is told to."""

    def __init__(self, room: int = 1 << 30, error: Optional[OSError] = None) -> None:
        self.room = room
        self.error = error
        self.sent: List[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = data[: self.room]
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)
