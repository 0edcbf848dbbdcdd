# -*- test-case-name: tests.test_protocol -*-
"""Small helpers shared by the in-memory protocol tests."""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from txsmtpsrv import Reply
from txsmtpsrv.testing import TestClient

__all__ = ["codes", "count_writes"]


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
