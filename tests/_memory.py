# -*- test-case-name: tests.test_protocol -*-
"""Small helpers shared by the in-memory protocol tests (L{Pending} now lives in txsmtpsrv.testing)."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

from txsmtpsrv import Reply
from txsmtpsrv.testing import Pending, TestClient

__all__ = ["Collect", "Pending", "codes", "count_writes"]


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
