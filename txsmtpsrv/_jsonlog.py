# -*- test-case-name: tests.test_jsonlog,tests.test_signals -*-
"""
C{--log-json FILE}: every log event as one JSON line, in a file that log
rotation can move away. Only the C{twistd} process writes it: workers send
their events to it (L{txsmtpsrv._workers}), so rotating is the parent's job.

L{JSONLog.reopen} (on C{SIGUSR1} and C{SIGHUP}, see L{txsmtpsrv._tap})
closes the file and opens its path again, as C{logrotate} expects after it
renamed the file: from then on events go to the new file at the path.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Dict, List, Optional, cast

from twisted.logger import ILogObserver, Logger, globalLogPublisher, jsonFileLogObserver
from twisted.logger._flatten import flattenEvent

from ._logging import apply_format_specs

__all__ = ["JSONLog"]

log = Logger()


def _flattened(event: Dict[str, Any]) -> Dict[str, Any]:
    """
    A copy of C{event} flattened for the JSON writer, the format specs applied.

    Twisted's writer flattens the event it is given, so the observers after
    it (twistd's text log) formatted from each field's C{str()}:
    C{duration=0.0012459754943847656s} for C{{duration:.3f}}. On a copy the
    event stays as logged; with the specs the JSON line reads back
    (C{formatEvent}) as the text line does.
    """
    copy = dict(event)
    if isinstance(copy.get("log_flattened"), dict):  # a relayed worker event's: shared, not ours to change
        copy["log_flattened"] = dict(copy["log_flattened"])
    flattenEvent(copy)
    apply_format_specs(copy)
    return copy


class JSONLog:
    """
    C{--log-json}: attached at once so the start-up lines are in it too.
    twistd replays the events logged before it began logging to every
    observer, so those are skipped the second time.

    @ivar path: the absolute path reopened, or C{"-"} (standard output, never reopened).
    """

    def __init__(self, path: str) -> None:
        self.path = path if path == "-" else os.path.abspath(path)  # the same file after a chdir
        self._observer = cast(ILogObserver, self)
        # Events may come from any thread; a reopen must not interleave with a write.
        self._lock = threading.Lock()
        # Kept apart from sys.stdout, which twistd replaces once logging begins.
        self._stdout = path == "-"
        self._file: Any = sys.stdout if self._stdout else self._open()
        self._write = jsonFileLogObserver(self._file, recordSeparator="")
        self._closed = False
        self._early: Optional[List[Dict[str, Any]]] = []  # events seen before the service started
        globalLogPublisher.addObserver(self._observer)

    def _open(self) -> Any:
        return open(self.path, "a", encoding="utf-8")

    def __call__(self, event: Dict[str, Any]) -> None:
        with self._lock:
            if self._early is not None:
                if any(seen is event for seen in self._early):
                    return  # the replay of an event we have written
                self._early.append(event)
            self._write(_flattened(event))

    def started(self) -> None:
        """Logging has begun (and replayed its buffer): no more duplicates to expect."""
        self._early = None

    def reopen(self) -> None:
        """
        Close the file and open its path again (in the reactor thread). The
        new file is opened first: if that fails (directory gone, permissions)
        one error line says so and events keep going to the old file. Every
        event is flushed as it is written, so none is lost or written twice.
        """
        if self._stdout or self._closed:  # close() runs in the reactor thread too
            return
        try:
            new = self._open()
        except OSError as e:
            log.error("cannot reopen the JSON log {path}, still writing to the old file: {error}",
                      path=self.path, error=str(e))
            return
        with self._lock:
            old, self._file = self._file, new
            self._write = jsonFileLogObserver(new, recordSeparator="")
        old.close()
        log.info("JSON log reopened: {path}", path=self.path)

    def close(self) -> None:
        """Stop writing: detach from the log and close the file (not standard output)."""
        globalLogPublisher.removeObserver(self._observer)
        with self._lock:
            self._closed = True
            if not self._stdout:
                self._file.close()
