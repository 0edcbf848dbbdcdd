# -*- test-case-name: tests.test_delivery_mbox -*-
"""
L{MboxDelivery}: mboxrd quoting however the body is split, appending and
repairing a missing separator, failures that truncate or leave the mailbox
alone, and fcntl locking (waiting for another process, timing out, no
interleaving within one process).
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from txsmtpsrv import _mbox
from txsmtpsrv._delivery import MaildirDelivery, MboxDelivery, received_header, return_path_header
from txsmtpsrv._mbox import MboxrdQuoter as _MboxrdQuoter

from tests._delivery import inline_file_work  # noqa: F401 (the autouse fixture)
from tests._delivery import BODY, WHEN, assert_local_error, feed, make_session, make_stream
from tests._support import result


# ---------------------------------------------------------------------------
# mbox


def reference_quote(data: bytes) -> bytes:
    """mboxrd quoting done the obvious, whole-message way."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", data)


@pytest.mark.parametrize("data", [
    b"From me\nhi\nFrom you\n>From x\n>>From y\nFrom\nFro\n>>>Fro\nx From y\n",
    b">>>>>From z\n\nFrom \n",
    b"From",
    b">>>",
    b"nothing to quote\n",
])
def test_mboxrd_quoting_any_split(data):
    """Streaming quoting gives the same bytes however the input is cut into chunks."""
    expected = reference_quote(data)
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            q = _MboxrdQuoter()
            out = q.feed(data[:i]) + q.feed(data[i:j]) + q.feed(data[j:]) + q.flush()
            assert out == expected, (i, j)


def test_mboxrd_quoting_one_byte_chunks():
    """Byte-at-a-time input, the worst case for carried state, still quotes right."""
    data = b"From a\n>From b\nxFrom c\n>>>>From d\n" * 3
    q = _MboxrdQuoter()
    out = b"".join(q.feed(data[i : i + 1]) for i in range(len(data))) + q.flush()
    assert out == reference_quote(data)


def deliver_mbox(delivery: MboxDelivery, body: bytes, **session: Any) -> Deferred[None]:
    """Start an mbox delivery and stream C{body} into it."""
    stream = make_stream()
    d = delivery.on_data(make_session(**session), stream)
    feed(stream, body)
    return d


def test_mbox_appends_quoted_messages(tmp_path):
    """Two messages: From lines, trace headers, LF endings, >From quoting, blank line after each."""
    clock = Clock()
    clock.advance(WHEN)
    path = tmp_path / "mail" / "inbox"
    delivery = MboxDelivery(str(path), "mx.test", clock=clock)
    result(deliver_mbox(delivery, BODY))
    result(deliver_mbox(delivery, b"no newline at end", sender=""))
    data = path.read_bytes()
    s = make_session()
    first = (b"From bob@example.com Mon Nov 24 16:00:00 2025\n"
             + (return_path_header(s) + received_header(s, "mx.test", when=WHEN)).replace(b"\r\n", b"\n")
             + b"Subject: test\nFrom: bob@example.com\n\nHello,\n>From here on\n>>From there\nbye\n\n")
    assert data.startswith(first)
    rest = data[len(first):]
    assert rest.startswith(b"From MAILER-DAEMON Mon Nov 24 16:00:00 2025\nReturn-Path: <>\n")
    assert rest.endswith(b"\nno newline at end\n\n")
    assert path.stat().st_mode & 0o777 == 0o600


def test_mbox_repairs_missing_separator(tmp_path):
    """A mailbox left without its final empty line gets one before the next From line."""
    path = tmp_path / "inbox"
    path.write_bytes(b"From x Mon Nov 24 16:00:00 2025\nold message")
    result(deliver_mbox(MboxDelivery(str(path), "mx.test"), b"new\r\n"))
    assert path.read_bytes().startswith(b"From x Mon Nov 24 16:00:00 2025\nold message\n\nFrom bob@example.com ")


def test_mbox_append_failure_truncates(tmp_path, monkeypatch):
    """A failure while appending answers 451 and cuts the mailbox back to its old size."""
    path = tmp_path / "inbox"
    delivery = MboxDelivery(str(path), "mx.test")
    result(deliver_mbox(delivery, b"first\r\n"))
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert_local_error(deliver_mbox(delivery, b"second\r\n"))
    assert path.read_bytes() == before


def test_mbox_stream_failure_leaves_mailbox_alone(tmp_path):
    """The client vanishing mid-body appends nothing and leaves no spool file."""
    path = tmp_path / "inbox"
    stream = make_stream()
    d = MboxDelivery(str(path), "mx.test").on_data(make_session(), stream)
    stream.write(BODY)
    stream.finish(Failure(ConnectionLost()))
    with pytest.raises(ConnectionLost):
        result(d)
    assert not path.exists() or path.read_bytes() == b""
    assert os.listdir(tmp_path) in ([], ["inbox"])


def test_mbox_unwritable_gives_451(tmp_path):
    """An mbox path that is a directory answers 451."""
    (tmp_path / "inbox").mkdir()
    assert_local_error(deliver_mbox(MboxDelivery(str(tmp_path / "inbox"), "mx.test"), b"x\r\n"))


LOCK_HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    sys.stdout.write("locked\\n"); sys.stdout.flush()
    sys.stdin.read()   # hold the lock until the test closes our stdin
""")


@pytest.fixture
def locked_mbox(tmp_path):
    """An mbox file that another process holds an fcntl lock on; yields (path, release)."""
    path = tmp_path / "inbox"
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n"

    def release():
        proc.stdin.close()
        proc.wait(timeout=10)

    yield path, release
    if proc.poll() is None:
        release()


def test_mbox_waits_for_another_process_lock(locked_mbox):
    """While another program holds the fcntl lock nothing is written; once it lets go, the append happens."""
    path, release = locked_mbox
    clock = Clock()
    d = deliver_mbox(MboxDelivery(str(path), "mx.test", clock=clock), BODY)
    clock.advance(1)
    assert not d.called
    assert path.read_bytes() == b""
    release()
    clock.advance(MboxDelivery.lock_poll_interval)
    result(d)
    assert path.read_bytes().startswith(b"From bob@example.com ")


def test_mbox_lock_timeout_gives_451(locked_mbox):
    """A lock held longer than lock_timeout answers 451 and leaves the mailbox untouched."""
    path, _release = locked_mbox
    clock = Clock()
    d = deliver_mbox(MboxDelivery(str(path), "mx.test", clock=clock, lock_timeout=2), BODY)
    for _ in range(100):
        if d.called:
            break
        clock.advance(0.05)
    assert_local_error(d)
    assert path.read_bytes() == b""


def test_mbox_deliveries_in_one_process_do_not_interleave(tmp_path):
    """Two deliveries that both wait for the lock append one after the other, whole."""
    path = tmp_path / "inbox"
    clock = Clock()
    a, b = MboxDelivery(str(path), "mx.test", clock=clock), MboxDelivery(str(path), "mx.test", clock=clock)
    sa, sb = make_stream(), make_stream()
    da = a.on_data(make_session(sender="one@x.test"), sa)
    db = b.on_data(make_session(sender="two@x.test"), sb)
    sa.write(b"AAAA\r\n" * 1000)
    sb.write(b"BBBB\r\n" * 1000)
    sb.finish()
    sa.finish()
    result(da), result(db)
    data = path.read_bytes()
    messages = data.split(b"\n\nFrom ")
    assert len(messages) == 2
    assert messages[0].startswith(b"From two@x.test") and b"AAAA" not in messages[0]
    assert messages[1].startswith(b"one@x.test") and b"BBBB" not in messages[1]
    assert _mbox._appenders == {}


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
@pytest.mark.parametrize("fails", [False, True])
def test_delivery_lines_name_the_session_in_their_system(tmp_path, monkeypatch, kind, fails):
    """
    "Stored message" and "delivery failed" carry the session id in their
    system (C{[txsmtpsrv#info <id>]}), as every other line of a session does.
    """
    if fails:
        def fsync(fd):
            raise OSError(errno.EIO, "I/O error")
        monkeypatch.setattr(os, "fsync", fsync)
    delivery = (MaildirDelivery(str(tmp_path / "Maildir"), "mx.test") if kind == "maildir"
                else MboxDelivery(str(tmp_path / "mbox"), "mx.test"))
    stream = make_stream()
    with capturedLogs() as events:
        d = delivery.on_data(make_session(), stream)
        feed(stream, BODY)
        if fails:
            assert_local_error(d)
        else:
            result(d)
    ours = [e for e in events if e.get("session_id") == "s3ss10n"]
    assert ours and all(e.get("log_system", "").endswith(" s3ss10n") for e in ours)
    assert any(e.get("log_failure") is not None for e in ours) == fails
