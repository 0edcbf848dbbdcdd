"""
The per-message and per-connection work cut by branch perf14 (issue 13 part 2),
pinned so that the behaviour it touched stays what it was:

- the command reader lets a read go with its last line, so "nothing
  buffered" is an empty buffer (the dialogue's loop tests that instead of
  calling the reader);
- the data hook's C{collect} Deferred is still fired for whoever keeps it,
  and only then;
- the operator's log observes "message" only while it follows a session,
  and still counts every accepted message of the sessions it follows;
- L{Address}'s own C{__init__} is the dataclass's;
- C{observer_wants}'s inline level lookup answers what Twisted's filter does;
- the HELO/EHLO first line, cached, is what C{helo_response} makes of each client;
- an observer returning None or a Deferred, and the default answers of
  MAIL/RCPT/DATA against hook answers.
"""

from __future__ import annotations

import dataclasses
import gc
import pickle
import weakref
from typing import Any, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.logger import FilteringLogObserver, capturedLogs, LogLevel, LogLevelFilterPredicate, LogPublisher, PredicateResult

from txsmtpsrv import Address, Reply, SMTPError
from txsmtpsrv._cmd_session import _hello_line
from txsmtpsrv._logging import SessionLogger, observer_wants
from txsmtpsrv._oplog import SessionLog
from txsmtpsrv._protocol import SMTPServerProtocol
from txsmtpsrv._reader import TOO_LONG, CommandReader
from txsmtpsrv.testing import TestClient, make_server

# -- the reader: "nothing buffered" is an empty buffer ------------------------------------------


def _check_invariant(reader: CommandReader) -> None:
    assert (reader._buf == b"") == (reader.pending == 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("feed"), st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"x", b"\r\n"))),
    st.tuples(st.just("line"), st.just(b"")),
    st.tuples(st.just("take"), st.integers(-1, 30)),
    st.tuples(st.just("push_back"), st.binary(max_size=10)),
), max_size=40))
def test_reader_buffer_is_empty_exactly_when_nothing_is_pending(ops: List[Tuple[str, Any]]) -> None:
    """After every operation, _buf is b"" if and only if no byte is pending, and no byte is lost."""
    reader = CommandReader(16)
    for op, arg in ops:
        if op == "feed":
            reader.feed(arg)
        elif op == "line":
            reader.line()
        elif op == "take":
            reader.take(arg)
        else:
            reader.push_back(arg)
        _check_invariant(reader)


def test_reader_lets_the_read_go_with_its_last_line() -> None:
    reader = CommandReader(32)
    reader.feed(b"MAIL FROM:<a@b.test>\r\n")
    assert reader.line() == b"MAIL FROM:<a@b.test>"
    assert reader._buf == b"" and reader.idle  # an idle connection keeps no copy of its last read
    reader.feed(b"NOOP\r\nRSET\r\n")
    assert reader.line() == b"NOOP" and reader.pending == 6
    assert reader.line() == b"RSET" and reader._buf == b""
    reader.feed(b"body bytes")
    assert reader.take(4) == b"body" and reader.pending == 6
    assert reader.take() == b" bytes" and reader._buf == b""
    reader.feed(b"X" * 40 + b"\r\nNOOP\r\n")
    assert reader.line() is TOO_LONG
    assert reader.line() == b"NOOP" and reader._buf == b""


def test_pipelined_commands_and_body_in_one_read() -> None:
    """The reading loop goes on until the buffer is empty: a whole transaction in one read is answered in full."""
    server, _ = make_server()
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nline\r\n.\r\nNOOP\r\nNOOP\r\n")
    assert client.codes() == [(250, "2.1.0"), (250, "2.1.5"), (354, None), (250, "2.0.0"), (250, "2.0.0"),
                              (250, "2.0.0")]


# -- the collect Deferred is fired for whoever keeps it, and only then --------------------------------


class _Sink:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.kept: List[Deferred[None]] = []
        self.returned: List[int] = []

    def on_data(self, session: Any, stream: Any) -> Any:
        d = stream.collect(lambda chunk: None)
        self.returned.append(id(d))
        if self.keep:
            self.kept.append(d)
        return d


def send_to_sink(monkeypatch: pytest.MonkeyPatch, keep: bool, messages: int) -> Tuple[_Sink, List[int]]:
    """Send C{messages} messages to a L{_Sink}; return it and the ids of every Deferred fired meanwhile."""
    fired: List[int] = []
    original = Deferred.callback

    def spy(self: Deferred[Any], result: Any) -> None:
        fired.append(id(self))
        original(self, result)

    monkeypatch.setattr(Deferred, "callback", spy)
    hooks = _Sink(keep)
    server, _ = make_server(hooks)
    client = TestClient(server)
    client.ehlo()
    for _ in range(messages):
        assert client.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")[-1].code == 250
    return hooks, fired


@pytest.mark.parametrize("keep", [True, False])
def test_collect_deferred_fired_only_for_whoever_keeps_it(monkeypatch: pytest.MonkeyPatch, keep: bool) -> None:
    hooks, fired = send_to_sink(monkeypatch, keep, 3)
    if keep:
        assert [d.called for d in hooks.kept] == [True] * 3
        results: List[Any] = []
        hooks.kept[0].addBoth(results.append)
        assert results == [None]  # what is left of it once the connection consumed the answer
        assert set(hooks.returned) <= set(fired)
    else:
        # Nobody holds it: left unfired (and freed); the connection got its answer all the same.
        assert not set(hooks.returned) & set(fired)


def test_collect_deferred_kept_and_cancelled_by_timeout_still_fires() -> None:
    """A kept Deferred of a data hook timed out: the client gets 451 and the Deferred fires (with None)."""
    hooks = _Sink(True)
    server, clock = make_server(hooks, hook_timeout=5, socket_timeout=300)
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\npartial\r\n")
    client.replies()
    clock.advance(5)
    assert hooks.kept[0].called
    client.send(b".\r\n")
    assert client.codes() == [(451, "4.3.0")]


# -- the operator's log: "message" observed only while a session is followed ------------------


@pytest.mark.parametrize("level", [LogLevel.info, LogLevel.warn])
def test_session_log_observes_messages_only_while_following(monkeypatch: pytest.MonkeyPatch,
                                                           level: LogLevel) -> None:
    sink: List[Any] = []
    publisher = LogPublisher(FilteringLogObserver(sink.append, [LogLevelFilterPredicate(defaultLogLevel=level)]))
    monkeypatch.setattr(SMTPServerProtocol, "log", SessionLogger("txsmtpsrv._protocol", observer=publisher))
    monkeypatch.setattr(SessionLog, "log", SessionLogger("txsmtpsrv._oplog", observer=publisher))
    server, _ = make_server()
    log = server.session_log
    assert log._message not in server._observers["message"]  # nobody followed yet
    first, second = TestClient(server), TestClient(server, ("192.0.2.20", 4000))
    following = level == LogLevel.info
    assert (log._message in server._observers["message"]) == following
    first.ehlo()
    second.ehlo()
    for client, count in ((first, 2), (second, 1)):
        for _ in range(count):
            assert client.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")[-1].code == 250
    first.command("QUIT")
    first.disconnect()
    assert (log._message in server._observers["message"]) == following  # the second is still followed
    assert second.sendmail("a@x.test", ["b@y.test"], b"Subject: y\r\n\r\nbody\r\n")[-1].code == 250
    second.command("QUIT")
    second.disconnect()
    assert log._message not in server._observers["message"]
    summaries = [e for e in sink if e.get("log_format", "").startswith("connection closed:")]
    if following:
        assert sorted((e["client"], e["accepted"]) for e in summaries) == [("192.0.2.10", 2), ("192.0.2.20", 2)]
    else:
        assert summaries == []
    # stop() removes it too, while a session is followed.
    third = TestClient(server)
    assert (log._message in server._observers["message"]) == following
    log.stop()
    assert log._message not in server._observers["message"]
    third.ehlo()
    assert third.sendmail("a@x.test", ["b@y.test"], b"Subject: z\r\n\r\nbody\r\n")[-1].code == 250
    third.disconnect()


def test_user_message_observer_unaffected() -> None:
    """A program's own "message" observer sees every message, whatever the session log does."""
    server, _ = make_server()
    seen: List[int] = []
    server.observe("message", lambda session, envelope, size: seen.append(size))
    client = TestClient(server)
    client.ehlo()
    for _ in range(2):
        assert client.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")[-1].code == 250
    assert len(seen) == 2


def test_observer_results() -> None:
    """An observer returning None costs nothing more; one returning a failing Deferred is logged, not raised."""
    server, _ = make_server()
    failures: List[Any] = []
    server.observe("connect", lambda session: None)
    server.observe("connect", lambda session: fail(RuntimeError("observer broke")))
    server._observer_failed = lambda failure, event: failures.append((failure.value, event))  # type: ignore
    client = TestClient(server)
    assert client.ehlo().code == 250
    assert [(str(v), e) for v, e in failures] == [("observer broke", "connect")]


# -- Address: its own __init__ is the dataclass's -----------------------------------------------


def test_address_init_is_the_dataclasses() -> None:
    a = Address("a@b.test")
    assert a.params == {} and a.notify is None and a.orcpt is None and a.submitter is None
    assert Address("x@y.test").params is not Address("x@y.test").params  # a fresh dict each time
    b = Address("a@b.test", {"SIZE": "10"}, ("NEVER",), ("rfc822", "o@p.test"))
    assert b == Address(address="a@b.test", params={"SIZE": "10"}, notify=("NEVER",), orcpt=("rfc822", "o@p.test"))
    assert hash(a) == hash(Address("a@b.test", {"BODY": "8BITMIME"}))  # params are not hashed
    assert repr(a) == "Address(address='a@b.test', params={}, notify=None, orcpt=None, submitter=None)"
    assert Address("a@b.test", submitter="<>") == Address(address="a@b.test", submitter="<>") != a
    assert dataclasses.replace(b, address="c@d.test").params == {"SIZE": "10"}
    assert dataclasses.asdict(b)["orcpt"] == ("rfc822", "o@p.test")
    assert pickle.loads(pickle.dumps(b)) == b
    assert [f.name for f in dataclasses.fields(Address)] == ["address", "params", "notify", "orcpt", "submitter"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.address = "x"  # type: ignore[misc]
    assert (str(b), b.local_part, b.domain) == ("a@b.test", "a", "b.test")


# -- observer_wants: the inline level lookup is Twisted's filter ----------------------------------

LEVELS = list(LogLevel.iterconstants())
segment = st.sampled_from(["txsmtpsrv", "_protocol", "SMTPServerProtocol", "_oplog", "x"])
namespaces = st.lists(segment, min_size=1, max_size=3).map(".".join)


@settings(max_examples=300, deadline=None)
@given(predicates=st.lists(st.tuples(st.sampled_from(LEVELS),
                                     st.lists(st.tuples(namespaces, st.sampled_from(LEVELS)), max_size=4)),
                           min_size=1, max_size=3),
       level=st.sampled_from(LEVELS), namespace=namespaces)
def test_observer_wants_is_the_filters_verdict(predicates: List[Any], level: LogLevel, namespace: str) -> None:
    """observer_wants says False exactly when Twisted's level filters drop the event (and emits nothing)."""
    kept: List[Any] = []
    built = []
    for default, settings_ in predicates:
        predicate = LogLevelFilterPredicate(defaultLogLevel=default)
        for ns, lvl in settings_:
            predicate.setLogLevelForNamespace(ns, lvl)
        built.append(predicate)
    publisher = LogPublisher(FilteringLogObserver(kept.append, built))
    wants = observer_wants(publisher, level, namespace)
    assert kept == []
    publisher({"log_level": level, "log_namespace": namespace, "log_format": "x"})
    assert wants == bool(kept)


def test_observer_wants_other_predicates_still_count() -> None:
    kept: List[Any] = []
    yes = FilteringLogObserver(kept.append, [lambda event: PredicateResult.yes,
                                             LogLevelFilterPredicate(defaultLogLevel=LogLevel.error)])
    assert observer_wants(LogPublisher(yes), LogLevel.info, "txsmtpsrv._protocol.SMTPServerProtocol")


# -- the HELO/EHLO first line ---------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_hello_line_per_client(verb: str) -> None:
    """Each client gets its own name in the answer; the cached line is helo_response's."""
    server, _ = make_server(helo_response="{name} hi {client_hostname} {remote_address} {helo}")
    for peer, name in ((("192.0.2.10", 1000), "one.test"), (("192.0.2.11", 1001), "two.test"),
                       (("192.0.2.10", 1002), "one.test"), (("192.0.2.10", 1003), "three.test")):
        client = TestClient(server, peer)
        reply = client.command(f"{verb} {name}")
        assert reply.code == 250
        assert reply.lines[0] == f"{server.options.name} hi [{peer[0]}] {peer[0]} {name}"
    assert _hello_line.cache_info().maxsize == 256  # bounded, whatever clients call themselves


def test_hello_hook_reply_still_replaces_the_line() -> None:
    class Hooks:
        def on_helo(self, session: Any, name: str) -> Any:
            return Reply(250, "custom greeting")

    server, _ = make_server(Hooks())
    client = TestClient(server)
    assert list(client.command("HELO me.test").lines) == ["custom greeting"]
    ehlo = client.command("EHLO me.test")
    assert ehlo.lines[0] == "custom greeting" and len(ehlo.lines) > 1


# -- MAIL/RCPT/DATA: the default answer inline, hook answers as before ------------------------------


def test_hook_answers_still_count() -> None:
    class Hooks:
        def on_mail_from(self, session: Any, address: Address) -> Any:
            if address.address.startswith("bad"):
                raise SMTPError(550, "no such sender", "5.1.8")
            return Reply(250, "sender fine", "2.1.0")

        def on_rcpt_to(self, session: Any, address: Address) -> Any:
            return None if address.address.startswith("ok") else Reply(451, "later", "4.7.1")

        def on_data(self, session: Any, stream: Any) -> Any:
            return stream.collect(lambda chunk: None).addCallback(lambda _: Reply(250, "queued", "2.0.0"))

    server, _ = make_server(Hooks())
    client = TestClient(server)
    client.ehlo()
    assert client.command("MAIL FROM:<bad@x.test>").code == 550
    assert client.command("MAIL FROM:<good@x.test>").text == "sender fine"
    assert client.command("RCPT TO:<later@y.test>").code == 451
    assert client.command("RCPT TO:<ok@y.test>").code == 250
    assert client.session.envelope.rcpt_to == [Address("ok@y.test")]
    assert client.command("DATA").code == 354
    client.send(b"body\r\n.\r\n")
    assert [r.text for r in client.replies()] == ["queued"]


def test_reader_failing_after_the_dot_answers_once_and_done_never_fails() -> None:
    """
    A chunk callback's Deferred failing after the body ended: one 451, and
    the collect Deferred, answered directly and held by nobody, does not
    fail afterwards: it is either freed unfired (the collector lets go of it
    once the body is over) or fired with None, and nothing logs "Unhandled
    error in Deferred".
    """
    pending: List[Deferred[None]] = []
    dones: List["weakref.ref[Deferred[None]]"] = []

    class Slow:
        def on_data(self, session: Any, stream: Any) -> Any:
            def chunk(data: bytes) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d
            d = stream.collect(chunk)
            dones.append(weakref.ref(d))  # not a reference: the test must not hold it
            return d

    server, _ = make_server(Slow(), hook_timeout=50, socket_timeout=300)
    client = TestClient(server)
    client.ehlo()
    with capturedLogs() as events:
        client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nbody\r\n.\r\n")
        assert client.codes() == [(250, "2.1.0"), (250, "2.1.5"), (354, None)]
        pending[0].errback(RuntimeError("disk full"))
        assert client.codes() == [(451, "4.3.0")]
        assert client.command("NOOP").code == 250
        done = dones[0]()
        assert done is None or not done.called or done.result is None
        del done
        gc.collect()
    assert not [e for e in events if "Unhandled error" in str(e.get("log_format", ""))]


def test_collect_deferred_chained_to_later_and_let_go_still_runs_its_callbacks() -> None:
    """
    A callback chained to the collect Deferred after the hook returned it,
    by someone who then let go of the Deferred, still runs when the body
    ends: left unfired is only for a Deferred nobody holds and nothing
    was chained to.
    """
    ran: List[Any] = []
    later: List[Any] = []

    class Hook:
        def on_data(self, session: Any, stream: Any) -> Any:
            d = stream.collect(lambda chunk: None)
            later.append(d)
            return d

    server, _ = make_server(Hook(), socket_timeout=300)
    client = TestClient(server)
    client.ehlo()
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nbody\r\n")
    assert [c for c, _ in client.codes()] == [250, 250, 354]
    later.pop().addCallback(ran.append)  # chained after the connection took its direct answer, then let go
    client.send(b".\r\n")
    assert [c for c, _ in client.codes()] == [250]
    assert ran == [None]
