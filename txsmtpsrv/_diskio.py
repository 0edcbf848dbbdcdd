# -*- test-case-name: tests.test_delivery_maildir,tests.test_delivery_mbox,tests.test_delivery_async -*-
"""
The shared writer of the file deliveries: blocking file work kept off the
reactor thread, and group commit.

Storing a message costs a file create, writes, and two C{fsync}s (the file,
then the directory holding its new name). Each C{fsync} waits for the disk
(milliseconds); done in the reactor thread, every other client waits too. So
the deliveries hand that work to a L{ThreadIO} (a small thread pool) and the
reactor keeps serving; L{InlineIO} keeps the old synchronous behaviour, which
is deterministic for in-memory tests and cheapest on a tmpfs.

Two orderings matter and are kept here:
  - one message's calls run one at a time and in order (L{Serial}), and
    clean-up of a failed or cancelled message waits for the call still
    running, so a late write can never land in a closed or reused file
    descriptor;
  - a directory C{fsync} covers every rename made in that directory before
    it started, so L{GroupCommit} runs one at a time and answers every
    message that was waiting when it began: many messages, one C{fsync},
    each C{250} still only after its file and its directory entry are on
    disk (how databases commit).
"""

from __future__ import annotations

import collections
import errno
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Callable, Deque, List, Optional, Protocol, Sequence, Tuple, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

__all__ = [
    "BlockingIO", "ChunkFile", "GroupCommit", "InlineIO", "Serial", "ThreadIO", "ToLF", "Writer",
    "fsync_directory", "lower_thread_priority", "make_directory", "make_io", "write_all",
]

T = TypeVar("T")

#: Bytes gathered from the stream before one write is handed to a thread.
FLUSH_AT = 64 * 1024

#: Delivery threads when a delivery is not told (see L{ThreadIO}).
DEFAULT_THREADS = 4

#: How far the delivery threads' priority is lowered below the reactor's (see L{ThreadIO}).
THREAD_NICENESS = 10


class BlockingIO(Protocol):
    """Where blocking file calls run; C{flush_at} is the write batch size it wants."""

    flush_at: int

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Call C{f(*args)} somewhere; the Deferred has its result or failure."""


class InlineIO:
    """Run each call at once in the calling thread (no thread hop, no batching)."""

    flush_at = 0

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        try:
            return succeed(f(*args))
        except BaseException:
            return fail()


class ThreadIO:
    """
    Run calls in a private pool of threads (C{concurrent.futures}, lighter
    per call than Twisted's ThreadPool), started on first use and shut down
    when the reactor stops (jobs already queued finish first); results come
    back to the reactor thread with C{callFromThread}.

    On Linux the threads run at a lower scheduling priority (a higher nice
    value, per thread) than the reactor thread: when both want the same CPU
    -- the kernel side of an C{fsync} is CPU work charged to its thread --
    the reactor, which every client waits for, goes first. The work itself
    and its ordering are unchanged, only who waits for the CPU.

    @param threads: pool size. Several threads matter: the file system batches
        C{fsync}s that overlap (ext4's journal commits them together), so
        parallel deliveries cost little more disk time than one.
    @param niceness: how much to lower the threads' priority (0: not at all).
    """

    flush_at = FLUSH_AT

    def __init__(self, threads: int, reactor: Any = None, niceness: int = THREAD_NICENESS) -> None:
        self.threads = threads
        self.niceness = niceness
        self._reactor = reactor
        self._pool: Optional[ThreadPoolExecutor] = None

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        if self._pool is None:
            self._start()
        assert self._pool is not None
        d: Deferred[T] = Deferred()
        self._pool.submit(self._call, d, f, args)
        return d

    def _call(self, d: "Deferred[Any]", f: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        try:
            result = f(*args)
        except BaseException:
            self._reactor.callFromThread(d.errback, Failure())
        else:
            self._reactor.callFromThread(d.callback, result)

    def _start(self) -> None:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="txsmtpsrv-delivery",
                                        initializer=lower_thread_priority, initargs=(self.niceness,))
        self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        """Stop the threads after the jobs queued so far (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def lower_thread_priority(niceness: int) -> None:
    """
    Raise the calling thread's nice value by C{niceness} (Linux only, where
    the nice value is per thread; elsewhere it is per process, so nothing is
    done). Lowering one's own priority needs no privilege; failures are
    ignored, the thread then simply runs at the process's priority.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except (AttributeError, OSError):
        pass


def make_io(threads: Optional[int], reactor: Any = None) -> BlockingIO:
    """C{threads} 0: inline; None: L{DEFAULT_THREADS}; otherwise a pool of that many threads."""
    if threads is None:
        threads = DEFAULT_THREADS
    if threads < 0:
        raise ValueError("threads must be 0 or more")
    return InlineIO() if threads == 0 else ThreadIO(threads, reactor)


def _settle(d: "Deferred[Any]", result: Any) -> None:
    """Fire C{d} with C{result} unless its caller gave up on it (cancelled)."""
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


class Serial:
    """
    One message's blocking calls, one at a time and in order. A caller that
    cancels its Deferred stops waiting, but the call itself runs to its end
    before the next one (the clean-up) starts.
    """

    def __init__(self, io: BlockingIO) -> None:
        self._io = io
        self._queue: Deque[Tuple[Callable[..., Any], Tuple[Any, ...], "Deferred[Any]"]] = collections.deque()
        self._busy = False

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        d: Deferred[T] = Deferred()
        self._queue.append((f, args, d))
        self._next()
        return d

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        f, args, d = self._queue.popleft()
        self._busy = True
        self._io.run(f, *args).addBoth(self._done, d)

    def _done(self, result: Any, d: "Deferred[Any]") -> None:
        self._busy = False
        _settle(d, result)
        self._next()


def fsync_directory(path: str) -> None:
    """Make a rename or new entry in C{path} durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(path: str) -> None:
    """
    Create C{path} (and missing parents), fsyncing each parent whose entries
    changed, so a directory made for the first message survives a crash too.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        make_directory(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fsync_directory(parent)


class GroupCommit:
    """
    Directory C{fsync}s for renames into C{directory}, shared: at most one runs
    at a time, and it answers every L{commit} asked before it started. A
    caller asks only after its rename returned, so that C{fsync} covers it.

    @ivar fsyncs: directory C{fsync}s run so far; C{commits}: answers given.
    """

    def __init__(self, io: BlockingIO, directory: str) -> None:
        self._io = io
        self.directory = directory
        self._waiting: List["Deferred[None]"] = []
        self._running = False
        self.fsyncs = 0
        self.commits = 0

    def commit(self) -> "Deferred[None]":
        """Fires once a directory C{fsync} begun after this call has succeeded."""
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        self._start()
        return d

    def _start(self) -> None:
        if self._running or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        self._running = True
        self.fsyncs += 1
        self._io.run(fsync_directory, self.directory).addBoth(self._finished, batch)

    def _finished(self, result: Any, batch: List["Deferred[None]"]) -> None:
        self._running = False
        self.commits += len(batch)
        for d in batch:
            _settle(d, result)
        self._start()


class ChunkFile:
    """
    A file written off the reactor thread while a message streams in.

    Transformed chunks are gathered (L{write}); once C{io.flush_at} bytes are
    waiting they go to the file in one call on the message's L{Serial} while
    reading continues. If more pile up while that write runs, L{pushed}
    returns a Deferred, which makes the stream pause the client: memory stays
    bounded (about two batches) however large the message.

    @ivar file: the open file, set by L{open}; only touched in serial calls.
    @ivar path: where the file is now (C{None} before it exists or once removed).
    """

    def __init__(self, io: BlockingIO) -> None:
        self.serial = Serial(io)
        self._flush_at = io.flush_at
        self._pending: List[bytes] = []
        self._size = 0
        self._writing = False
        self._waiters: List["Deferred[None]"] = []
        self._error: Optional[Failure] = None
        self._broken = False  # set in the serial call whose write failed
        self.file: Optional[IO[bytes]] = None
        self.path: Optional[str] = None
        self._opener: Optional[Callable[[], Tuple[Optional[str], IO[bytes]]]] = None

    def open(self, opener: Callable[[], Tuple[Optional[str], IO[bytes]]]) -> "Deferred[None]":
        """
        Run C{opener} (blocking; returns path, file) on the serial. When
        writes are batched (threads), it runs together with the first write
        instead -- one thread hop less per small message; a failure then
        surfaces there, still before anything is acknowledged.
        """
        if self._flush_at:
            self._opener = opener
            return succeed(None)
        return self.serial.run(self._open, opener)

    def _open(self, opener: Callable[[], Tuple[Optional[str], IO[bytes]]]) -> None:
        self.path, self.file = opener()

    def _ensure_open(self) -> None:
        opener, self._opener = self._opener, None
        if opener is not None:
            self._open(opener)

    def write(self, data: bytes) -> None:
        """Gather transformed bytes (the target of a C{_Writer})."""
        if data:
            self._pending.append(data)
            self._size += len(data)

    def collector(self, writer: "Writer") -> Callable[[bytes], "Optional[Deferred[None]]"]:
        """The C{stream.collect} callback: each chunk through C{writer} (into this file), then L{pushed}."""

        def take(chunk: bytes) -> "Optional[Deferred[None]]":
            writer.write(chunk)
            return self.pushed()

        return take

    def pushed(self) -> "Optional[Deferred[None]]":
        """After gathering: start a write if enough waits; a Deferred means "pause"."""
        self._raise_if_failed()
        if not self._pending or self._size < self._flush_at:
            return None
        if self._writing:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            return waiter
        self._writing = True
        self.serial.run(self._write, self._take()).addBoth(self._wrote)
        self._raise_if_failed()  # inline I/O may have failed at once
        return None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._error.raiseException()

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        return data

    def _write(self, data: bytes) -> None:
        try:
            self._ensure_open()
            assert self.file is not None
            self.file.write(data)
        except BaseException:
            self._broken = True
            raise

    def _wrote(self, result: Any) -> None:
        self._writing = False
        if isinstance(result, Failure) and self._error is None:
            self._error = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _settle(waiter, self._error)

    def finish(self, last: Callable[[bytes], T]) -> "Deferred[T]":
        """Run C{last(rest)} (blocking) after every earlier write, with what is still gathered."""
        if self._error is not None:
            return fail(self._error)
        return self.serial.run(self._last, last, self._take())

    def _last(self, last: Callable[[bytes], T], data: bytes) -> T:
        if self._broken:  # a write failed after the reader last looked
            raise OSError(errno.EIO, "an earlier write of this message failed")
        self._ensure_open()
        return last(data)

    def discard(self) -> "Deferred[None]":
        """After everything queued: close the file and remove it (if it has a path)."""
        return self.serial.run(self._discard)

    def _discard(self) -> None:
        self._opener = None
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        path, self.path = self.path, None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class ToLF:
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


class Writer:
    """
    Pass chunks through optional transformations to C{target.write},
    counting bytes and remembering the last one written.
    """

    def __init__(self, target: Any, transforms: Sequence[Any] = ()) -> None:
        self.target = target
        self.size = 0
        self.last = b""
        self._transforms = list(transforms)

    def _emit(self, data: bytes) -> None:
        if data:
            self.target.write(data)
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


def write_all(fd: int, data: bytes) -> None:
    """C{os.write} until everything is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
