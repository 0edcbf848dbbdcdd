# -*- test-case-name: tests.test_delivery -*-
"""
Built-in deliveries: hooks objects whose C{on_data} stores each message.

L{MaildirDelivery} and L{MboxDelivery} are what C{twistd smtpsrv} uses out
of the box; L{PrintDelivery} is the debugging sink of the examples. Each is a
plain hooks object, so C{SMTPServer(MaildirDelivery("~/Maildir"))} is a
complete mail receiver.

The contract of the file deliveries is the one an MTA owes its clients
(RFC 5321 section 6.1): the C{250} goes out only once the message is on
stable storage (written, C{fsync}ed, renamed or appended, directory
C{fsync}ed); any local failure answers C{451 4.3.0} and leaves no partial
message behind, so the client retries and nothing is lost. A crash between
storing and the client reading the C{250} can duplicate a message (the client
retries one we kept), as RFC 5321 6.1 prefers to losing it; see
L{MaildirDelivery}.

Trade-off, documented on purpose: the file writes happen synchronously in the
reactor thread, one chunk at a time as the body arrives. Writes to a local
disk land in the page cache and return in microseconds; only the final
C{fsync} waits for the device (typically milliseconds on SSDs, tens of them on
spinning disks), during which this process serves nobody else. That is
simpler, and for a local disk faster, than a thread hop per chunk; for slow or
network file systems run more processes (C{twistd smtpsrv --workers N}) or
write your own C{on_data} that defers to a thread pool. Memory stays bounded
either way: only one chunk (plus the file object's buffer) is held at a time.
"""

from __future__ import annotations

import email.utils
import errno
import fcntl
import io
import ipaddress
import itertools
import os
import re
import socket
import sys
import tempfile
import time
from typing import IO, Any, Optional, Sequence

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from txsmtpsrv._errors import SMTPError
from txsmtpsrv._maildir_tmp import TMP_CLEAN_INTERVAL, TMP_MAX_AGE, TmpCleaner, default_clock
from txsmtpsrv._session import Address, Session

__all__ = [
    "MaildirDelivery",
    "MboxDelivery",
    "PrintDelivery",
    "received_header",
    "return_path_header",
]

#: Reply text for any local storage failure (RFC 5321 4.2.3, RFC 3463 4.3.0).
_LOCAL_ERROR = "Requested action aborted: local error in processing"


def _local_error() -> SMTPError:
    return SMTPError(451, _LOCAL_ERROR, "4.3.0")


def _now(clock: Optional[IReactorTime]) -> float:
    return clock.seconds() if clock is not None else time.time()


# ---------------------------------------------------------------------------
# Trace headers (RFC 5321 4.4)

#: Characters a client-supplied name may not carry into a header: controls,
#: white space, the comment / date delimiters of the Received syntax, and
#: anything outside printable ASCII (C1 controls, Unicode line breaks).
_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\;]")
#: Longest client-supplied name kept (a header line must stay under 998 octets).
_MAX_NAME = 255


def _clean(text: str) -> str:
    """Make a client-chosen name safe to put in a header token: printable ASCII, bounded."""
    return _UNSAFE.sub("_", text[:_MAX_NAME]) or "_"


def _tcp_info(session: Session) -> str:
    """C{client_hostname [address-literal]}, or C{unknown} for non-IP peers."""
    address = getattr(session, "remote_address", None) or ""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        literal = ""
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        literal = f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"
    hostname = getattr(session, "client_hostname", None) or ""
    # The protocol fills client_hostname with "[ip]" when reverse DNS found nothing.
    if not hostname or hostname.startswith("["):
        hostname = "unknown"
    hostname = _clean(hostname)
    return f"{hostname} {literal}" if literal else hostname


def received_header(
    session: Session,
    hostname: str,
    recipients: Optional[Sequence[Address]] = None,
    when: Optional[float] = None,
) -> bytes:
    """
    The C{Received:} trace header this server adds (RFC 5321 4.4), e.g.::

        Received: from helo.example (mail.example [192.0.2.1])
        \tby mx.example (txsmtpsrv) with ESMTPS id 3fa9c2
        \tfor <alice@example.org>; Tue, 25 Nov 2025 10:00:00 +0000

    The C{for} clause names the recipient only when there is exactly one, so
    a message to several people does not disclose the Bcc recipients to each.

    @param hostname: this server's name, for the C{by} clause.
    @param recipients: defaults to C{session.envelope.rcpt_to}.
    @param when: POSIX time of receipt; defaults to now.
    @return: the header, folded, ending in CRLF.
    """
    if recipients is None:
        recipients = session.envelope.rcpt_to
    helo = _clean(session.host_name_appears_as) if session.host_name_appears_as else "unknown"
    date = email.utils.formatdate(time.time() if when is None else when, localtime=True)
    lines = [
        f"Received: from {helo} ({_tcp_info(session)})",
        f"\tby {_clean(hostname)} (txsmtpsrv) with {session.transmission_type} id {_clean(session.id)}",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{_clean(recipients[0].address)}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def return_path_header(session: Session) -> bytes:
    """
    The C{Return-Path:} header a final delivery adds (RFC 5321 4.4): the
    reverse-path, C{<>} for bounces.
    """
    sender = session.envelope.mail_from
    address = _clean(sender.address) if sender is not None and sender.address else ""
    return f"Return-Path: <{address}>\r\n".encode("utf-8", "replace")


def _trace_headers(session: Session, hostname: str, when: float) -> bytes:
    return return_path_header(session) + received_header(session, hostname, when=when)


def _sender(session: Session) -> str:
    mail_from = session.envelope.mail_from
    return mail_from.address if mail_from is not None else ""


# ---------------------------------------------------------------------------
# Streaming transformations


class _ToLF:
    """
    Turn CRLF line endings into LF as chunks stream through, holding back at
    most one CR that may pair with the next chunk's LF.
    """

    __slots__ = ("_cr",)

    def __init__(self) -> None:
        self._cr = False

    def feed(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        return data.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        cr, self._cr = self._cr, False
        return b"\r" if cr else b""


_GT_RUN = re.compile(rb">*")
_FROM = b"From "


class _MboxrdQuoter:
    """
    mboxrd quoting, streaming: a line that matches C{^>*From } gets one more
    C{>}. Only the undecided start of the current line is kept between chunks
    (a count of C{>} and how much of C{From } matched), so memory stays
    constant however long the lines are.
    """

    __slots__ = ("_deciding", "_gts", "_matched")

    def __init__(self) -> None:
        self._deciding = True  # at a line start and not yet sure whether to quote
        self._gts = 0
        self._matched = 0

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if self._deciding:
                if self._matched == 0:
                    end = _GT_RUN.match(data, i).end()  # type: ignore[union-attr]
                    self._gts += end - i
                    i = end
                while i < n and self._matched < len(_FROM) and data[i] == _FROM[self._matched]:
                    self._matched += 1
                    i += 1
                if self._matched == len(_FROM):
                    out.append(b">" * (self._gts + 1) + _FROM)
                elif i < n:
                    out.append(b">" * self._gts + _FROM[: self._matched])
                else:
                    break  # the chunk ended while still undecided
                self._deciding = False
                self._gts = self._matched = 0
            else:
                newline = data.find(b"\n", i)
                if newline < 0:
                    out.append(data[i:])
                    i = n
                else:
                    out.append(data[i : newline + 1])
                    i = newline + 1
                    self._deciding = True
        return b"".join(out)

    def flush(self) -> bytes:
        pending = b">" * self._gts + _FROM[: self._matched]
        self._gts = self._matched = 0
        return pending


class _Writer:
    """
    Write chunks to a binary file through optional transformations, counting
    bytes and remembering the last one written.
    """

    def __init__(self, file: IO[bytes], transforms: Sequence[Any] = ()) -> None:
        self.file = file
        self.size = 0
        self.last = b""
        self._transforms = list(transforms)

    def _emit(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self.size += len(data)
            self.last = data[-1:]

    def write(self, chunk: bytes) -> None:
        for transform in self._transforms:
            chunk = transform.feed(chunk)
        self._emit(chunk)

    def finish(self) -> None:
        """Push out what the transformations held back (in order)."""
        for index, transform in enumerate(self._transforms):
            tail = transform.flush()
            for later in self._transforms[index + 1 :]:
                tail = later.feed(tail)
            self._emit(tail)


def _make_directory(path: str) -> None:
    """
    Create C{path} (and missing parents), fsyncing each parent whose entries
    changed, so a directory made for the first message survives a crash too.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _make_directory(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    _fsync_directory(parent)


def _fsync_directory(path: str) -> None:
    """Make a rename or new entry in C{path} durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Optional[str]) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        Logger().failure("could not remove partial message {path}", path=path)


def _close_quietly(file: Optional[IO[bytes]]) -> None:
    if file is None:
        return
    try:
        file.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Maildir

_counter = itertools.count(1)


def _maildir_hostname(hostname: str) -> str:
    """The host part of a Maildir file name, with C{/} and C{:} escaped (maildir(5))."""
    return hostname.replace("/", r"\057").replace(":", r"\072")


def _count(n: int, noun: str) -> str:
    """C{1 recipient}, C{2 recipients}: log lines in plain English."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class MaildirDelivery:
    """
    Store each message as one file in a Maildir (see maildir(5)).

    The body streams into C{tmp/} behind a C{Return-Path} and a C{Received}
    header; once the message is complete the file is flushed and
    C{fsync}ed, renamed into C{new/} and the directory C{fsync}ed, and only
    then does the hook answer, so the client's C{250} means "on disk".
    File names follow the maildir(5) convention
    C{<seconds>.M<microseconds>P<pid>Q<counter>.<hostname>}, unique per
    process, host and delivery.

    What a crash can do: nothing accepted is lost, since the C{250} follows
    the rename and its C{fsync}. But a message can be in C{new/} while its
    client never saw the C{250} -- the process killed (or the connection cut)
    after the rename and before the reply reached the client. The client then
    retries and the message is stored twice. RFC 5321 6.1 accepts that
    window: a duplicate is better than a loss, and SMTP cannot close it.
    A crash mid-delivery leaves a partial file in C{tmp/} (never in C{new/}):
    files in C{tmp/} older than C{tmp_max_age} (36 hours, the maildir(5)
    convention) are removed when cleaning starts and then every
    C{tmp_clean_interval} seconds, each pass logged. Call L{start_cleaning}
    at start-up (C{twistd smtpsrv} does; it is not started behind your back,
    so tests and short-lived uses leave no timer on the reactor) and
    L{stop_cleaning} at shutdown.

    @param path: the Maildir; it and its C{cur}, C{new}, C{tmp} are created
        (mode 0700) if missing.
    @param hostname: this server's name, for the C{Received} header and file
        names; defaults to C{socket.gethostname()}.
    @param linesep: line ending of stored messages; the default C{b"\\n"}
        is what Unix mail readers expect, C{b"\\r\\n"} keeps the body
        byte-for-byte as received.
    @param clock: where the time for headers and file names comes from
        (tests pass a C{Clock}); defaults to the system clock. Also the clock
        the C{tmp/} cleaning runs on (default: the reactor).
    @param tmp_max_age: age in seconds past which a C{tmp/} file is removed.
    @param tmp_clean_interval: seconds between C{tmp/} cleanings; 0 turns
        cleaning off.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        hostname: Optional[str] = None,
        *,
        linesep: bytes = b"\n",
        clock: Optional[IReactorTime] = None,
        tmp_max_age: float = TMP_MAX_AGE,
        tmp_clean_interval: float = TMP_CLEAN_INTERVAL,
    ) -> None:
        if linesep not in (b"\n", b"\r\n"):
            raise ValueError("linesep must be b'\\n' or b'\\r\\n'")
        self.path = os.path.abspath(os.path.expanduser(path))
        self.hostname = hostname or socket.gethostname()
        self.linesep = linesep
        self._clock = clock
        self.tmp_max_age = tmp_max_age
        self.tmp_clean_interval = tmp_clean_interval
        self._cleaner: Optional[TmpCleaner] = None

    def start_cleaning(self, clock: Optional[IReactorTime] = None) -> None:
        """Remove stale C{tmp/} files now, then every C{tmp_clean_interval} seconds."""
        if self.tmp_clean_interval <= 0 or (self._cleaner is not None and self._cleaner.running):
            return
        self._cleaner = TmpCleaner(os.path.join(self.path, "tmp"), clock or self._clock or default_clock(),
                                   self.tmp_max_age, self.tmp_clean_interval)
        self._cleaner.start()

    def stop_cleaning(self) -> None:
        """Stop the periodic C{tmp/} cleaning (a later L{start_cleaning} restarts it)."""
        if self._cleaner is not None:
            self._cleaner.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    def _ensure_directories(self) -> None:
        for sub in ("", "tmp", "new", "cur"):
            _make_directory(os.path.join(self.path, sub))

    def _create_tmp(self, now: float) -> tuple[str, IO[bytes]]:
        """Create a new file in C{tmp/} that no other delivery can be using."""
        seconds, micro = divmod(int(now * 1_000_000), 1_000_000)
        host = _maildir_hostname(self.hostname)
        for _attempt in range(10):
            name = f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}.{host}"
            path = os.path.join(self.path, "tmp", name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            except FileExistsError:
                continue
            return name, os.fdopen(fd, "wb")
        raise FileExistsError(errno.EEXIST, "no unique Maildir file name found", self.path)

    def on_data(self, session: Session, stream: Any) -> "Deferred[None]":
        """Store the message; the Deferred fires once it is durably in C{new/}."""
        return Deferred.fromCoroutine(self._deliver(session, stream))

    async def _deliver(self, session: Session, stream: Any) -> None:
        now = _now(self._clock)
        tmp_path: Optional[str] = None
        file: Optional[IO[bytes]] = None
        try:
            self._ensure_directories()
            name, file = self._create_tmp(now)
            tmp_path = os.path.join(self.path, "tmp", name)
            writer = _Writer(file, [_ToLF()] if self.linesep == b"\n" else [])
            writer.write(_trace_headers(session, self.hostname, now))
            await stream.collect(writer.write)
            writer.finish()
            file.flush()
            os.fsync(file.fileno())
            file.close()
            new_path = os.path.join(self.path, "new", name)
            os.rename(tmp_path, new_path)
            tmp_path = new_path  # from here on, a failure must remove this one
            _fsync_directory(os.path.join(self.path, "new"))
            tmp_path = None
        except OSError:
            self.log.failure(
                "Maildir delivery to {path} failed (session {session_id})",
                path=self.path,
                session_id=session.id,
            )
            raise _local_error() from None
        finally:
            # Runs on success too, where it is a no-op; on any failure -- disk,
            # client gone (stream failed), cancellation -- nothing stays behind.
            if tmp_path is not None:
                _close_quietly(file)
                _unlink_quietly(tmp_path)
        self.log.info(
            "Stored message {file} in {path} (session {session_id}, from <{sender}>, "
            "{recipients}, {size} bytes)",
            file=name,
            path=self.path,
            session_id=session.id,
            sender=_sender(session),
            recipient_count=len(session.envelope.rcpt_to),
            recipients=_count(len(session.envelope.rcpt_to), "recipient"),
            size=writer.size,
        )


# ---------------------------------------------------------------------------
# mbox

#: One in-process lock per mbox file: fcntl locks are per process, so they do
#: not order two deliveries of the same process.
_mbox_locks: dict[str, DeferredLock] = {}


class MboxDelivery:
    """
    Append each message to an mbox file, mboxrd style.

    A message is C{From <sender> <asctime>}, the trace headers, the body with
    LF line endings and every line matching C{^>*From } given one more C{>},
    then an empty line. The body first streams into an anonymous spool file
    next to the mbox (so the mailbox is not locked while a slow client
    talks); then, under an in-process lock and an exclusive C{fcntl} lock
    (the one Postfix, Dovecot and mutt use on Linux), it is appended and
    C{fsync}ed. If the append fails the file is truncated back to its old
    size. A lock held by another program is retried for C{lock_timeout}
    seconds before answering C{451}.

    @param path: the mbox file; created (mode 0600) if missing.
    @param hostname: for the C{Received} header; defaults to
        C{socket.gethostname()}.
    @param clock: for header times and lock retries; defaults to the reactor.
    """

    log = Logger()
    lock_poll_interval = 0.05

    def __init__(
        self,
        path: str,
        hostname: Optional[str] = None,
        *,
        lock_timeout: float = 30.0,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.hostname = hostname or socket.gethostname()
        self.lock_timeout = lock_timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    def _reactor(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    def on_data(self, session: Session, stream: Any) -> "Deferred[None]":
        """Append the message; the Deferred fires once it is durably in the mbox."""
        return Deferred.fromCoroutine(self._deliver(session, stream))

    def _from_line(self, session: Session, now: float) -> bytes:
        sender = _sender(session) or "MAILER-DAEMON"
        sender = re.sub(r"\s", "_", sender)
        return f"From {sender} {time.asctime(time.gmtime(now))}\n".encode("utf-8", "replace")

    async def _deliver(self, session: Session, stream: Any) -> None:
        now = _now(self._clock)
        spool: Optional[IO[bytes]] = None
        try:
            try:
                directory = os.path.dirname(self.path)
                _make_directory(directory)
                spool = tempfile.TemporaryFile(dir=directory, prefix=".txsmtpsrv-spool-")
                writer = _Writer(spool, [_ToLF(), _MboxrdQuoter()])
                writer.write(_trace_headers(session, self.hostname, now))
                await stream.collect(writer.write)
                writer.finish()
                if writer.last != b"\n":
                    writer.write(b"\n")
                spool.flush()
                await self._append(spool, self._from_line(session, now))
            except OSError:
                self.log.failure(
                    "mbox delivery to {path} failed (session {session_id})",
                    path=self.path,
                    session_id=session.id,
                )
                raise _local_error() from None
        finally:
            _close_quietly(spool)
        self.log.info(
            "Stored message in {path} (session {session_id}, from <{sender}>, "
            "{recipients}, {size} bytes)",
            path=self.path,
            session_id=session.id,
            sender=_sender(session),
            recipient_count=len(session.envelope.rcpt_to),
            recipients=_count(len(session.envelope.rcpt_to), "recipient"),
            size=writer.size,
        )

    async def _append(self, spool: IO[bytes], from_line: bytes) -> None:
        key = os.path.realpath(self.path)
        lock = _mbox_locks.setdefault(key, DeferredLock())
        await lock.acquire()
        try:
            created = not os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                await self._lock_file(fd)
                try:
                    self._append_locked(fd, spool, from_line)
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            if created:  # the new file's directory entry must be on disk too
                _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                _mbox_locks.pop(key, None)

    async def _lock_file(self, fd: int) -> None:
        """Take the fcntl lock without blocking the reactor: poll until C{lock_timeout}."""
        clock = self._reactor()
        deadline = clock.seconds() + self.lock_timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if clock.seconds() >= deadline:
                    raise OSError(errno.ETIMEDOUT, f"mbox {self.path} stayed locked") from e
            await deferLater(clock, self.lock_poll_interval, lambda: None)

    def _append_locked(self, fd: int, spool: IO[bytes], from_line: bytes) -> None:
        """Append under the lock; on failure cut the file back to its old end."""
        start = os.fstat(fd).st_size
        try:
            if start > 0:
                # mbox needs an empty line before each "From "; repair a file
                # that another program left without one.
                tail = os.pread(fd, 2, max(0, start - 2))
                if not tail.endswith(b"\n"):
                    _write_all(fd, b"\n\n")
                elif start >= 2 and tail != b"\n\n":
                    _write_all(fd, b"\n")
            _write_all(fd, from_line)
            spool.seek(0)
            while True:
                chunk = spool.read(65536)
                if not chunk:
                    break
                _write_all(fd, chunk)
            _write_all(fd, b"\n")
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                self.log.failure("could not truncate {path} after a failed append", path=self.path)
            raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------------------
# Printing, for examples and debugging


class PrintDelivery:
    """
    Write each message to a file object (standard output by default), framed
    like Python's old C{smtpd.DebuggingServer}. This is a delivery target,
    not logging: it is meant for examples and for watching what a client
    sends. The message is read whole into memory first (so concurrent
    messages don't interleave); use it only where messages are small.

    @param stream: a text or binary file object; defaults to C{sys.stdout}
        at the time of each message.
    """

    def __init__(self, stream: Optional[IO[Any]] = None) -> None:
        self.stream = stream

    def on_data(self, session: Session, stream: Any) -> "Deferred[None]":
        """Read the body, then print envelope and message in one go."""
        done: Deferred[None] = stream.content().addCallback(self._print, session)
        return done

    def _print(self, body: bytes, session: Session) -> None:
        envelope = session.envelope
        sender = envelope.mail_from.address if envelope.mail_from is not None else ""
        lines = [
            "---------- MESSAGE FOLLOWS ----------",
            f"X-Session-Id: {session.id}",
            f"X-Peer: {session.remote_address}",
            f"X-MailFrom: <{sender}>",
            "X-RcptTo: " + ", ".join(f"<{r.address}>" for r in envelope.rcpt_to),
        ]
        text = body.decode("utf-8", "replace").replace("\r\n", "\n")
        if text and not text.endswith("\n"):
            text += "\n"
        out = "\n".join(lines) + "\n" + text + "------------ END MESSAGE ------------\n"
        target = self.stream if self.stream is not None else sys.stdout
        if isinstance(target, (io.RawIOBase, io.BufferedIOBase)):
            target.write(out.encode("utf-8"))
        else:
            target.write(out)
        target.flush()

