# -*- test-case-name: tests.test_deadlines -*-
"""
One reactor timer for all the connections of a server.

Every connection needs a timer (idle timeout, minimum data rate,
C{hook_timeout}, a stalled body reader), and it is rescheduled rarely: the
dialogue keeps its own deadline and the timer only wakes the connection up
to look at it. A Twisted C{DelayedCall} per connection costs ~450 bytes of
every idle connection (the call, its C{kw} dict, two bound methods of the
reactor, the connection's bound method, its time); that was a fifth of an
idle connection (see C{bench/README.md}, "Issue 13 part 2: idle memory").

L{Deadlines} keeps a heap of small L{Deadline} entries (~80 bytes each with
their time) and one C{callLater} for the earliest. Instants are exactly what
C{callLater(delay)} would give (C{reactor.seconds() + delay}), and an entry
due at the instant the shared call fires is run in that call, so a
connection wakes up at the instant its own C{DelayedCall} would have, with
a test C{Clock} too. Entries due at the same instant run in no particular
order (they belong to different connections).

A cancelled entry drops its owner at once (a closed connection is never
kept alive by the heap) and stays in the heap, empty, until it reaches the
top or until the empty entries outnumber the live ones, when the heap is
rebuilt (as Twisted's reactor does with cancelled calls). With no live
entry left, the shared call is cancelled: an idle server has no timer.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Any, List, Optional, Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._logging import SessionLogger

__all__ = ["Deadline", "Deadlines", "Linger", "Owner"]

#: Empty entries tolerated in the heap before it is rebuilt, whatever the live count.
_SLACK = 64
#: The C{when} of an entry taken out of the heap to run now (cancelling it leaves no empty entry behind).
_RUNNING = float("-inf")


class Owner(TypingProtocol):
    """What a L{Deadline} wakes up: C{deadline_reached()} is called at its instant."""

    def deadline_reached(self) -> None: ...


class Deadline:
    """
    One scheduled wake-up. C{owner} is None once it ran or was cancelled.

    @ivar when: the instant, in the reactor's C{seconds()}.
    """

    __slots__ = ("when", "owner")

    def __init__(self, when: float, owner: Optional[Owner]) -> None:
        self.when = when
        self.owner = owner

    def __lt__(self, other: "Deadline") -> bool:
        return self.when < other.when

    def active(self) -> bool:
        """Whether it is still to run."""
        return self.owner is not None

    def getTime(self) -> float:
        """The instant (the name C{IDelayedCall} uses)."""
        return self.when


class Linger:
    """
    The owner of a closing connection's last deadline. C{loseConnection}
    waits until what is queued has been sent, for ever if the client reads
    nothing more (a full TCP window): at C{until} the connection is aborted
    (C{protocol.abort()}). It takes over the connection's pending entry when
    that one is due by then (no heap work on the way out); woken early by
    it, it waits on in an entry of its own. Either entry is the protocol's
    C{_timer}, which its C{connectionLost} cancels.
    """

    __slots__ = ("_protocol", "_until")

    def __init__(self, protocol: Any, until: float) -> None:
        self._protocol = protocol
        self._until = until

    def deadline_reached(self) -> None:
        protocol = self._protocol
        left = self._until - protocol.context.reactor.seconds()
        if left > 1e-6:  # (timer arithmetic may land a hair early)
            protocol._timer = protocol.context.deadlines.call_later(left, self)
        else:
            protocol.abort()


def _session_id(owner: Any) -> Optional[str]:
    """The session id of a deadline's owner (a protocol, or a L{Linger} holding one), for the failure's log line."""
    protocol = getattr(owner, "_protocol", owner)
    try:
        return str(protocol.session.id)
    except Exception:  # an owner with no session (a test's): the line goes out without one
        return None


class Deadlines:
    """
    A server's connection timers: L{call_later} gives a L{Deadline}, which
    L{cancel} withdraws; at its instant its owner's C{deadline_reached()}
    runs.
    """

    __slots__ = ("_reactor", "_heap", "_call", "_at", "_live", "_empty", "_firing")

    log = SessionLogger()

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._heap: List[Deadline] = []
        self._call: Optional[IDelayedCall] = None  # the reactor's call, for the earliest entry
        self._at = 0.0  # the instant _call was set for
        self._live = 0
        self._empty = 0  # cancelled entries still in the heap
        self._firing = False  # in _fire: it sets the next call itself when done

    def __len__(self) -> int:
        """How many deadlines are pending."""
        return self._live

    def call_later(self, delay: float, owner: Owner) -> Deadline:
        """Wake C{owner} up in C{delay} seconds (as C{callLater(delay, ...)} would)."""
        entry = Deadline(self._reactor.seconds() + delay, owner)
        heappush(self._heap, entry)
        self._live += 1
        if not self._firing and (self._call is None or entry.when < self._at):
            self._arm(entry.when)
        return entry

    def cancel(self, entry: Deadline) -> None:
        """Withdraw C{entry} (nothing happens if it ran or was withdrawn already)."""
        if entry.owner is None:
            return
        entry.owner = None
        if entry.when == _RUNNING:  # out of the heap already, and counted out
            return
        self._live -= 1
        if not self._live:
            self._heap.clear()
            self._empty = 0
            if self._call is not None and not self._firing:
                if self._call.active():
                    self._call.cancel()
                self._call = None
            return
        self._empty += 1
        if self._empty > _SLACK and self._empty > self._live:
            self._heap = [e for e in self._heap if e.owner is not None]
            heapify(self._heap)
            self._empty = 0

    def _arm(self, when: float) -> None:
        """Have the reactor call L{_fire} at C{when}."""
        call = self._call
        delay = max(0.0, when - self._reactor.seconds())
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._call = self._reactor.callLater(delay, self._fire)
        self._at = when

    def _fire(self) -> None:
        """Run every entry due now; then wait for the next one."""
        self._call = None
        heap = self._heap
        # Due: up to the instant we were set for (the reactor's arithmetic may land a hair before it).
        now = max(self._reactor.seconds(), self._at)
        due = []
        while heap and heap[0].when <= now:
            entry = heappop(heap)
            if entry.owner is None:
                self._empty -= 1
            else:
                entry.when = _RUNNING
                self._live -= 1
                due.append(entry)
        if not self._live:
            self._heap.clear()
            self._empty = 0
        self._firing = True
        try:
            for entry in due:
                owner = entry.owner
                if owner is None:  # cancelled by an entry run before it
                    continue
                entry.owner = None
                try:
                    owner.deadline_reached()
                except Exception:
                    self.log.failure("connection timer failed", session_id=_session_id(owner))
        finally:
            self._firing = False
        # What the owners scheduled meanwhile may come before or after what was there.
        heap = self._heap  # (a cancellation may have rebuilt it)
        while heap and heap[0].owner is None:
            heappop(heap)
            self._empty -= 1
        if heap:
            self._arm(heap[0].when)
