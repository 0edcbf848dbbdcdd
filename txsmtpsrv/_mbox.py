# -*- test-case-name: tests.test_delivery_mbox,tests.test_delivery_async -*-
"""
L{MboxDelivery}: append each message to an mbox file, mboxrd style, with
appends to one file serialised and made durable in batches.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtpsrv._diskio import BlockingIO, ChunkFile, ToLF, Writer, fsync_directory, make_directory, make_io, write_all
from txsmtpsrv._logging import SessionLogger
from txsmtpsrv._maildir import count, local_error, now
from txsmtpsrv._maildir_tmp import default_clock
from txsmtpsrv._session import Session
from txsmtpsrv._trace import sender_of, trace_headers

__all__ = ["MboxDelivery", "MboxrdQuoter"]

_GT_RUN = re.compile(rb">*")
_FROM = b"From "


class MboxrdQuoter:
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
        out: List[bytes] = []
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


# ---------------------------------------------------------------------------
# Batched appends

_BUSY = "busy"  # another program holds the fcntl lock


@dataclass
class _Item:
    spool: IO[bytes]
    from_line: bytes
    deadline: float
    done: "Deferred[None]"


def _append_batch(path: str, items: List[Tuple[IO[bytes], bytes]]) -> Optional[str]:
    """
    (Blocking.) Append every message under an exclusive C{fcntl} lock (the one
    Postfix, Dovecot and mutt use on Linux) with one C{fsync}; on failure cut
    the file back to its old end. Returns L{_BUSY} if the lock is taken.
    """
    created = not os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return _BUSY
        try:
            _append_locked(fd, items)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        if created:  # the new file's directory entry must be on disk too
            fsync_directory(os.path.dirname(os.path.abspath(path)))
    return None


def _append_locked(fd: int, items: List[Tuple[IO[bytes], bytes]]) -> None:
    start = os.fstat(fd).st_size
    try:
        if start > 0:
            # mbox needs an empty line before each "From "; repair a file
            # that another program left without one.
            tail = os.pread(fd, 2, max(0, start - 2))
            if not tail.endswith(b"\n"):
                write_all(fd, b"\n\n")
            elif start >= 2 and tail != b"\n\n":
                write_all(fd, b"\n")
        for spool, from_line in items:
            write_all(fd, from_line)
            spool.seek(0)
            while True:
                chunk = spool.read(65536)
                if not chunk:
                    break
                write_all(fd, chunk)
            write_all(fd, b"\n")
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError:
            Logger().failure("could not truncate mbox after a failed append")
        raise


class _Appender:
    """
    The appends to one mbox file in this process, one batch at a time: every
    message that finished spooling while the previous batch ran goes into
    the next, under one lock and one C{fsync}. (fcntl locks are per process,
    so they cannot order this process's own appends; this does.)
    """

    def __init__(self, key: str, io: BlockingIO, clock: IReactorTime, poll: float) -> None:
        self.key = key
        self._io = io
        self._clock = clock
        self._poll = poll
        self._queue: List[_Item] = []
        self._running = False
        self.batches = 0

    def append(self, spool: IO[bytes], from_line: bytes, timeout: float) -> "Deferred[None]":
        done: Deferred[None] = Deferred()
        self._queue.append(_Item(spool, from_line, self._clock.seconds() + timeout, done))
        self._start()
        return done

    def _start(self) -> None:
        if self._running:
            return
        for item in [i for i in self._queue if i.done.called]:  # cancelled while queued
            self._queue.remove(item)
            item.spool.close()
        if not self._queue:
            _appenders.pop(self.key, None)
            return
        batch, self._queue = self._queue, []
        self._running = True
        self.batches += 1
        self._io.run(_append_batch, self.key, [(i.spool, i.from_line) for i in batch]).addBoth(self._finished, batch)

    def _finished(self, result: Any, batch: List[_Item]) -> None:
        if result == _BUSY:
            now_ = self._clock.seconds()
            waiting = []
            for item in batch:
                if now_ >= item.deadline:
                    self._answer(item, Failure(OSError(errno.ETIMEDOUT, f"mbox {self.key} stayed locked")))
                else:
                    waiting.append(item)
            self._queue[:0] = waiting
            if self._queue:
                self._clock.callLater(self._poll, self._retry)
                return
            batch = []
        self._running = False
        for item in batch:
            self._answer(item, result)
        self._start()

    def _retry(self) -> None:
        self._running = False
        self._start()

    @staticmethod
    def _answer(item: _Item, result: Any) -> None:
        item.spool.close()
        if item.done.called:
            return
        if isinstance(result, Failure):
            item.done.errback(result)
        else:
            item.done.callback(None)


#: The appender of each mbox file (by real path) that has work queued.
_appenders: Dict[str, _Appender] = {}


class MboxDelivery:
    """
    Append each message to an mbox file, mboxrd style.

    A message is C{From <sender> <asctime>}, the trace headers, the body with
    LF line endings and every line matching C{^>*From } given one more C{>},
    then an empty line. The body first streams into an anonymous spool file
    next to the mbox (so the mailbox is not locked while a slow client
    talks); then, under an exclusive C{fcntl} lock (the one Postfix, Dovecot
    and mutt use on Linux), it is appended and C{fsync}ed. Appends to one
    file are serialised in this process and batched: the messages that
    finished while one append ran are appended together with one C{fsync},
    and all get their C{250} then. If an append fails the file is truncated
    back to its old size and the batch answers C{451}. A lock held by
    another program is retried for C{lock_timeout} seconds before answering
    C{451}. The file work runs in C{threads} threads (0: in the reactor).

    @param path: the mbox file; created (mode 0600) if missing.
    @param hostname: for the C{Received} header; defaults to
        C{socket.gethostname()}.
    @param clock: for header times and lock retries; defaults to the reactor.
    """

    log = SessionLogger()  # a line with a session_id names the session in its system
    lock_poll_interval = 0.05

    def __init__(
        self,
        path: str,
        hostname: Optional[str] = None,
        *,
        lock_timeout: float = 30.0,
        clock: Optional[IReactorTime] = None,
        threads: Optional[int] = None,
    ) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.hostname = hostname or socket.gethostname()
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._io = make_io(threads)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    def _reactor(self) -> IReactorTime:
        return self._clock if self._clock is not None else default_clock()

    def on_data(self, session: Session, stream: Any) -> "Deferred[None]":
        """Append the message; the Deferred fires once it is durably in the mbox."""
        return Deferred.fromCoroutine(self._deliver(session, stream))

    def _from_line(self, session: Session, when: float) -> bytes:
        sender = sender_of(session) or "MAILER-DAEMON"
        sender = re.sub(r"\s", "_", sender)
        return f"From {sender} {time.asctime(time.gmtime(when))}\n".encode("utf-8", "replace")

    def _open_spool(self) -> Tuple[Optional[str], IO[bytes]]:
        directory = os.path.dirname(self.path)
        make_directory(directory)
        return None, tempfile.TemporaryFile(dir=directory, prefix=".txsmtpsrv-spool-")

    async def _deliver(self, session: Session, stream: Any) -> None:
        when = now(self._clock)
        spool = ChunkFile(self._io)
        handed_over = False
        try:
            await spool.open(self._open_spool)
            writer = Writer(spool, [ToLF(), MboxrdQuoter()])
            writer.write(trace_headers(session, self.hostname, when))
            await stream.collect(spool.collector(writer))
            writer.finish()
            if writer.last != b"\n":
                writer.write(b"\n")
            await spool.finish(lambda rest: self._write_rest(spool, rest))
            file, spool.file = spool.file, None
            assert file is not None
            handed_over = True  # the appender closes it
            await self._appender().append(file, self._from_line(session, when), self.lock_timeout)
        except OSError:
            self.log.failure(
                "mbox delivery to {path} failed (session {session_id})",
                path=self.path,
                session_id=session.id,
            )
            raise local_error() from None
        finally:
            if not handed_over:
                spool.discard()
        self.log.info(
            "Stored message in {path} (session {session_id}, from <{sender}>, "
            "{recipients}, {size} bytes)",
            path=self.path,
            session_id=session.id,
            sender=sender_of(session),
            recipient_count=len(session.envelope.rcpt_to),
            recipients=count(len(session.envelope.rcpt_to), "recipient"),
            size=writer.size,
        )

    @staticmethod
    def _write_rest(spool: ChunkFile, rest: bytes) -> None:
        """(Blocking.) The last of the body into the spool, flushed for the append to read."""
        file = spool.file
        assert file is not None
        if rest:
            file.write(rest)
        file.flush()

    def _appender(self) -> _Appender:
        key = os.path.realpath(self.path)
        appender = _appenders.get(key)
        if appender is None:
            appender = _appenders[key] = _Appender(key, self._io, self._reactor(), self.lock_poll_interval)
        return appender
