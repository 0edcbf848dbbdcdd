# -*- test-case-name: tests.test_delivery_trace,tests.test_delivery_maildir,tests.test_delivery_mbox,tests.test_delivery_print -*-
"""
What the L{txsmtpsrv._delivery} tests (tests/test_delivery_*.py) share: an
autouse fixture running the file work in the calling thread, a fixed
receipt time and body, a session and a L{MessageStream} as the protocol
leaves them when DATA starts, feeding the stream by hand in small chunks,
the 451 4.3.0 a failed Deferred must carry, and Maildir listings (the
result of a fired one: C{tests._support.result}).

Everything runs in memory against a real L{MessageStream}, except the mbox
lock tests, which need a second process because fcntl locks are per
process.
"""

from __future__ import annotations

import os
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred

from txsmtpsrv import _diskio
from txsmtpsrv._data import MessageStream
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._session import Address, Session

from tests._support import result


@pytest.fixture(autouse=True)
def inline_file_work(monkeypatch):
    """
    These tests pin the deliveries' behaviour step by step, so the file work
    runs in the calling thread (C{threads=0}); the thread pool and group
    commit are tested in test_delivery_async.py.
    """
    monkeypatch.setattr(_diskio, "DEFAULT_THREADS", 0)


WHEN = 1_764_000_000.25  # a fixed receipt time (2025-11-24)
BODY = b"Subject: test\r\nFrom: bob@example.com\r\n\r\nHello,\r\nFrom here on\r\n>From there\r\nbye\r\n"


def make_session(rcpts=("alice@example.org",), sender="bob@example.com", helo="client.example",
                 ip="192.0.2.1", hostname=None) -> Session:
    """A session in the state the protocol leaves it in when DATA starts."""
    s = Session("s3ss10n", "127.0.0.1", 25, ip, 40000)
    s.host_name_appears_as = helo
    s.opening_command = "EHLO"
    if hostname is not None:
        s.client_hostname = hostname
    s.envelope.mail_from = Address(sender) if sender is not None else None
    s.envelope.rcpt_to = [Address(r) for r in rcpts]
    return s


def make_stream(limit: int = 0) -> MessageStream:
    """A message stream whose connection side does nothing on pause/resume."""
    return MessageStream(lambda: None, lambda: None, limit)


def listing(maildir, sub: str) -> List[str]:
    """File names in a Maildir subdirectory."""
    return sorted(os.listdir(os.path.join(maildir, sub)))


def feed(stream: MessageStream, body: bytes, size: int = 7) -> None:
    """Write the body in small chunks, then end it, like the protocol does."""
    for i in range(0, len(body), size):
        stream.write(body[i : i + size])
    stream.finish()


def assert_local_error(d: Deferred[Any]) -> None:
    """The hook failed with 451 4.3.0."""
    with pytest.raises(SMTPError) as info:
        result(d)
    assert (info.value.code, info.value.enhanced) == (451, "4.3.0")
    assert info.value.text == "Requested action aborted: local error in processing"
