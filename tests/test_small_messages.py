# -*- test-case-name: tests.test_small_messages -*-
"""
Issue 13 part 2 (small messages): the per-message and per-connection savings
keep the behaviour. One envelope per transaction; hook_timeout kept by the
connection's own timer; a data hook that returns the stream's own C{collect}
Deferred answered without Deferred machinery; log events only built when an
observer wants them; no per-connection state until it is needed.
(The MAIL/RCPT fast path has its own property tests: C{test_fast_path}.)
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, LogPublisher, PredicateResult,
                            capturedLogs)

from txsmtpsrv import Reply, SMTPError, _cmd_session
from txsmtpsrv._build import compiled
from txsmtpsrv._core import REFUSAL_REPLY, ActionQueue
from txsmtpsrv._ipaddr import plain_ipv4
from txsmtpsrv._logging import SessionLogger, observer_wants
from txsmtpsrv._oplog import SessionLog
from txsmtpsrv._protocol import SMTPServerProtocol
from txsmtpsrv._session import Envelope
from txsmtpsrv.testing import FakeResolver, Pending, TestClient, make_server


# -- c. one Envelope per transaction ------------------------------------------------------


def test_one_envelope_per_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transaction builds exactly one Envelope, the one hooks see from MAIL to the verdict."""
    made: List[Envelope] = []
    original = Envelope.__init__

    def counting(self: Envelope) -> None:
        original(self)
        made.append(self)

    monkeypatch.setattr(Envelope, "__init__", counting)
    seen: List[Any] = []

    class H:
        def on_mail_from(self, session, address):
            seen.append(("mail", session.envelope, session.envelope.mail_from, session.envelope.size))

        def on_rcpt_to(self, session, address):
            seen.append(("rcpt", session.envelope))

        def on_data(self, session, stream):
            seen.append(("data", session.envelope))
            return stream.collect(lambda chunk: None)

    server, _ = make_server(H())
    messages: List[Any] = []
    server.observe("message", lambda session, envelope, size: messages.append(envelope))
    client = TestClient(server)
    client.ehlo()
    assert len(made) == 1  # the session's first
    for i in range(3):
        replies = client.sendmail("a@x.test", ["b@y.test"], b"Subject: %d\r\n\r\nbody\r\n" % i)
        assert replies[-1].code == 250
    # One per transaction: the session's first served the first transaction,
    # each end of a transaction made the next one's.
    assert len(made) == 4
    assert messages == made[:3]
    for i in range(3):
        mail, rcpt, data = seen[3 * i:3 * i + 3]
        assert mail[1] is rcpt[1] is data[1] is made[i]
        assert mail[2] is None  # not yet the sender while on_mail_from decides
    assert client.session.envelope is made[3] and made[3].mail_from is None


def test_refused_mail_leaves_the_envelope_untouched() -> None:
    """A MAIL refused by its hook sets nothing in the envelope, not even its parameters."""
    class H:
        def on_mail_from(self, session, address):
            if address.address == "no@x.test":
                raise SMTPError(550, "no")

    server, _ = make_server(H())
    client = TestClient(server)
    client.ehlo()
    env = client.session.envelope
    assert client.command("MAIL FROM:<no@x.test> SIZE=100 BODY=8BITMIME SMTPUTF8").code == 550
    assert client.session.envelope is env
    assert (env.mail_from, env.size, env.body_type, env.smtputf8) == (None, None, "7BIT", False)
    assert client.command("MAIL FROM:<yes@x.test> SIZE=200 BODY=8BITMIME RET=HDRS ENVID=abc").code == 250
    assert client.session.envelope is env
    assert (env.mail_from.address, env.size, env.body_type, env.dsn_ret, env.dsn_envid) == (
        "yes@x.test", 200, "8BITMIME", "HDRS", "abc")
    assert client.command("RSET").code == 250
    assert client.session.envelope is not env and client.session.envelope.mail_from is None


def test_non_ascii_sender_needs_smtputf8_on_the_same_command() -> None:
    """SMTPUTF8 given with the UTF-8 sender allows it; without, 553 5.6.7."""
    server, _ = make_server()
    client = TestClient(server)
    client.ehlo()
    assert client.command("MAIL FROM:<é@x.test>").code == 553
    reply = client.command("MAIL FROM:<é@x.test> SMTPUTF8")
    assert reply.code == 250
    assert client.session.envelope.smtputf8 is True


# -- b. hook_timeout on the connection's timer; the direct data hook -----------------------

PREFIX = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"


def test_pending_hook_adds_no_timer() -> None:
    """A pending hook is bounded by the connection's one timer: no DelayedCall of its own."""
    hooks = Pending("on_mail_from")
    server, clock = make_server(hooks, hook_timeout=5, socket_timeout=300)
    client = TestClient(server)
    client.ehlo()
    assert len(clock.getDelayedCalls()) == 1
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert len(hooks.deferreds) == 1 and len(clock.getDelayedCalls()) == 1
    # The timer was moved forward to the hook's deadline...
    assert clock.getDelayedCalls()[0].getTime() == 5
    hooks.deferreds[0].callback(None)
    assert client.codes() == [(250, "2.1.0")]
    # ...and when it fires with nothing to time out, it goes back to the client's deadline.
    clock.advance(5)
    assert len(clock.getDelayedCalls()) == 1 and clock.getDelayedCalls()[0].getTime() == 300
    assert not client.closed


def test_hook_times_out_exactly_at_hook_timeout_before_socket_timeout() -> None:
    """hook_timeout shorter than socket_timeout: 451 4.3.0 at hook_timeout, not a moment before."""
    hooks = Pending("on_rcpt_to")
    server, clock = make_server(hooks, hook_timeout=7, socket_timeout=300)
    client = TestClient(server)
    client.ehlo()
    client.command("MAIL FROM:<a@x.test>")
    clock.advance(2)
    client.send(b"RCPT TO:<b@y.test>\r\nNOOP\r\n")
    clock.advance(6.99)
    assert client.read() == b""
    with capturedLogs() as events:
        clock.advance(0.01)
    assert client.codes() == [(451, "4.3.0"), (250, "2.0.0")]
    assert hooks.deferreds[0].called  # cancelled
    assert any("timed out" in e.get("log_format", "") for e in events)
    # A later hook gets its own full hook_timeout.
    client.send(b"RCPT TO:<c@y.test>\r\n")
    clock.advance(6.99)
    assert client.read() == b""
    with capturedLogs():
        clock.advance(0.01)
    assert client.codes() == [(451, "4.3.0")]


def test_hook_timeout_with_a_canceller_that_answers() -> None:
    """As with Deferred.addTimeout: a canceller that fires the Deferred with a value answers with that value."""
    class H:
        def on_mail_from(self, session, address):
            return Deferred(lambda d: d.callback(Reply(250, "late but fine", "2.1.0")))

    server, clock = make_server(H(), hook_timeout=3)
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    clock.advance(3)
    reply, = client.replies()
    assert (reply.code, reply.text) == (250, "late but fine")


def test_disconnect_cancels_pending_hook_and_its_deadline() -> None:
    """A client leaving cancels a pending hook quietly; nothing times out later."""
    hooks = Pending("on_mail_from")
    server, clock = make_server(hooks, hook_timeout=5)
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert not hooks.deferreds[0].called
    with capturedLogs() as events:
        client.disconnect()
        assert hooks.deferreds[0].called  # cancelled
        clock.advance(10)
    assert clock.getDelayedCalls() == []
    assert not [e for e in events if e.get("log_failure") is not None]


class CollectHooks:
    """The common data hook: C{return stream.collect(callback)}; keeps each Deferred it returned in C{seen}."""

    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.results: List[Any] = []
        self.seen: List[Any] = []

    def on_data(self, session, stream):
        d = stream.collect(self.chunks.append)
        self.seen.append(d)
        return d


def test_direct_data_hook_waits_on_no_deferred() -> None:
    """on_data returning its stream's collect Deferred is answered by the stream, not through callbacks."""
    hooks = CollectHooks()
    server, clock = make_server(hooks, hook_timeout=5, socket_timeout=300)
    client = TestClient(server)
    client.send(PREFIX)
    assert client.codes()[-1] == (354, None)
    d = hooks.seen[0]
    assert not d.called and not d._callbacks  # nothing chained: no timeout, no callback of ours
    assert len(clock.getDelayedCalls()) == 1  # the connection's timer only
    d.addBoth(hooks.results.append)  # added after it was returned: sees what is left (None)
    client.send(b"line 1\r\nline 2\r\n.\r\nNOOP\r\n")
    assert client.codes() == [(250, "2.0.0"), (250, "2.0.0")]
    assert b"".join(hooks.chunks) == b"line 1\r\nline 2\r\n"
    assert hooks.results == [None]


def test_direct_data_hook_times_out_as_before() -> None:
    """A body that does not end within hook_timeout: the data hook timed out, 451 4.3.0 at the dot."""
    hooks = CollectHooks()
    server, clock = make_server(hooks, hook_timeout=5, socket_timeout=300)
    client = TestClient(server)
    client.send(PREFIX + b"partial\r\n")
    client.replies()
    clock.advance(4.99)
    assert not hooks.seen[0].called
    clock.advance(0.01)
    assert hooks.seen[0].called
    with capturedLogs() as events:
        client.send(b"more, skipped\r\n.\r\nNOOP\r\n")
    assert client.codes() == [(451, "4.3.0"), (250, "2.0.0")]
    assert any("timed out" in e.get("log_format", "") for e in events)
    assert b"".join(hooks.chunks) == b"partial"  # the CRLF waited for the next read; then skipped


def test_direct_data_hook_reader_failure_answers_451() -> None:
    """The collect callback raising ends the message with 451, through the direct path too."""
    class H:
        def on_data(self, session, stream):
            def chunk(data):
                raise RuntimeError("disk full")
            return stream.collect(chunk)

    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX)
    client.replies()
    with capturedLogs() as events:
        client.send(b"body\r\n.\r\n")
    assert client.codes() == [(451, "4.3.0")]
    assert any(e.get("log_failure") is not None for e in events)


def test_chained_collect_deferred_is_waited_on() -> None:
    """A collect Deferred with callbacks chained (a custom reply) is not answered directly: its result counts."""
    class H:
        def on_data(self, session, stream):
            return stream.collect(lambda chunk: None).addCallback(lambda _: Reply(250, "queued as 42", "2.0.0"))

    server, _ = make_server(H())
    client = TestClient(server)
    client.send(PREFIX + b"body\r\n.\r\n")
    assert client.replies()[-1].text == "queued as 42"


def test_sync_data_hook_makes_no_deferred() -> None:
    """A data hook that reads synchronously and answers at once: no Deferred anywhere, reply at the dot."""
    got: List[bytes] = []

    class Reader:
        def makeConnection(self, producer):
            pass

        def dataReceived(self, data):
            got.append(data)

        def connectionLost(self, reason):
            got.append(b"<end>")

    class H:
        def on_data(self, session, stream):
            stream.deliver_body(Reader())

    server, clock = make_server(H(), hook_timeout=5)
    client = TestClient(server)
    client.send(PREFIX)
    client.replies()
    assert not client.protocol._pending  # nothing waited on
    assert len(clock.getDelayedCalls()) == 1
    client.send(b"body\r\n.\r\n")
    assert client.codes() == [(250, "2.0.0")]
    assert got == [b"body\r\n", b"<end>"]


def test_disconnect_during_direct_data_hook() -> None:
    """The client leaving mid-body: the direct data hook is cancelled quietly, its Deferred fires with None."""
    hooks = CollectHooks()
    server, clock = make_server(hooks, hook_timeout=5)
    client = TestClient(server)
    client.send(PREFIX + b"part")
    results: List[Any] = []
    hooks.seen[0].addBoth(results.append)
    with capturedLogs() as events:
        client.disconnect()
        clock.advance(10)
    assert results == [None]
    assert not [e for e in events if e.get("log_failure") is not None]
    assert clock.getDelayedCalls() == []


# -- d. per-connection log events only built when an observer wants them --------------------


def filtered(level: LogLevel, sink: List[Any], *extra: Any) -> LogPublisher:
    """A publisher as programs set one up: a level filter in front of a sink."""
    return LogPublisher(FilteringLogObserver(sink.append, [*extra, LogLevelFilterPredicate(defaultLogLevel=level)]))


def test_observer_wants_reads_level_filters() -> None:
    """observer_wants: False only when every path certainly drops the event."""
    sink: List[Any] = []
    ns = "txsmtpsrv._protocol.SMTPServerProtocol"
    warn_only = filtered(LogLevel.warn, sink)
    assert not observer_wants(warn_only, LogLevel.info, ns)
    assert observer_wants(warn_only, LogLevel.warn, ns)
    assert observer_wants(warn_only, LogLevel.error, ns)
    # A namespace let through at info.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    predicate.setLogLevelForNamespace("txsmtpsrv", LogLevel.info)
    assert observer_wants(LogPublisher(FilteringLogObserver(sink.append, [predicate])), LogLevel.info, ns)
    assert not observer_wants(LogPublisher(FilteringLogObserver(sink.append, [predicate])), LogLevel.debug, ns)
    # Anything not recognised counts as wanting: a plain observer, another predicate, a negative observer.
    assert observer_wants(LogPublisher(sink.append), LogLevel.debug, ns)
    assert observer_wants(LogPublisher(warn_only, sink.append), LogLevel.info, ns)
    assert observer_wants(filtered(LogLevel.warn, sink, lambda event: PredicateResult.yes), LogLevel.info, ns)
    assert observer_wants(FilteringLogObserver(sink.append, [LogLevelFilterPredicate(LogLevel.warn)],
                                               negativeObserver=sink.append), LogLevel.info, ns)
    # Nested filters: the inner one decides too.
    nested = LogPublisher(FilteringLogObserver(filtered(LogLevel.error, sink), [LogLevelFilterPredicate(LogLevel.info)]))
    assert not observer_wants(nested, LogLevel.warn, ns)
    assert observer_wants(nested, LogLevel.error, ns)
    assert not observer_wants(LogPublisher(), LogLevel.critical, ns)  # nobody listens at all
    assert sink == []  # asking emits nothing


@pytest.mark.parametrize("level", [LogLevel.info, LogLevel.warn])
def test_connection_lines_only_built_when_wanted(monkeypatch: pytest.MonkeyPatch, level: LogLevel) -> None:
    """With info filtered out no per-connection info event is even emitted; with info wanted both lines come."""
    sink: List[Any] = []
    publisher = filtered(level, sink)
    monkeypatch.setattr(SMTPServerProtocol, "log", SessionLogger("txsmtpsrv._protocol", observer=publisher))
    monkeypatch.setattr(SessionLog, "log", SessionLogger("txsmtpsrv._oplog", observer=publisher))
    emitted: List[Any] = []
    original = SessionLogger.emit

    def counting(self: SessionLogger, lvl: LogLevel, format: Any = None, **kwargs: Any) -> None:
        emitted.append((lvl, format))
        original(self, lvl, format, **kwargs)

    monkeypatch.setattr(SessionLogger, "emit", counting)
    server, _ = make_server()
    client = TestClient(server)
    client.ehlo()
    assert client.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")[-1].code == 250
    client.command("QUIT")
    client.disconnect()
    formats = [e["log_format"] for e in sink]
    if level == LogLevel.info:
        assert any(f.startswith("connection from") for f in formats)
        assert any(f.startswith("connection closed:") for f in formats)
        closed = next(e for e in sink if e["log_format"].startswith("connection closed:"))
        assert (closed["client"], closed["accepted"], closed["session_id"]) == ("192.0.2.10", 1, client.session.id)
    else:
        assert emitted == [] and sink == []


# -- e. no ipaddress round-trip for a plain IPv4 peer -------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4), st.text("0123456789.x:", max_size=16))
def test_plain_ipv4_is_exactly_the_canonical_spelling(addr: ipaddress.IPv4Address, text: str) -> None:
    """plain_ipv4 holds for what str(IPv4Address) makes, and only when that text is its own canonical form."""
    assert plain_ipv4(str(addr))
    if plain_ipv4(text):
        assert str(ipaddress.IPv4Address(text)) == text
    for odd in (f"0{addr}", f"{addr}.", f" {addr}", f"::ffff:{addr}"):
        assert not plain_ipv4(odd)


@pytest.mark.parametrize("peer,name,lookups", [
    ("192.0.2.10", "[192.0.2.10]", 1),
    ("127.0.0.5", "localhost", 0),  # loopback: no PTR query
    ("::ffff:192.0.2.10", "[192.0.2.10]", 1),  # dual stack: shown as IPv4, the slow way
    ("2001:db8::1", "[IPv6:2001:db8::1]", 1),
    ("::1", "localhost", 0),
])
def test_peer_names_with_and_without_parsing(monkeypatch: pytest.MonkeyPatch, peer: str, name: str,
                                             lookups: int) -> None:
    """A plain IPv4 peer is never parsed (no network list to check); every peer gets the same name as before."""
    parsed: List[str] = []
    original = _cmd_session.parse_ip

    def spy(text: str) -> Any:
        parsed.append(text)
        return original(text)

    monkeypatch.setattr(_cmd_session, "parse_ip", spy)
    asked: List[str] = []

    class Resolver(FakeResolver):
        def lookupPointer(self, name: Any, timeout: Any = None) -> Any:
            asked.append(name)
            return super().lookupPointer(name, timeout)

    server, _ = make_server(resolver=Resolver())
    client = TestClient(server, peer=(peer, 4000))
    assert client.session.client_hostname == name
    assert len(asked) == lookups
    assert parsed == ([] if plain_ipv4(peer) else [peer])


def test_plain_ipv4_peer_still_checked_against_network_lists() -> None:
    """With ignored_hosts or xclient_trusted set, a plain IPv4 peer is parsed and matched."""
    server, _ = make_server(ignored_hosts=["192.0.2.0/24"], use_xclient=True, xclient_trusted=["192.0.2.10/32"])
    with capturedLogs() as events:
        client = TestClient(server, peer=("192.0.2.10", 4000))
        client.ehlo()
    assert client.protocol.core.quiet and client.protocol.core._trusted
    assert not [e for e in events if e.get("log_format", "").startswith("connection from")]
    other = TestClient(server, peer=("198.51.100.1", 4000))
    assert not other.protocol.core.quiet and not other.protocol.core._trusted


# -- f. no per-connection objects until they are needed -------------------------------------


def test_idle_connection_holds_no_lazy_objects() -> None:
    """Past EHLO and idle: no action deque, no hook tables, no junk counter, shared XCLIENT/XFORWARD maps."""
    server, _ = make_server()
    client = TestClient(server)
    client.ehlo()
    core, proto, s = client.protocol.core, client.protocol, client.session
    assert type(core.actions) is ActionQueue and core.actions == []
    assert core._waiting is None and core._junk_counter is None
    assert proto._pending is None and proto._timing is None
    # No XCLIENT/XFORWARD/TLS/PROXY record, recipients' list or reply list until needed (issue 13, idle memory).
    assert s._extra is None and s.envelope._rcpt is None and core.out is None
    assert isinstance(server.session_log._sessions[s.id], float)  # a start time, not a tally yet
    other = TestClient(server)
    if compiled():  # mypyc keeps a float attribute unboxed in the object: no float object per connection at all
        assert type(core).__dictoffset__ == 0 and other.protocol.core._per_byte == core._per_byte
    else:
        assert other.protocol.core._per_byte is core._per_byte  # one float per server
    # Each appears when needed and then works as before.
    assert client.command("NOOP").code == 250
    assert core._junk_counter is not None and core._junk_counter.count == 1
    assert s.xclient == {} and s.xforward == {}  # plain dicts, as in 0.1.0, made on first use
    s.xclient["NAME"] = "x"
    assert s.xclient == {"NAME": "x"} and json.dumps(s.xforward) == "{}"
    assert s.tls is None and s.proxy is None and s.envelope.rcpt_to == []
    s.envelope.rcpt_to.append("r")  # a list like any other once asked for
    assert s.envelope.rcpt_to == ["r"]


def test_action_queue_is_first_in_first_out() -> None:
    """The list that replaced the deque keeps its order and its popleft."""
    queue = ActionQueue()
    queue.append((1,))
    queue.append((2,))
    assert queue.popleft() == (1,) and queue == [(2,)]


def test_session_summary_counts_from_a_start_time() -> None:
    """The operator's summary line still counts refusals and deliveries when the tally is made lazily."""
    class H:
        def on_rcpt_to(self, session, address):
            if address.address.startswith("no"):
                raise SMTPError(550, "no such user", "5.1.1")

    server, _ = make_server(H())
    with capturedLogs() as events:
        client = TestClient(server)
        client.ehlo()
        client.sendmail("a@x.test", ["yes@y.test"], b"Subject: 1\r\n\r\nbody\r\n")
        client.command("MAIL FROM:<a@x.test>")
        assert client.command("RCPT TO:<no@y.test>").code == 550
        client.disconnect()
    closed = [e for e in events if e.get("log_format", "").startswith("connection closed:")]
    assert [(e["accepted"], e["refused"]) for e in closed] == [(1, 0)]
    assert [e["verb"] for e in events if e.get("log_format", "").startswith("refused {verb}")] == ["RCPT"]


def test_operator_log_observes_refusals_only() -> None:
    """The session log is not called for accepted replies: by default nothing observes every reply."""
    server, _ = make_server()
    assert server._observers["reply"] == []
    assert len(server._observers[REFUSAL_REPLY]) == 1
    with pytest.raises(ValueError):
        server.observe(REFUSAL_REPLY, lambda *a: None)  # ours, not offered
    seen: List[Any] = []
    server._observe(REFUSAL_REPLY, lambda session, verb, code, enhanced, text: seen.append((verb, code)))
    client = TestClient(server)
    client.ehlo()
    with capturedLogs() as events:
        client.command("MAIL FROM:<a@x.test>")
        client.command("RCPT TO:<>")
        client.command("NOOP")
    assert seen == [("RCPT", 501)]
    assert [e["reply"] for e in events if e.get("log_format", "").startswith("refused {verb}")] == [
        "501 5.1.3 Null recipient address <> is not allowed"]
    server.session_log.stop()
    assert len(server._observers[REFUSAL_REPLY]) == 1  # only the one of this test
