# -*- test-case-name: tests.test_delivery_maildir -*-
"""
L{MaildirDelivery}: a message appears in new/ only when complete, byte for
byte, under a conventional file name; every failure (fsync, write,
unusable directory, stream failure, size limit, cancel) gives 451 and
leaves nothing behind; one log line without the body; through the server;
and new Maildir and mbox directories being fsynced in their parents.
"""

from __future__ import annotations

import errno
import io
import os
import re

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from txsmtpsrv import _diskio, _maildir, _mbox
from txsmtpsrv._data import MessageTooLarge
from txsmtpsrv._delivery import MaildirDelivery, MboxDelivery, received_header, return_path_header
from txsmtpsrv._diskio import ToLF as _ToLF
from txsmtpsrv.testing import TestClient, make_server

from tests._delivery import inline_file_work  # noqa: F401 (the autouse fixture)
from tests._delivery import BODY, WHEN, assert_local_error, feed, listing, make_session, make_stream
from tests._support import result


# ---------------------------------------------------------------------------
# Maildir


def expected_maildir_file(body: bytes = BODY, linesep: bytes = b"\n") -> bytes:
    """What a delivery of C{body} for make_session() must store."""
    s = make_session()
    data = return_path_header(s) + received_header(s, "mx.test", when=WHEN) + body
    return data.replace(b"\r\n", linesep)


def test_maildir_message_only_in_new_after_completion(tmp_path):
    """The file grows in tmp/ and appears in new/, complete, only after the body ended."""
    maildir = tmp_path / "Maildir"
    delivery = MaildirDelivery(str(maildir), "mx.test", clock=Clock())
    delivery._clock.advance(WHEN)
    stream = make_stream()
    d = delivery.on_data(make_session(), stream)
    stream.write(BODY[:20])
    assert listing(maildir, "new") == []
    assert len(listing(maildir, "tmp")) == 1
    assert listing(maildir, "cur") == []
    stream.write(BODY[20:])
    assert not d.called
    stream.finish()
    assert result(d) is None
    assert listing(maildir, "tmp") == []
    [name] = listing(maildir, "new")
    assert (maildir / "new" / name).read_bytes() == expected_maildir_file()
    assert (maildir / "new" / name).stat().st_mode & 0o777 == 0o600


def test_maildir_crlf_keeps_body_exactly(tmp_path):
    """With linesep CRLF the stored body is byte-for-byte what was received."""
    body = b"a\r\nb\rc\nd\r\n" + b"x" * 100_000 + b"\r\n"
    delivery = MaildirDelivery(str(tmp_path), "mx.test", linesep=b"\r\n", clock=Clock())
    delivery._clock.advance(WHEN)
    stream = make_stream()
    d = delivery.on_data(make_session(), stream)
    feed(stream, body, size=4096)
    result(d)
    [name] = listing(tmp_path, "new")
    assert (tmp_path / "new" / name).read_bytes() == expected_maildir_file(body, b"\r\n")


def test_maildir_lf_conversion_across_chunk_boundaries():
    """CRLF split between chunks still becomes a single LF; a lone CR stays."""
    for split in range(1, 9):
        conv = _ToLF()
        data = b"ab\r\ncd\re\r\n"
        out = conv.feed(data[:split]) + conv.feed(data[split:]) + conv.flush()
        assert out == b"ab\ncd\re\n"


def test_maildir_file_name_follows_convention(tmp_path):
    """File names are <sec>.M<usec>P<pid>Q<n>.<host>, with / and : escaped in the host."""
    clock = Clock()
    clock.advance(WHEN)
    delivery = MaildirDelivery(str(tmp_path), "mx/a:b", clock=clock)
    names = []
    for _ in range(2):
        stream = make_stream()
        d = delivery.on_data(make_session(), stream)
        feed(stream, b"x\r\n")
        result(d)
    names = listing(tmp_path, "new")
    assert len(names) == 2
    for name in names:
        assert re.fullmatch(rf"1764000000\.M250000P{os.getpid()}Q\d+\.mx\\057a\\072b", name), name


def test_maildir_creates_missing_directories(tmp_path):
    """cur, new and tmp are created (mode 0700) when missing, also in an existing directory."""
    maildir = tmp_path / "deep" / "Maildir"
    stream = make_stream()
    d = MaildirDelivery(str(maildir), "mx.test").on_data(make_session(), stream)
    feed(stream, b"x\r\n")
    result(d)
    for sub in ("cur", "new", "tmp"):
        assert (maildir / sub).is_dir()
        assert (maildir / sub).stat().st_mode & 0o777 == 0o700


def test_maildir_default_hostname(monkeypatch):
    """Without a hostname, the machine's name is used."""
    monkeypatch.setattr(_maildir.socket, "gethostname", lambda: "box.example")
    assert MaildirDelivery("/nonexistent").hostname == "box.example"


def existing_maildir(path) -> str:
    """A Maildir whose cur/new/tmp exist already, so only the delivery's own fsyncs run."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(exist_ok=True)
    return str(path)


def test_maildir_fsync_failure_gives_451_and_no_file(tmp_path, monkeypatch):
    """If fsync fails the client gets 451 and neither tmp/ nor new/ keeps the message."""
    existing_maildir(tmp_path)

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    stream = make_stream()
    with capturedLogs() as events:
        d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
        feed(stream, BODY)
        assert_local_error(d)
    assert listing(tmp_path, "tmp") == [] and listing(tmp_path, "new") == []
    assert any(e.get("log_failure") is not None for e in events)


def test_maildir_directory_fsync_failure_removes_delivered_file(tmp_path, monkeypatch):
    """If the new/ directory can't be synced the renamed file is removed: 451 means not delivered."""
    existing_maildir(tmp_path)
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the first is the file, the second the directory
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    stream = make_stream()
    d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
    feed(stream, BODY)
    assert_local_error(d)
    assert listing(tmp_path, "tmp") == [] and listing(tmp_path, "new") == []


def test_maildir_write_failure_mid_stream(tmp_path, monkeypatch):
    """A full disk in the middle of the body: 451, the partial file is removed."""
    real_fdopen = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, fd):
            self.f = real_fdopen(fd, "wb", buffering=0)
            self.written = 0

        def writable(self):
            return True

        def write(self, data):
            if self.written + len(data) > 300:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(fd))
    stream = make_stream()
    d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
    stream.write(b"x" * 100)
    assert len(listing(tmp_path, "tmp")) == 1
    stream.write(b"y" * 1000)
    assert_local_error(d)
    assert listing(tmp_path, "tmp") == [] and listing(tmp_path, "new") == []
    stream.write(b"z" * 1000)  # the rest of the body is discarded quietly
    stream.finish()


def test_maildir_unusable_directory_gives_451(tmp_path):
    """A Maildir whose tmp is not a directory answers 451 before reading anything."""
    (tmp_path / "tmp").write_bytes(b"not a directory")
    stream = make_stream()
    d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
    assert_local_error(d)
    assert not stream.has_reader


def test_maildir_stream_failure_leaves_nothing(tmp_path):
    """The client vanishing mid-body fails the hook with that reason and leaves no file."""
    stream = make_stream()
    d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
    stream.write(BODY)
    assert len(listing(tmp_path, "tmp")) == 1
    stream.finish(Failure(ConnectionLost()))
    with pytest.raises(ConnectionLost):
        result(d)
    assert listing(tmp_path, "tmp") == [] and listing(tmp_path, "new") == []


def test_maildir_size_exceeded_leaves_nothing(tmp_path):
    """A body over the size limit fails the hook and leaves no file."""
    stream = make_stream(limit=50)
    d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
    stream.write(b"x" * 40)
    stream.write(b"x" * 40)
    with pytest.raises(MessageTooLarge):
        result(d)
    stream.finish()
    assert listing(tmp_path, "tmp") == [] and listing(tmp_path, "new") == []


def test_maildir_cancel_leaves_nothing(tmp_path):
    """Cancelling the hook (connection lost, hook timeout) removes the partial file."""
    stream = make_stream()
    d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(), stream)
    stream.write(BODY)
    d.cancel()
    with pytest.raises(CancelledError):
        result(d)
    assert listing(tmp_path, "tmp") == [] and listing(tmp_path, "new") == []


def test_maildir_logs_one_line_without_the_body(tmp_path):
    """One structured info event per message, with ids and sizes but never body text."""
    stream = make_stream()
    with capturedLogs() as events:
        d = MaildirDelivery(str(tmp_path), "mx.test").on_data(make_session(rcpts=("a@x.test", "b@x.test")), stream)
        feed(stream, BODY)
        result(d)
    [event] = [e for e in events if e.get("log_namespace", "").startswith("txsmtpsrv._maildir")]
    [name] = listing(tmp_path, "new")
    assert event["file"] == name
    assert event["session_id"] == "s3ss10n"
    assert event["sender"] == "bob@example.com"
    assert event["recipient_count"] == 2
    assert event["size"] == os.path.getsize(tmp_path / "new" / name)
    text = formatEvent(event)
    assert name in text and "Hello" not in text and "Subject" not in text


def test_maildir_through_the_server(tmp_path):
    """End to end in memory: a client's message lands in new/ and the 250 comes after."""
    delivery = MaildirDelivery(str(tmp_path), "mx.test")
    server, _clock = make_server(delivery)
    client = TestClient(server)
    replies = client.sendmail("bob@example.com", ["alice@example.org"], BODY, ehlo="client.example")
    assert replies[-1].code == 250
    [name] = listing(tmp_path, "new")
    data = (tmp_path / "new" / name).read_bytes()
    assert data.startswith(b"Return-Path: <bob@example.com>\nReceived: from client.example (unknown [192.0.2.10])\n")
    assert data.endswith(BODY.replace(b"\r\n", b"\n"))
    assert b"\tfor <alice@example.org>; " in data


def test_maildir_failure_through_the_server(tmp_path, monkeypatch):
    """End to end in memory: a storage failure reaches the client as 451 4.3.0."""
    existing_maildir(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    server, _clock = make_server(MaildirDelivery(str(tmp_path), "mx.test"))
    client = TestClient(server)
    replies = client.sendmail("bob@example.com", ["alice@example.org"], BODY)
    assert (replies[-1].code, replies[-1].enhanced) == (451, "4.3.0")
    assert listing(tmp_path, "new") == [] and listing(tmp_path, "tmp") == []


def test_new_maildir_and_mbox_directories_are_synced(tmp_path, monkeypatch):
    """Directories (and an mbox file) created for the first message are fsynced in their parents."""
    synced = []
    real_fsync_directory = _diskio.fsync_directory
    monkeypatch.setattr(_diskio, "fsync_directory", lambda p: (synced.append(os.path.abspath(p)),
                                                                  real_fsync_directory(p))[1])
    monkeypatch.setattr(_mbox, "fsync_directory", lambda p: (synced.append(os.path.abspath(p)),
                                                                  real_fsync_directory(p))[1])
    stream = make_stream()
    d = MaildirDelivery(str(tmp_path / "md"), "mx.test").on_data(make_session(), stream)
    feed(stream, BODY)
    assert d.called
    for parent in (tmp_path, tmp_path / "md"):
        assert str(parent) in synced
    synced.clear()
    stream = make_stream()
    d = MboxDelivery(str(tmp_path / "spool" / "mbox"), "mx.test").on_data(make_session(), stream)
    feed(stream, BODY)
    assert d.called
    assert str(tmp_path) in synced and str(tmp_path / "spool") in synced
