# -*- test-case-name: tests.test_delivery_maildir,tests.test_delivery_async -*-
"""
L{MaildirDelivery}: one file per message in a Maildir (maildir(5)).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from typing import IO, Any, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txsmtpsrv._diskio import ChunkFile, GroupCommit, ToLF, Writer, make_directory, make_io
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._logging import SessionLogger
from txsmtpsrv._maildir_tmp import TMP_CLEAN_INTERVAL, TMP_MAX_AGE, TmpCleaner, default_clock
from txsmtpsrv._session import Session
from txsmtpsrv._trace import sender_of, trace_headers

__all__ = ["MaildirDelivery", "count", "local_error", "now"]

#: Reply text for any local storage failure (RFC 5321 4.2.3, RFC 3463 4.3.0).
_LOCAL_ERROR = "Requested action aborted: local error in processing"


def local_error() -> SMTPError:
    """The C{451 4.3.0} every local storage failure answers."""
    return SMTPError(451, _LOCAL_ERROR, "4.3.0")


def now(clock: Optional[IReactorTime]) -> float:
    """The clock's time, or the system's."""
    return clock.seconds() if clock is not None else time.time()


_counter = itertools.count(1)

#: Flags of the new file in C{tmp/}: only ever a new name, not inherited by child processes.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def count(n: int, noun: str) -> str:
    """C{1 recipient}, C{2 recipients}: log lines in plain English."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _maildir_hostname(hostname: str) -> str:
    """The host part of a Maildir file name, with C{/} and C{:} escaped (maildir(5))."""
    return hostname.replace("/", r"\057").replace(":", r"\072")


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

    The file work runs in a small thread pool (C{threads}), so one message
    waiting for the disk does not hold up the other clients, and the
    directory C{fsync}s are shared: one covers every message renamed into
    C{new/} since the previous one, and those messages get their C{250}
    together (group commit). C{threads=0} does everything in the reactor
    thread instead (deterministic; sensible on a tmpfs).

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
    @param threads: size of the thread pool doing the file work (started on
        first use, stopped with the reactor, run below the reactor's
        priority); 0 for none; default 4 (L{txsmtpsrv._diskio.DEFAULT_THREADS}).
    """

    log = SessionLogger()  # a line with a session_id names the session in its system

    def __init__(
        self,
        path: str,
        hostname: Optional[str] = None,
        *,
        linesep: bytes = b"\n",
        clock: Optional[IReactorTime] = None,
        tmp_max_age: float = TMP_MAX_AGE,
        tmp_clean_interval: float = TMP_CLEAN_INTERVAL,
        threads: Optional[int] = None,
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
        self._io = make_io(threads)
        self._commit = GroupCommit(self._io, os.path.join(self.path, "new"))
        self._tmp = os.path.join(self.path, "tmp", "")
        self._host = _maildir_hostname(self.hostname)
        self._made = False  # the directories exist (checked on the first delivery, again if one vanishes)

    def _make_directories(self) -> None:
        """(Blocking.) Create the Maildir and its C{cur}, C{new}, C{tmp} where missing, durably."""
        for sub in ("", "tmp", "new", "cur"):
            make_directory(os.path.join(self.path, sub))
        self._made = True

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

    def _create_tmp(self, when: float, again: bool = True) -> Tuple[str, IO[bytes]]:
        """
        (Blocking.) Create a new file in C{tmp/} that no other delivery can be using.

        @param again: whether a missing C{tmp/} is made again and the file tried once more.
        """
        if not self._made:
            self._make_directories()
        seconds, micro = divmod(int(when * 1_000_000), 1_000_000)
        for _attempt in range(10):
            path = f"{self._tmp}{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}.{self._host}"
            try:
                fd = os.open(path, _CREATE, 0o600)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if not again:
                    raise
                self._made = False  # removed behind our back: make the directories again, once
                return self._create_tmp(when, False)
            return path, os.fdopen(fd, "wb")
        raise FileExistsError(errno.EEXIST, "no unique Maildir file name found", self.path)

    def on_data(self, session: Session, stream: Any) -> "Deferred[None]":
        """Store the message; the Deferred fires once it is durably in C{new/}."""
        return Deferred.fromCoroutine(self._deliver(session, stream))

    async def _deliver(self, session: Session, stream: Any) -> None:
        when = now(self._clock)
        out = ChunkFile(self._io)
        stored = False
        try:
            await out.open(lambda: self._create_tmp(when))
            writer = Writer(out, [ToLF()] if self.linesep == b"\n" else [])
            writer.write(trace_headers(session, self.hostname, when))
            await stream.collect(out.collector(writer))
            writer.finish()
            await out.finish(lambda rest: self._store(out, rest))
            await self._commit.commit()
            stored = True
        except OSError:
            self.log.failure(
                "Maildir delivery to {path} failed (session {session_id})",
                path=self.path,
                session_id=session.id,
            )
            raise local_error() from None
        finally:
            # On any failure -- disk, client gone (stream failed), cancellation
            # -- nothing stays behind, once whatever still runs has finished.
            if not stored:
                out.discard().addErrback(self._not_removed)
        name = os.path.basename(out.path or "")
        self.log.info(
            "Stored message {file} in {path} (session {session_id}, from <{sender}>, "
            "{recipients}, {size} bytes)",
            file=name,
            path=self.path,
            session_id=session.id,
            sender=sender_of(session),
            recipient_count=len(session.envelope.rcpt_to),
            recipients=count(len(session.envelope.rcpt_to), "recipient"),
            size=writer.size,
        )

    def _store(self, out: ChunkFile, rest: bytes) -> None:
        """(Blocking.) Write the rest, make the file durable, move it into C{new/}."""
        file = out.file
        assert file is not None and out.path is not None
        if rest:
            file.write(rest)
        file.flush()
        os.fsync(file.fileno())
        out.file = None
        file.close()
        new_path = os.path.join(self.path, "new", os.path.basename(out.path))
        try:
            os.rename(out.path, new_path)
        except FileNotFoundError:
            # new/ removed behind our back (the file in tmp/ is still ours): make it again, once.
            self._make_directories()
            os.rename(out.path, new_path)
        out.path = new_path  # from here on, a failure must remove this one

    def _not_removed(self, failure: Failure) -> None:
        self.log.failure("could not remove a partial message in {path}", failure, path=self.path)
