# -*- test-case-name: tests.test_reactor_inline_read -*-
"""
The TCP read event that C{smtpsrv-epoll} handles inline
(L{txsmtpsrv._reactor.SMTPEPollReactor._dispatch}: Twisted's
C{_doReadOrWrite} and C{Connection.doRead} run in place) must end as
Twisted's own code ends it.

Each scenario runs on Twisted's C{EPollReactor} and on ours (the harness
of C{tests._close_harness}: reactors polled by hand, real sockets on
127.0.0.1), and what is observed -- the bytes the protocol got and the log
context it got them in, C{connectionLost}/C{readConnectionLost} and their
reasons, what was logged and with which C{system}, whether the socket
closed, what escaped the pass -- must be the same. A spy on the reactor's
C{_doReadOrWrite} shows that ours did take the inline way (Twisted's never
does), so the comparison is not one of Twisted's code with itself.

To see them fail, break the inline code in C{_dispatch}: the module's
end lists which test catches which change.
"""

from __future__ import annotations

import errno
import inspect
import select
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import pytest

if not hasattr(select, "epoll"):  # pragma: no cover - the reactor is Linux's
    pytest.skip("no epoll here", allow_module_level=True)

from twisted.internet import error, posixbase, tcp  # noqa: E402
from twisted.internet.epollreactor import EPollReactor  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402
from twisted.python import context, log  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from tests._close_harness import KINDS, PASSES, HalfProbe, Loop, Probe, loops  # noqa: E402,F401  (loops: a fixture)
from txsmtpsrv import _reactor  # noqa: E402
from txsmtpsrv._reactor import SMTPEPollReactor  # noqa: E402

Script = Callable[["ReadProbe", bytes], Any]


class ReadProbe(Probe):
    """A L{Probe} that also notes each chunk, the log C{system} it came in, and each C{connectionLost}'s Failure."""

    read_ended = False  # (L{HalfReadProbe}'s readConnectionLost sets it)

    def __init__(self, loop: Loop, script: Any) -> None:
        super().__init__(loop, script)
        self.chunks: List[bytes] = []
        self.systems: List[str] = []
        self.failures: List[Failure] = []
        self.lost_systems: List[str] = []  # (the log context of each connectionLost)
        self.logstr = ""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.logstr = self.transport.logPrefix()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> Any:
        self.chunks.append(data)
        self.systems.append(context.get(log.ILogContext)["system"])
        return self.script(self, data)  # (its result too: Twisted 26.4 acts on it)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.failures.append(reason)
        self.lost_systems.append(context.get(log.ILogContext)["system"])
        super().connectionLost(reason)


class HalfReadProbe(ReadProbe, HalfProbe):
    """A L{ReadProbe} that takes half-closes (C{IHalfCloseableProtocol}, from L{HalfProbe})."""


class SubServer(tcp.Server):
    """A subclass of C{tcp.Server}: ours leaves its events to C{_doReadOrWrite} (it may read differently)."""


class FlakySocket:
    """A connection's socket whose next C{recv} raises C{error} (once); all else is the real socket's."""

    def __init__(self, real: Any, err: OSError) -> None:
        self._real = real
        self._error: Optional[OSError] = err
        self.raised = 0

    def recv(self, size: int) -> bytes:
        if self._error is not None:
            err, self._error = self._error, None
            self.raised += 1
            raise err
        return bytes(self._real.recv(size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Run:
    """One scenario on one reactor: its loop, the server's protocol, the client, and what was seen."""

    def __init__(self, make: Callable[[type], Loop], kind: type, script: Script,
                 cls: Type[ReadProbe] = ReadProbe, transport: Optional[type] = None) -> None:
        self.loop = loop = make(kind)
        self.drw: List[Tuple[int, int]] = []  # (fd, event) of each _doReadOrWrite call
        real = loop.r._doReadOrWrite

        def spy(selectable: Any, fd: int, event: int) -> None:
            self.drw.append((fd, event))
            real(selectable, fd, event)

        loop.r._doReadOrWrite = spy
        loop.listen(script, cls)  # type: ignore[arg-type]
        if transport is not None:
            loop.ports[0].transport = transport
        (self.c,) = loop.connect()
        (p,) = loop.conns
        assert isinstance(p, ReadProbe)
        self.p = p
        self.logged: List[Tuple[Any, Any, Any]] = []  # (failure type or None, system, message)
        self.escaped: List[type] = []
        self.warned: List[type] = []
        self.notes: Dict[str, Any] = {}  # what the scenario noted on the way

    def observe(self, event: Dict[str, Any]) -> None:
        fault = event.get("log_failure") or event.get("failure")  # (a legacy log.err's: "failure")
        if fault is not None or event.get("isError") or "inside" in (event.get("message") or ()):
            self.logged.append((fault.type if fault is not None else None, event.get("log_system"),
                                tuple(event.get("message") or ())))

    def pump(self, done: Callable[[], bool], passes: int = PASSES) -> None:
        """Pass until C{done()} (or C{passes} passes), logging observed, warnings and anything escaping noted."""
        globalLogPublisher.addObserver(self.observe)  # type: ignore[arg-type]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    self.loop.pump(done, passes, must=passes == PASSES)
                except AssertionError:  # (the test's own, or a pass that never came)
                    raise
                except BaseException as e:  # (KeyboardInterrupt too: noted, compared)
                    self.escaped.append(type(e))
            self.warned += [w.category for w in caught]
        finally:
            globalLogPublisher.removeObserver(self.observe)  # type: ignore[arg-type]

    def send(self, data: bytes, done: Optional[Callable[[], bool]] = None) -> None:
        """The client sends C{data}; pass until C{done()} (by default: the protocol has it, or is closed)."""
        self.c.send(data)
        self.pump(done or (lambda: data in b"".join(self.p.chunks) or bool(self.p.failures) or self.p.read_ended))

    @property
    def via_drw(self) -> bool:
        """Whether any read event of the connection went through C{_doReadOrWrite}."""
        return any(fd == self.p.fd and event & select.EPOLLIN for fd, event in self.drw)

    def outcome(self) -> Dict[str, Any]:
        """What both reactors must agree on (the connection's own log prefix written as C{<conn>})."""
        p, t = self.p, self.p.transport
        name: Callable[[Any], Any] = lambda s: "<conn>" if s == p.logstr else s  # noqa: E731
        return {
            "data": b"".join(p.chunks),
            "systems": [name(s) for s in p.systems],
            "lost": [(f.type, f.value if f.value is posixbase._NO_FILEDESC else None) for f in p.failures],
            "lost_systems": [name(s) for s in p.lost_systems],
            "read_ended": p.read_ended,
            "logged": [(ftype, name(system), message) for ftype, system, message in self.logged],
            "escaped": self.escaped,
            "warned": self.warned,
            "disconnected": bool(t.disconnected),  # type: ignore[union-attr]
            "client_eof": (self.c.eof, self.c.reset),
            "notes": self.notes,
        }


def both(make: Callable[[type], Loop], scenario: Callable[[Run], None], script: Script = lambda p, d: None,
         **kw: Any) -> Tuple[Run, Run]:
    """The scenario on Twisted's reactor, then on ours: their outcomes must be equal."""
    runs = []
    for kind in KINDS:
        run = Run(make, kind, script, **kw)
        scenario(run)
        runs.append(run)
    twisted, ours = runs
    assert ours.outcome() == twisted.outcome()
    return twisted, ours


def inline(twisted: Run, ours: Run) -> None:
    """Ours took the inline way for the connection's reads; Twisted's went through C{_doReadOrWrite}."""
    assert twisted.via_drw and not ours.via_drw


def _lose_on(text: bytes) -> Script:
    def script(p: ReadProbe, data: bytes) -> None:
        if text in data:
            p.lose()
    return script


# -- data, EOF, half-close --------------------------------------------------------------------


def test_ordinary_data(loops: Any) -> None:
    """Two lines, then a close asked by the protocol: same bytes, same system, ConnectionDone once."""
    def scenario(r: Run) -> None:
        r.send(b"HELO x\r\n")
        r.send(b"QUIT\r\n", lambda: r.p.failures != [] and r.c.eof)

    twisted, ours = both(loops, scenario, _lose_on(b"QUIT"))
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["data"] == b"HELO x\r\nQUIT\r\n" and set(out["systems"]) == {"<conn>"}
    assert out["lost"] == [(error.ConnectionDone, None)] and out["logged"] == [] and out["escaped"] == []
    assert out["client_eof"] == (True, False)


def test_reads_take_bufferSize_at_most(loops: Any) -> None:
    """recv(bufferSize), the transport's own: 5000 bytes with a 1000-byte buffer come in 1000-byte reads."""
    payload = bytes(range(250)) * 20

    def scenario(r: Run) -> None:
        r.p.transport.bufferSize = 1000  # type: ignore[union-attr]
        r.send(payload, lambda: len(b"".join(r.p.chunks)) >= len(payload))
        assert max(map(len, r.p.chunks)) == 1000 and len(r.p.chunks) >= 5

    twisted, ours = both(loops, scenario)
    inline(twisted, ours)
    assert twisted.outcome()["data"] == payload


def test_client_eof(loops: Any) -> None:
    """The client's FIN to a protocol without half-close: connectionLost(ConnectionDone), the socket closed."""
    def scenario(r: Run) -> None:
        r.send(b"hello")
        r.c.sock.shutdown(1)
        r.pump(lambda: r.p.failures != [] and r.c.eof)

    twisted, ours = both(loops, scenario)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["data"] == b"hello" and out["lost"] == [(error.ConnectionDone, None)]
    assert out["lost_systems"] == ["<conn>"]  # (the close is in the connection's log context too)
    assert out["disconnected"] and out["client_eof"] == (True, False) and out["logged"] == []


def test_client_eof_to_a_half_closeable_protocol(loops: Any) -> None:
    """
    The client's FIN to an C{IHalfCloseableProtocol}: C{readConnectionLost}
    only (the EOF is a read's), the connection still writable; then the
    protocol's reply and close.
    """
    def scenario(r: Run) -> None:
        r.c.sock.shutdown(1)
        r.pump(lambda: r.p.read_ended)
        assert r.p.failures == [] and not r.p.transport.disconnected  # type: ignore[union-attr]
        r.p.transport.write(b"221 bye\r\n")  # type: ignore[union-attr]
        r.p.lose()
        r.pump(lambda: r.c.eof and r.p.failures != [])

    twisted, ours = both(loops, scenario, cls=HalfReadProbe)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["read_ended"] is True and out["lost"] == [(error.ConnectionDone, None)]
    assert bytes(twisted.c.data) == bytes(ours.c.data) == b"221 bye\r\n"


# -- recv's errors, fileno() == -1 ---------------------------------------------------------


def _flaky(r: Run, err: OSError) -> FlakySocket:
    t: Any = r.p.transport
    t.socket = sock = FlakySocket(t.socket, err)
    return sock


def test_recv_would_block(loops: Any) -> None:
    """recv's EWOULDBLOCK: nothing happens (the next pass reads the bytes); later data arrives too."""
    def scenario(r: Run) -> None:
        sock = _flaky(r, BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"))
        r.send(b"one\r\n")
        assert sock.raised == 1
        r.send(b"two\r\n")

    twisted, ours = both(loops, scenario)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["data"] == b"one\r\ntwo\r\n" and out["lost"] == [] and out["logged"] == []
    assert not out["disconnected"]


def test_recv_reset(loops: Any) -> None:
    """Another OSError from recv (ECONNRESET): connectionLost(ConnectionLost), nothing logged, the socket closed."""
    def scenario(r: Run) -> None:
        sock = _flaky(r, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
        r.send(b"one\r\n", lambda: r.p.failures != [] and r.c.eof)
        assert sock.raised == 1

    twisted, ours = both(loops, scenario, cls=HalfReadProbe)  # (a reset is no half-close)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["data"] == b"" and out["lost"] == [(error.ConnectionLost, None)] and out["logged"] == []
    assert out["read_ended"] is False and out["disconnected"]


def test_fileno_minus_one(loops: Any) -> None:
    """C{fileno() == -1}: no read; connectionLost with C{_doReadOrWrite}'s own ConnectionFdescWentAway."""
    def scenario(r: Run) -> None:
        r.p.transport.fileno = lambda: -1  # type: ignore[union-attr]
        r.send(b"one\r\n", lambda: r.p.failures != [] and r.c.eof)

    twisted, ours = both(loops, scenario, cls=HalfReadProbe)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["data"] == b"" and out["logged"] == [] and out["read_ended"] is False
    assert out["lost"] == [(error.ConnectionFdescWentAway, posixbase._NO_FILEDESC)] and out["disconnected"]


# -- the protocol's dataReceived: what it raises, returns, logs --------------------------------


def _raising(make: Callable[[], BaseException]) -> Script:
    """A script raising a new C{make()} (noted as C{p.raised}), so no traceback carries over between runs."""
    def script(p: ReadProbe, data: bytes) -> None:
        p.raised = exc = make()  # type: ignore[attr-defined]
        raise exc
    return script


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_dataReceived_raises(loops: Any, exc: Type[BaseException]) -> None:
    """
    Logged once, in the connection's log context; the connection lost with
    that very exception; nothing escapes the pass (C{_doReadOrWrite} catches
    C{BaseException}, KeyboardInterrupt and SystemExit included).
    """
    def scenario(r: Run) -> None:
        r.send(b"one\r\n", lambda: r.p.failures != [] and r.c.eof)
        (failure,) = r.p.failures
        assert failure.value is r.p.raised  # type: ignore[attr-defined]

    twisted, ours = both(loops, scenario, _raising(exc))
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["logged"] == [(exc, "<conn>", ())] and out["escaped"] == []
    assert out["lost"] == [(exc, None)] and out["disconnected"]


def test_dataReceived_raises_ConnectionDone_to_a_half_closeable_protocol(loops: Any) -> None:
    """
    An exception is not a read's end (C{inRead} False): even a
    ConnectionDone raised by an C{IHalfCloseableProtocol} is a full close,
    not C{readConnectionLost}.
    """
    def scenario(r: Run) -> None:
        r.send(b"one\r\n", lambda: r.p.failures != [] and r.c.eof)

    twisted, ours = both(loops, scenario, _raising(lambda: error.ConnectionDone("raised")), cls=HalfReadProbe)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["read_ended"] is False and out["lost"] == [(error.ConnectionDone, None)]
    assert out["logged"] == [(error.ConnectionDone, "<conn>", ())]


#: Twisted before 26.10: C{_dataReceived} returns what dataReceived returned (deprecated), ending the read with it.
_RETURN_ENDS_READ = "rval" in inspect.getsource(tcp.Connection._dataReceived)


@pytest.mark.parametrize("value, ends", [(error.ConnectionLost(), ([error.ConnectionLost], False)),
                                         (error.ConnectionDone(), ([], True)), (0, ([], False))],
                         ids=["ConnectionLost", "ConnectionDone", "falsy"])
def test_dataReceived_returns_a_value(loops: Any, value: Any, ends: Any) -> None:
    """
    A value returned by dataReceived: ignored on Twisted 26.10; on 26.4 (a
    deprecation warning and) the read's end (C{inRead}: a ConnectionDone
    is C{readConnectionLost}). Either way, the same on both reactors.
    """
    def scenario(r: Run) -> None:
        r.send(b"one\r\n")
        r.pump(lambda: bool(r.p.failures or r.p.read_ended), passes=20)  # (26.10: nothing comes)
        r.notes["ends"] = ([f.type for f in r.p.failures], r.p.read_ended)
        r.c.sock.shutdown(1)
        r.pump(lambda: r.p.failures != [] or r.p.read_ended)

    twisted, ours = both(loops, scenario, lambda p, data: value, cls=HalfReadProbe)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["data"] == b"one\r\n"
    assert out["notes"]["ends"] == (ends if _RETURN_ENDS_READ else ([], False))
    assert out["warned"] == ([DeprecationWarning] if _RETURN_ENDS_READ else [])


def test_the_log_context_inside_dataReceived(loops: Any) -> None:
    """C{system} inside dataReceived is the transport's logPrefix(), for the context and for log.msg."""
    def script(p: ReadProbe, data: bytes) -> None:
        assert context.get(log.ILogContext)["system"] == p.transport.logPrefix()  # type: ignore[union-attr]
        log.msg("inside")

    def scenario(r: Run) -> None:
        r.send(b"one\r\n")

    twisted, ours = both(loops, scenario, script)
    inline(twisted, ours)
    out = twisted.outcome()
    assert out["systems"] == ["<conn>"] and out["logged"] == [(None, "<conn>", ("inside",))]


# -- what stays with _doReadOrWrite ----------------------------------------------------------


def test_a_subclass_of_tcp_Server_goes_through_doReadOrWrite(loops: Any) -> None:
    """Not the exact type: its reads go through C{_doReadOrWrite} on ours too (and end as on Twisted's)."""
    def scenario(r: Run) -> None:
        t: Any = r.p.transport
        assert type(t) is SubServer
        r.send(b"one\r\n")
        r.c.sock.shutdown(1)
        r.pump(lambda: r.p.failures != [])

    twisted, ours = both(loops, scenario, transport=SubServer)
    assert twisted.via_drw and ours.via_drw
    assert twisted.outcome()["lost"] == [(error.ConnectionDone, None)]


def test_EPOLLIN_with_EPOLLHUP_goes_through_doReadOrWrite(loops: Any) -> None:
    """An event with more than EPOLLIN in it (here EPOLLHUP too, injected): C{_doReadOrWrite}'s, on both."""
    def scenario(r: Run) -> None:
        real = r.loop.spy.poll

        def poll(timeout: float = -1, maxevents: int = -1) -> Any:
            return [(fd, event | select.EPOLLHUP if fd == r.p.fd else event) for fd, event in real(timeout, maxevents)]

        r.loop.spy.poll = poll  # type: ignore[method-assign]
        r.send(b"one\r\n")
        assert (r.p.fd, select.EPOLLIN | select.EPOLLHUP) in r.drw

    twisted, ours = both(loops, scenario)
    assert twisted.via_drw and ours.via_drw
    assert twisted.outcome()["data"] == b"one\r\n"


def test_ours_reads_per_instance_overrides_as_documented(loops: Any) -> None:
    """
    A known, documented difference: an exact C{tcp.Server}'s read event does
    not look up C{doRead} or C{logPrefix} on the transport, so overrides set
    on one transport instance (which nothing in Twisted or txsmtpsrv sets)
    are bypassed on ours: C{logstr} and Twisted's C{Connection.doRead} are used.
    """
    for kind in KINDS:
        r = Run(loops, kind, lambda p, data: None)
        t: Any = r.p.transport
        calls: List[str] = []
        do_read = t.doRead

        def spy() -> Any:
            calls.append("doRead")
            return do_read()

        t.doRead = spy
        t.logPrefix = lambda: "instance prefix"
        r.send(b"one\r\n")
        ours = kind is SMTPEPollReactor
        assert calls == ([] if ours else ["doRead"])
        assert r.p.systems == [r.p.logstr if ours else "instance prefix"]


# -- what the inline read relies on ----------------------------------------------------------


def _changed(*args: Any, **kw: Any) -> Any:  # what a changed Twisted might have instead
    return None


_MIXIN: Any = getattr(tcp, "_TLSServerMixin")  # (tcp.Server's base: from _newtls, not re-exported)


@pytest.mark.parametrize("where, name", [(tcp.Server, "doRead"), (_MIXIN, "doRead"),
                                         (tcp.Server, "logPrefix"), (_MIXIN, "logPrefix"),
                                         (EPollReactor, "_doReadOrWrite"),
                                         (posixbase.PosixReactorBase, "_doReadOrWrite")])
def test_the_digest_follows_what_a_tcp_Server_read_runs(monkeypatch: pytest.MonkeyPatch, where: Any,
                                                        name: str) -> None:
    """
    The digest is of what C{tcp.Server} and C{EPollReactor} resolve C{doRead},
    C{logPrefix} and C{_doReadOrWrite} to, not of the classes that define them
    today: a Twisted that overrides one nearer (C{tcp.Server} or its TLS
    mixin, C{EPollReactor} or C{PosixReactorBase}) is another digest.
    """
    before = _reactor._twisted_digest()
    assert before in _reactor.CHECKED_TWISTED
    monkeypatch.setattr(where, name, _changed, raising=False)
    assert _reactor._twisted_digest() not in (before, None)


@pytest.mark.parametrize("where, name", [(posixbase._PollLikeMixin, "_doReadOrWrite"), (tcp.Connection, "doRead"),
                                         (getattr(tcp, "_AbortingMixin"), "abortConnection")])
def test_a_twisted_without_a_part_is_refused_as_a_default(monkeypatch: pytest.MonkeyPatch, where: Any,
                                                          name: str) -> None:
    """
    A Twisted without one of the digest's parts (renamed, moved): no digest
    (or another one, where a base class still has it), so the daemon warns
    and runs Twisted's reactor; the AttributeError must not stop it starting.
    """
    monkeypatch.delattr(where, name)
    assert _reactor._twisted_digest() not in _reactor.CHECKED_TWISTED
    monkeypatch.delitem(sys.modules, "twisted.internet.reactor")
    monkeypatch.setattr(_reactor, "install", lambda: pytest.fail("installed"))
    reason = _reactor.install_unless_chosen()
    assert reason is not None and "choose it explicitly" in reason


@pytest.mark.parametrize("name", ["_dataReceived", "logstr", "bufferSize"])
def test_install_refuses_a_twisted_whose_tcp_Server_lacks_what_the_read_uses(monkeypatch: pytest.MonkeyPatch,
                                                                             name: str) -> None:
    """
    C{--reactor=smtpsrv-epoll} on a Twisted whose C{tcp.Server} lacks what
    the inline read uses: a clear error at start-up, nothing installed (not
    every TCP read failing with an AttributeError).
    """
    owner = next(c for c in tcp.Server.__mro__ if name in vars(c))
    monkeypatch.delattr(owner, name)
    installed: List[Any] = []
    monkeypatch.setattr("twisted.internet.main.installReactor", installed.append)
    try:
        with pytest.raises(RuntimeError, match=f"tcp.Server lacks \\['{name}'\\]"):
            _reactor.install()
    finally:
        for reactor in installed:  # (where it was installed: closed, not left to a later test's descriptor count)
            reactor._poller.close()
            reactor.waker.connectionLost(None)
    assert installed == []


def test_a_subclass_with_its_own_doReadOrWrite_gets_every_event(loops: Any) -> None:
    """
    A subclass of C{SMTPEPollReactor} that overrides C{_doReadOrWrite} (as a
    subclass of C{EPollReactor} may) gets the TCP read events too: ours only
    inlines Twisted's own.
    """
    seen: List[int] = []

    class Counting(SMTPEPollReactor):
        def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
            seen.append(event)
            super()._doReadOrWrite(selectable, fd, event)  # type: ignore[no-untyped-call]

    r = Run(loops, Counting, lambda p, data: None)
    seen.clear()
    r.send(b"one\r\n")
    assert r.p.chunks == [b"one\r\n"] and select.EPOLLIN in seen


# What breaking the inline read in _dispatch does here (each change alone, Twisted 26.10 and 26.4):
# - `read = True` before _dataReceived (an exception counted as a read): ..._raises_ConnectionDone_to_a_half_closeable_protocol
# - no read = True after it: test_client_eof_to_a_half_closeable_protocol, test_dataReceived_returns_a_value
# - no EWOULDBLOCK check: test_recv_would_block; ECONNRESET as CONNECTION_DONE: test_recv_reset
# - no fileno() check, or CONNECTION_LOST for it: test_fileno_minus_one; recv(65536): ..._bufferSize_at_most
# - `except Exception`: test_dataReceived_raises[KeyboardInterrupt/SystemExit]; no log.err, or another
#   system for it: test_dataReceived_raises*; repr() as the prefix: most, test_the_log_context_inside_dataReceived
# - the close in another log context: test_client_eof, test_recv_reset, test_fileno_minus_one, ..._raises*
# - _dataReceived's result ignored, or protocol.dataReceived called instead: test_client_eof*, ..._returns_a_value
# - `event & EPOLLIN`: test_EPOLLIN_with_EPOLLHUP...; isinstance(): test_a_subclass_of_tcp_Server...
# - `if why is not None`: test_dataReceived_returns_a_value[falsy] on 26.4 (26.10 returns no falsy why)
# - the inline way off: every scenario's inline() check, test_ours_reads_per_instance_overrides_as_documented
