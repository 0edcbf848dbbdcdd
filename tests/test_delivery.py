# -*- test-case-name: tests.test_delivery -*-
"""
Tests for L{txsmtpsrv._delivery}: Maildir, mbox and print deliveries.

Everything runs in memory against a real L{MessageStream} (fed by hand, as
the protocol would) except the mbox lock test, which needs a second process
because fcntl locks are per process.
"""

from __future__ import annotations

import email.utils
import errno
import io
import os
import re
import subprocess
import sys
import textwrap
from typing import Any, List

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from txsmtpsrv import _delivery, _diskio, _maildir, _mbox
from txsmtpsrv._data import MessageStream, MessageTooLarge
from txsmtpsrv._delivery import (
    MaildirDelivery,
    MboxDelivery,
    PrintDelivery,
    received_header,
    return_path_header,
)
from txsmtpsrv._diskio import ToLF as _ToLF
from txsmtpsrv._mbox import MboxrdQuoter as _MboxrdQuoter
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._session import Address, Session
from txsmtpsrv.testing import TestClient, make_server



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


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must have fired; failures are raised."""
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def listing(maildir, sub: str) -> List[str]:
    """File names in a Maildir subdirectory."""
    return sorted(os.listdir(os.path.join(maildir, sub)))


def feed(stream: MessageStream, body: bytes, size: int = 7) -> None:
    """Write the body in small chunks, then end it, like the protocol does."""
    for i in range(0, len(body), size):
        stream.write(body[i : i + size])
    stream.finish()


# ---------------------------------------------------------------------------
# Trace headers


def test_received_header_one_recipient():
    """One recipient: the header names it in a for clause, folded as RFC 5321 4.4 shows."""
    header = received_header(make_session(hostname="mail.client.example"), "mx.test", when=WHEN)
    lines = header.split(b"\r\n")
    assert header.endswith(b"\r\n")
    assert lines[0] == b"Received: from client.example (mail.client.example [192.0.2.1])"
    assert lines[1] == b"\tby mx.test (txsmtpsrv) with ESMTP id s3ss10n"
    assert lines[2].startswith(b"\tfor <alice@example.org>; ")
    date = lines[2].split(b"; ", 1)[1].decode()
    assert email.utils.parsedate_to_datetime(date).timestamp() == int(WHEN)


def test_received_header_several_recipients_omits_for():
    """Several recipients: no for clause, so Bcc recipients stay hidden."""
    header = received_header(make_session(rcpts=("a@x.test", "b@x.test")), "mx.test", when=WHEN)
    assert b"for" not in header
    assert b"a@x.test" not in header
    assert b"\tby mx.test (txsmtpsrv) with ESMTP id s3ss10n;\r\n\t" in header


def test_received_header_without_reverse_dns_and_ipv6():
    """No reverse DNS gives 'unknown'; an IPv6 peer gets an IPv6: address literal."""
    s = make_session(ip="2001:db8::1")  # client_hostname defaults to "[ip]"
    assert received_header(s, "mx.test").startswith(
        b"Received: from client.example (unknown [IPv6:2001:db8::1])\r\n")
    mapped = make_session(ip="::ffff:192.0.2.7")
    assert b"(unknown [192.0.2.7])" in received_header(mapped, "mx.test")


def test_received_header_cleans_client_names():
    """A hostile HELO name cannot break out of its token or add header lines."""
    s = make_session(helo="evil (x)\tY;z", hostname="a b(c)")
    first = received_header(s, "mx.test").split(b"\r\n")[0]
    assert first == b"Received: from evil__x__Y_z (a_b_c_ [192.0.2.1])"


def test_received_header_transmission_type():
    """The with clause is the session's transmission type (RFC 3848)."""
    s = make_session()
    s.secure = True
    s.user = "alice"
    assert b" with ESMTPSA id " in received_header(s, "mx.test")


def test_return_path_header():
    """The reverse-path becomes Return-Path; the null sender gives <>."""
    assert return_path_header(make_session()) == b"Return-Path: <bob@example.com>\r\n"
    assert return_path_header(make_session(sender="")) == b"Return-Path: <>\r\n"


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


def assert_local_error(d: Deferred[Any]) -> None:
    """The hook failed with 451 4.3.0."""
    with pytest.raises(SMTPError) as info:
        result(d)
    assert (info.value.code, info.value.enhanced) == (451, "4.3.0")
    assert info.value.text == "Requested action aborted: local error in processing"


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


# ---------------------------------------------------------------------------
# Print


def test_print_delivery_text_stream():
    """The envelope and the decoded body go to the given text stream in one block."""
    out = io.StringIO()
    stream = make_stream()
    d = PrintDelivery(out).on_data(make_session(rcpts=("a@x.test", "b@x.test")), stream)
    feed(stream, b"Subject: hi\r\n\r\nh\xc3\xa9llo\r\n")
    result(d)
    assert out.getvalue() == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "X-Session-Id: s3ss10n\n"
        "X-Peer: 192.0.2.1\n"
        "X-MailFrom: <bob@example.com>\n"
        "X-RcptTo: <a@x.test>, <b@x.test>\n"
        "Subject: hi\n\nhéllo\n"
        "------------ END MESSAGE ------------\n"
    )


def test_print_delivery_binary_stream_and_default(capsys):
    """A binary stream gets UTF-8 bytes; with no stream, standard output is used."""
    out = io.BytesIO()
    stream = make_stream()
    d = PrintDelivery(out).on_data(make_session(), stream)
    feed(stream, b"x\r\n")
    result(d)
    assert out.getvalue().endswith(b"x\n------------ END MESSAGE ------------\n")
    stream = make_stream()
    d = PrintDelivery().on_data(make_session(), stream)
    feed(stream, b"y\r\n")
    result(d)
    assert capsys.readouterr().out.endswith("y\n------------ END MESSAGE ------------\n")


def test_received_header_bounds_and_ascii_client_names():
    """Client-chosen names reach the Received header as short printable ASCII, whatever was sent."""
    from txsmtpsrv._delivery import received_header
    from txsmtpsrv._session import Address, Session

    session = Session("abc", "192.0.2.1", 25, "192.0.2.10", 4000)
    session.host_name_appears_as = "h\u0085x\u2028y\u00e9" + "a" * 4000
    session.client_hostname = "ptr\r\nInjected: yes"
    session.opening_command = "EHLO"
    session.envelope.rcpt_to.append(Address("r@example.test"))
    header = received_header(session, "mx.test", when=0)
    assert header.isascii()
    assert all(len(line) < 998 for line in header.split(b"\r\n"))
    assert b"\r\nInjected" not in header


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
