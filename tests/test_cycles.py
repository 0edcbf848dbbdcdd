# -*- test-case-name: tests.test_cycles -*-
"""
A finished connection or message leaves no reference cycle among
txsmtpsrv's objects.

Why: an object in a cycle is freed only by Python's cyclic garbage
collector. Mail traffic that leaves cycles makes that collector run (its
young collections every few hundred allocations, and now and then a full
one over the whole heap of the program embedding the server: tens to
hundreds of milliseconds in a large program), and holds each connection's
memory until then. Without cycles, reference counting frees a message's and
a connection's objects the moment the last one lets go, and steady mail
traffic gives the collector no reason to run at all (issue 13; bench/README).

How: with the collector off, a whole dialogue runs in memory and the test
lets go of it; one collection with C{DEBUG_SAVEALL} then shows what only
the collector could have freed. The transport is a C{StringTransport},
closed as Twisted's TCP transport closes (it forgets its producer, then
tells the protocol). The same is checked over real sockets with real
clients in C{tests/test_cycles_loopback.py}.
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any, Callable, Iterator, List, Tuple

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs
from twisted.python.failure import Failure

from txsmtpsrv import SMTPError, SMTPServer
from txsmtpsrv.testing import TestClient, make_server

BODY = b"Subject: t\r\n\r\nhello\r\n"


def _ours_named(objects: List[Any]) -> List[str]:
    """The type names of those of C{objects} that are txsmtpsrv's."""
    names = []
    for o in objects:
        module = type(o).__module__
        if isinstance(module, str) and module.startswith("txsmtpsrv"):  # (a few classes make it a property)
            names.append(module + "." + type(o).__qualname__)
    return names


def _ours() -> Counter[str]:
    """How many of each txsmtpsrv type the collector tracks now."""
    return Counter(_ours_named(gc.get_objects()))


def _forget_logged_events() -> None:
    """
    Until a program begins logging, Twisted keeps its last events (2,000 in
    Twisted 26), and with them what they name (a connection is an event's
    C{log_source}): newer events push those out, so that only the dialogue's
    own references decide what is freed.
    """
    log = Logger(namespace="tests.test_cycles")
    for _ in range(10_000):
        log.debug("filler")


def cyclic_garbage(run: Callable[[], None]) -> List[str]:
    """
    The txsmtpsrv objects that C{run()} left behind, by type name: those
    only the cyclic collector could free, then (marked "alive") those still
    held when it is over. An empty list: reference counting freed everything.
    """
    _forget_logged_events()  # (what earlier tests logged holds their servers)
    gc.collect()
    before = _ours()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        run()
        _forget_logged_events()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = sorted(_ours_named(gc.garbage))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    gc.collect()
    alive = _ours() - before
    return found + sorted("alive " + name for name in alive.elements())


def close(client: TestClient, reason: Any = ConnectionDone) -> None:
    """The connection ends as on Twisted's TCP transport: the producer is forgotten, then the protocol told."""
    client.transport.producer = None
    client.protocol.connectionLost(Failure(reason()))


class Collecting:
    """The usual sink: every chunk to a callback, the stream's own Deferred returned."""

    def __init__(self) -> None:
        self.sizes: List[int] = []

    def on_data(self, session: Any, stream: Any) -> Any:
        return stream.collect(lambda chunk: self.sizes.append(len(chunk)))


class Content:
    """The whole body through C{content()} and a callback chained to it."""

    def on_data(self, session: Any, stream: Any) -> Any:
        return stream.content().addCallback(lambda body: None)


class AsyncContent:
    """An C{async def} hook awaiting the body."""

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.content()


class Rejecting:
    """A data hook refusing the message after reading it."""

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.content()
        raise SMTPError(554, "no thanks", enhanced="5.7.1")


class Reader(Protocol):
    """A reader given to C{deliver_body} that lets go of its stream when the body ends."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.transport = None
        self.done.callback(None)


class Delivering:
    """The body to an C{IProtocol} (C{deliver_body}), answered when it ends."""

    def on_data(self, session: Any, stream: Any) -> Any:
        reader = Reader()
        stream.deliver_body(reader)
        return reader.done


class Later:
    """A data hook answering when the test says so."""

    def __init__(self) -> None:
        self.pending: List[Deferred[None]] = []

    def on_data(self, session: Any, stream: Any) -> Any:
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return stream.content().addCallback(lambda body: d)


@pytest.fixture(autouse=True)
def collector_state() -> Iterator[None]:
    """Each test starts and ends with the collector as it was."""
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()


def warm(hooks: Any, **options: Any) -> Tuple[SMTPServer, Clock]:
    """
    A server that has served one whole session already: the server's own
    objects (made once, for its lifetime) are not what is looked for.
    """
    server, clock = make_server(hooks, **options)
    client = TestClient(server, tls="starttls")
    client.ehlo()
    client.starttls()  # (the server's TLS objects are made at the first STARTTLS)
    client.sendmail("a@x.test", ["b@y.test"], BODY)
    client.command("QUIT")
    close(client)
    return server, clock


@pytest.mark.parametrize("hooks", [Collecting, Content, AsyncContent, Rejecting, Delivering],
                         ids=lambda h: h.__name__)
def test_a_session_of_messages_and_quit(hooks: Callable[[], Any]) -> None:
    """Three messages and QUIT, with each way of reading the body: nothing for the collector."""
    server, _ = warm(hooks())

    def run() -> None:
        client = TestClient(server)
        client.ehlo()
        for _ in range(3):
            client.sendmail("a@x.test", ["b@y.test"], BODY, ehlo=None)
        assert client.command("QUIT").code == 221
        close(client)

    assert cyclic_garbage(run) == []


def test_messages_on_a_connection_that_stays_leave_nothing() -> None:
    """Each message's stream, collector and Deferred are freed while the connection goes on."""
    server, _ = warm(Collecting())
    client = TestClient(server)
    client.ehlo()
    client.sendmail("a@x.test", ["b@y.test"], BODY, ehlo=None)

    def run() -> None:
        for _ in range(5):
            replies = client.sendmail("a@x.test", ["b@y.test"], BODY, ehlo=None)
            assert replies[-1].code == 250

    # The last message's stream is the connection's until it ends (or the next message).
    assert cyclic_garbage(run) == []
    close(client)


@pytest.mark.parametrize("reason", [ConnectionDone, ConnectionLost], ids=["closed", "lost"])
def test_a_client_gone_mid_body(reason: Any) -> None:
    """The client goes away halfway through DATA: the stream is cut short and everything freed."""
    server, _ = warm(Collecting())

    def run() -> None:
        client = TestClient(server)
        client.ehlo()
        client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: t\r\n\r\nhalf a bo")
        close(client, reason)

    assert cyclic_garbage(run) == []


def test_a_client_gone_while_the_hook_is_still_deciding() -> None:
    """The data hook answers after the client left: that answer finds nothing to hold on to."""
    hooks = Later()
    server, _ = make_server(hooks)

    def run() -> None:
        client = TestClient(server)
        client.ehlo()
        client.sendmail("a@x.test", ["b@y.test"], BODY, ehlo=None)
        close(client, ConnectionLost)
        hooks.pending.pop().callback(None)

    run()  # warm
    assert cyclic_garbage(run) == []


def test_an_idle_client_timed_out() -> None:
    """The server's own timeout closes the connection: nothing for the collector."""
    server, clock = warm(Collecting(), socket_timeout=30)

    def run() -> None:
        client = TestClient(server)
        client.ehlo()
        clock.advance(31)
        assert client.closed
        close(client)

    assert cyclic_garbage(run) == []


def test_lmtp_and_bdat() -> None:
    """LMTP with two recipients, then a BDAT message: nothing for the collector."""
    server, _ = warm(Collecting(), lmtp=True)

    def run() -> None:
        client = TestClient(server)
        client.ehlo()
        replies = client.sendmail("a@x.test", ["b@y.test", "c@y.test"], BODY, ehlo=None)
        assert [r.code for r in replies[-2:]] == [250, 250]
        client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT %d LAST\r\n" % len(BODY) + BODY)
        assert [r.code for r in client.replies()] == [250, 250, 250]
        assert client.command("QUIT").code == 221
        close(client)

    assert cyclic_garbage(run) == []


def test_a_session_under_starttls() -> None:
    """STARTTLS (the in-memory pretend TLS), a message, QUIT: nothing for the collector."""
    server, _ = warm(Collecting())

    def run() -> None:
        client = TestClient(server, tls="starttls")
        client.ehlo()
        assert client.starttls().code == 220
        client.ehlo()
        assert client.sendmail("a@x.test", ["b@y.test"], BODY, ehlo=None)[-1].code == 250
        assert client.command("QUIT").code == 221
        close(client)

    assert cyclic_garbage(run) == []


class Keeping(Collecting):
    """A sink that keeps every stream: server -> hooks -> stream -> connection -> server, a cycle."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: List[Any] = []

    def on_data(self, session: Any, stream: Any) -> Any:
        self.streams.append(stream)
        return super().on_data(session, stream)


def test_the_check_sees_a_cycle_and_what_stays() -> None:
    """
    The helper itself: a whole server left in a cycle is found, and so is a
    connection something still holds (so the tests above can fail).
    """
    def run() -> None:
        server, _ = make_server(Keeping())
        client = TestClient(server)
        client.sendmail("a@x.test", ["b@y.test"], BODY)
        close(client)

    found = cyclic_garbage(run)
    assert "txsmtpsrv._protocol.SMTPServerProtocol" in found
    assert "txsmtpsrv._data.MessageStream" in found
    hooks = Keeping()
    server, _ = warm(hooks)
    found = cyclic_garbage(lambda: warm(hooks) and None)
    assert "alive txsmtpsrv._protocol.SMTPServerProtocol" in found


class Refusing(Collecting):
    """Recipients refused as an MX refuses unknown users: C{SMTPError} raised at once, or later."""

    def on_rcpt_to(self, session: Any, address: Any) -> Any:
        if address.address.startswith("later@"):
            return fail(SMTPError(550, "no such user", enhanced="5.1.1"))
        raise SMTPError(550, "no such user", enhanced="5.1.1")


class Buggy(Collecting):
    """A hook with a bug: the exception is logged with its traceback, the client gets 451."""

    def on_mail_from(self, session: Any, address: Any) -> Any:
        return {}["missing"]


def test_refused_recipients() -> None:
    """Refusals raised by a hook (at once, or through a failed Deferred): nothing for the collector."""
    server, _ = warm(Refusing())

    def run() -> None:
        client = TestClient(server)
        client.ehlo()
        client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<nobody@y.test>\r\nRCPT TO:<later@y.test>\r\nRSET\r\n")
        assert client.codes() == [(250, "2.1.0"), (550, "5.1.1"), (550, "5.1.1"), (250, "2.0.0")]
        assert client.command("QUIT").code == 221
        close(client)

    assert cyclic_garbage(run) == []


def test_a_hook_bug_is_logged_whole_and_leaves_nothing() -> None:
    """
    A failing hook's traceback is let go of once answered (it holds the
    connection in a cycle); the log still shows where the bug is.
    """
    server, _ = warm(Buggy())
    texts: List[str] = []  # (the events themselves name the connection: they would hold it)

    def run() -> None:
        with capturedLogs() as captured:
            client = TestClient(server)
            client.ehlo()
            assert client.command("MAIL FROM:<a@x.test>").code == 451
            assert client.command("QUIT").code == 221
            close(client)
        texts.extend(e["log_failure"].getTraceback() for e in captured if e.get("log_failure") is not None)

    assert cyclic_garbage(run) == []
    assert len(texts) == 1
    text = texts[0]
    assert "KeyError" in text and "on_mail_from" in text and "missing" in text


class SlowReader:
    """The usual data hook (C{return stream.collect(f)}) whose chunk callback never finishes."""

    def __init__(self, keep: bool = False) -> None:
        self.pending: List[Deferred[None]] = []
        self.kept: List[Deferred[None]] = []
        self.keep = keep

    def on_data(self, session: Any, stream: Any) -> Any:
        def chunk(data: bytes) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            return d
        done = stream.collect(chunk)
        if self.keep:
            self.kept.append(done)
        return done


@pytest.mark.parametrize("keep", [False, True], ids=["returned", "kept too"])
def test_a_reader_past_hook_timeout_leaves_no_unhandled_error(keep: bool) -> None:
    """
    hook_timeout cancels the collect Deferred while the body still streams:
    451, and the Deferred is either freed unfired or fired with None -- not
    failed with CancelledError that nobody handles (logged as "Unhandled
    error in Deferred" when it is freed). Found in review of the change that
    lets go of it.
    """
    hooks = SlowReader(keep)
    server, clock = make_server(hooks, hook_timeout=5, socket_timeout=300)
    with capturedLogs() as captured:
        client = TestClient(server)
        client.ehlo()
        client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + BODY + b".\r\n")
        clock.advance(6)
        assert client.codes()[-1] == (451, "4.3.0")
        if keep:
            assert hooks.kept[0].called and hooks.kept[0].result is None
        assert client.command("QUIT").code == 221
        close(client)
        del client, hooks
        gc.collect()
    assert not [e for e in captured if "Unhandled error" in str(e.get("log_format", ""))]


def test_a_kept_collect_deferred_fires_after_a_chunk_callback_fails() -> None:
    """
    A hook that keeps the Deferred of C{stream.collect} it returns gets it
    fired with None after the connection took the answer directly, also
    when a chunk callback raised (C{answer_directly}'s promise). Found in
    review of the change that lets go of it.
    """
    kept: List[Deferred[None]] = []

    class Keeps:
        def on_data(self, session: Any, stream: Any) -> Any:
            def chunk(data: bytes) -> None:
                raise ValueError("bad chunk")
            d = stream.collect(chunk)
            kept.append(d)
            return d

    server, _ = make_server(Keeps())
    client = TestClient(server)
    assert client.sendmail("a@x.test", ["b@y.test"], BODY)[-1].code == 451
    assert kept[0].called and kept[0].result is None
