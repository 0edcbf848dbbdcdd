# -*- test-case-name: tests.test_maildir_tmp -*-
"""
Removing what crashed Maildir deliveries leave in C{tmp/}.

A delivery writes its file in C{tmp/} and renames it into C{new/}; a process
killed in between leaves the file behind, and nothing else ever removes it.
The Maildir convention (maildir(5), qmail, Dovecot) is to delete files in
C{tmp/} not accessed for 36 hours: no delivery takes that long, so such a
file belongs to nobody.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["TMP_MAX_AGE", "TMP_CLEAN_INTERVAL", "remove_stale", "TmpCleaner"]

#: Files in C{tmp/} older than this (seconds) are left-overs (maildir(5): 36 hours).
TMP_MAX_AGE = 36 * 3600.0
#: How often a running server looks again (seconds).
TMP_CLEAN_INTERVAL = 3600.0


def remove_stale(directory: str, now: float, max_age: float = TMP_MAX_AGE) -> Tuple[int, int]:
    """
    Delete the regular files in C{directory} whose last modification and
    last access are both more than C{max_age} seconds before C{now}.

    One C{scandir} pass (the directory entry carries the type, so only files
    cost a C{stat}); files another process removes meanwhile are skipped, and
    a missing directory is not an error.

    @return: C{(removed, failed)} counts.
    """
    removed = failed = 0
    limit = now - max_age
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    with entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if max(st.st_mtime, st.st_atime) >= limit:
                    continue
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError:
                failed += 1
    return removed, failed


class TmpCleaner:
    """
    Run L{remove_stale} on a Maildir's C{tmp/} now and then every C{interval}
    seconds, on C{clock} (the reactor, or a C{Clock} in tests), logging what
    it removed.
    """

    log = Logger()

    def __init__(self, directory: str, clock: IReactorTime, max_age: float = TMP_MAX_AGE,
                 interval: float = TMP_CLEAN_INTERVAL) -> None:
        self.directory = directory
        self.max_age = max_age
        self.interval = interval
        self._clock: Any = clock  # IReactorTime (typed Any: zope methods confuse mypy)
        self._loop: Optional[LoopingCall] = None

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    def start(self) -> None:
        """Clean at once (start-up), then every C{interval} seconds."""
        if self.running:
            return
        loop = self._loop = LoopingCall(self.clean)
        loop.clock = self._clock
        d = loop.start(self.interval, now=True)
        d.addErrback(lambda f: self.log.failure("Maildir tmp/ cleaning stopped", f))

    def stop(self) -> None:
        if self.running:
            assert self._loop is not None
            self._loop.stop()
        self._loop = None

    def clean(self) -> Tuple[int, int]:
        """One pass; logs how many files were removed (and failed) from which directory."""
        removed, failed = remove_stale(self.directory, self._clock.seconds(), self.max_age)
        if removed:
            self.log.info("Removed {count} stale file(s) older than {hours:g} hours from {directory}",
                          count=removed, hours=self.max_age / 3600, directory=self.directory)
        if failed:
            self.log.warn("Could not remove {count} stale file(s) from {directory}",
                          count=failed, directory=self.directory)
        return removed, failed


def default_clock() -> Any:
    """The global reactor, imported only when a cleaner needs it."""
    from twisted.internet import reactor
    return reactor
