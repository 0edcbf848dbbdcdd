# -*- test-case-name: tests.test_greeting_refused -*-
"""
A refused greeting waits for QUIT (RFC 5321 3.1): after a 554 (any 5xx but
521) said instead of the 220, every command but QUIT gets C{503 5.5.1} and
QUIT gets 221; 421 and 521 (RFC 7504) close at once. In memory (the
dialogue, then the protocol on a fake clock) and over loopback with smtplib.
"""

from __future__ import annotations

import itertools
import smtplib
import socket
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import Reply, SMTPError, SMTPServer
from txsmtpsrv._dialogue import ASK, BODY_START, START_TLS
from txsmtpsrv._phases import Phase
from txsmtpsrv._sniff import looks_like_tls
from txsmtpsrv.testing import FakeResolver, TestClient, make_server

from tests.test_dialogue import FRAGMENTS, Harness

HOOKS = ("on_helo", "on_mail_from", "on_rcpt_to", "on_data", "on_auth", "on_secure", "on_connect")


class Refuser:
    """on_connect refuses with C{answer}; every hook records that it ran."""

    def __init__(self, answer: Any = SMTPError(554, "go away", "5.7.1")) -> None:
        self.answer = answer
        self.calls: List[str] = []

    def on_connect(self, session: Any) -> Any:
        self.calls.append("on_connect")
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def __getattr__(self, name: str) -> Any:
        if name not in HOOKS:
            raise AttributeError(name)

        def hook(*args: Any) -> None:
            self.calls.append(name)
        return hook


def refused(hooks: Any = None, **options: Any) -> Tuple[Any, Any, TestClient, List[str]]:
    """A client refused at the greeting; its 5xx read. Returns server, clock, client, "refused" reasons."""
    hooks = Refuser() if hooks is None else hooks
    options.setdefault("auth_methods", ("PLAIN",))
    options.setdefault("allow_insecure_auth", True)
    tls = options.pop("_tls", "starttls")
    server, clock = make_server(hooks, **options)
    reasons: List[str] = []
    server.observe("refused", lambda reason, address, session: reasons.append(reason))
    client = TestClient(server, greeting=False, tls=tls)
    assert [r.code for r in client.replies()] == [hooks.answer.code]
    return server, clock, client, reasons


COMMANDS = ["EHLO c.test", "HELO c.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA", "BDAT 5 LAST",
            "STARTTLS", "AUTH PLAIN AGFsaWNlAHB3", "NOOP", "RSET", "VRFY a", "EXPN a", "HELP", "XCLIENT ADDR=192.0.2.9",
            "XFORWARD ADDR=192.0.2.9"]


@pytest.mark.parametrize("line", COMMANDS)
def test_every_command_but_quit_gets_503(line: str) -> None:
    hooks = Refuser()
    _, _, client, reasons = refused(hooks)
    reply = client.command(line)
    assert (reply.code, reply.enhanced, reply.lines) == (503, "5.5.1", ("Error: connection refused, send QUIT",))
    assert not client.closed
    assert client.command("QUIT").code == 221 and client.closed
    assert hooks.calls == ["on_connect"] and reasons == ["connect_hook"]


def test_one_session_all_commands_then_quit() -> None:
    """No 354, no 334, no 220 for STARTTLS, no body: only 503s, in order, then 221."""
    _, _, client, _ = refused(max_unrecognized_commands=len(COMMANDS) + 1)
    for line in COMMANDS:
        assert client.command(line).code == 503, line
    assert client.command("QUIT").code == 221 and client.closed


def test_pipelined_in_one_write_each_answered_quit_ends_it() -> None:
    """A BDAT chunk is not read as a body: its bytes are lines (here a QUIT)."""
    _, _, client, _ = refused()
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nBDAT 6 LAST\r\n"
                b"QUIT\r\nNOOP\r\n")
    assert [r.code for r in client.replies()] == [503, 503, 503, 503, 503, 221]
    assert client.closed


def test_commands_sent_before_a_slow_refusal_get_503_after_it() -> None:
    gate: Deferred[None] = Deferred()

    class Slow:
        def on_connect(self, session: Any) -> Any:
            return gate

    server, _ = make_server(Slow())
    client = TestClient(server, greeting=False)
    client.send(b"EHLO c.test\r\nNOOP\r\nQUIT\r\n")
    assert client.read() == b""
    gate.errback(SMTPError(554, "no"))
    assert [r.code for r in client.replies()] == [554, 503, 503, 221]
    assert client.closed


def test_idle_timeout_closes_the_waiting_connection() -> None:
    """socket_timeout, counted from the last command; the refusal is counted once (not again as a timeout)."""
    _, clock, client, reasons = refused(socket_timeout=30)
    clock.advance(20)
    assert client.command("NOOP").code == 503
    clock.advance(29.9)
    assert not client.closed
    clock.advance(0.1)
    assert [(r.code, r.enhanced) for r in client.replies()] == [(421, "4.4.2")]
    assert client.closed
    assert reasons == ["connect_hook"]


def test_bad_commands_limit_closes_the_waiting_connection() -> None:
    """Each 503 counts toward max_unrecognized_commands, as unknown and over-long lines do."""
    _, _, client, reasons = refused(max_unrecognized_commands=4)
    client.send(b"NOOP\r\nFOO\r\n" + b"X" * 600 + b"\r\nRSET\r\nQUIT\r\n")
    assert [r.code for r in client.replies()] == [503, 500, 500, 503, 421]
    assert client.closed
    assert reasons == ["connect_hook"]


@pytest.mark.parametrize("answer", [SMTPError(421, "busy"), SMTPError(521, "no mail here", "5.7.0"),
                                    Reply(521, "no mail here"), SMTPError(450, "later")])
def test_421_521_and_other_4xx_close_at_once(answer: Any) -> None:
    server, _ = make_server(Refuser(answer))
    client = TestClient(server, greeting=False)
    assert [r.code for r in client.replies()] == [answer.code]
    assert client.closed


def test_other_5xx_waits_too() -> None:
    _, _, client, _ = refused(Refuser(Reply(550, "not you")))
    assert client.command("MAIL FROM:<a@x.test>").code == 503
    assert client.command("QUIT").code == 221 and client.closed


def test_hook_failure_greets_421_and_closes() -> None:
    server, _ = make_server(Refuser(RuntimeError("bug")))
    client = TestClient(server, greeting=False)
    assert [r.code for r in client.replies()] == [421] and client.closed


def test_disabled_and_non_utf8_commands_get_503_quit_always_runs() -> None:
    _, _, client, _ = refused(disabled_commands=("NOOP", "QUIT"), max_unrecognized_commands=3)
    assert [r.code for r in (client.command("NOOP"), client.command(b"RSET \xff"))] == [503, 503]
    assert client.command("QUIT").code == 221 and client.closed


def test_auth_required_still_503_not_530() -> None:
    """With authentication required, MAIL gets 503 too: no AUTH could help."""
    _, _, client, _ = refused(auth_optional=False)
    assert client.command("MAIL FROM:<a@x.test>").code == 503
    assert client.command("AUTH PLAIN AGFsaWNlAHB3").code == 503


def test_lmtp_lhlo_gets_503() -> None:
    _, _, client, _ = refused(lmtp=True)
    reply = client.command("LHLO c.test")
    assert (reply.code, reply.enhanced) == (503, "5.5.1")
    assert client.command("QUIT").code == 221 and client.closed


def test_implicit_tls_no_on_secure_then_quit() -> None:
    """The handshake that completes after the 554 does not run on_secure."""
    hooks = Refuser()
    _, _, client, _ = refused(hooks, secure=True, _tls="implicit")
    assert client.command("NOOP").code == 503
    assert client.command("QUIT").code == 221 and client.closed
    assert hooks.calls == ["on_connect"]


def test_server_close_says_421() -> None:
    server, _, client, _ = refused()
    server.close()
    assert [(r.code, r.enhanced) for r in client.replies()] == [(421, "4.3.2")]
    assert client.closed


def test_early_talker_waits_for_quit() -> None:
    """greeting_delay: the 554 5.7.1 at once; what the client sent gets 503; on_connect never runs."""
    hooks = Refuser(None)
    server, clock = make_server(hooks, greeting_delay=0.5)
    reasons: List[str] = []
    server.observe("refused", lambda reason, address, session: reasons.append(reason))
    client = TestClient(server, greeting=False)
    clock.advance(0.2)
    client.send(b"EHLO spam\r\nMAIL FROM:<a@x.test>\r\n")
    assert [(r.code, r.enhanced) for r in client.replies()] == [(554, "5.7.1"), (503, "5.5.1"), (503, "5.5.1")]
    clock.advance(1)  # the delay is over: no greeting, no on_connect
    assert client.replies() == [] and not client.closed
    assert client.command("QUIT").code == 221 and client.closed
    assert hooks.calls == [] and reasons == ["early_talker"]


def test_early_talker_during_lookup_times_out() -> None:
    server, clock = make_server(greeting_delay=0.1, resolver=FakeResolver(hang=True), socket_timeout=10)
    client = TestClient(server, ("203.0.113.5", 1), greeting=False)
    client.send(b"EHLO x\r\n")
    assert [r.code for r in client.replies()] == [554, 503]
    clock.advance(10)
    assert [r.code for r in client.replies()] == [421] and client.closed


def test_xclient_refused_client_waits_for_quit() -> None:
    """XCLIENT runs on_connect again: its 554 answers XCLIENT, in place of the new 220."""

    class Policy:
        def on_connect(self, session: Any) -> None:
            if session.remote_address == "198.51.100.7":
                raise SMTPError(554, "not you")

    server, _ = make_server(Policy(), use_xclient=True, xclient_trusted=("192.0.2.0/24",))
    client = TestClient(server)
    assert client.command("XCLIENT ADDR=198.51.100.7").code == 554
    assert client.command("EHLO c.test").code == 503
    assert client.command("QUIT").code == 221 and client.closed


# -- the dialogue alone: random input after a refused greeting -----------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=12), max_size=30),
       st.lists(st.integers(1, 40), min_size=1, max_size=30))
@example([b"\x16\x03\x01hello\r\n"], [40])  # a TLS ClientHello's first bytes: closed, no reply
def test_refused_dialogue_only_refuses(pieces: List[bytes], sizes: List[int]) -> None:
    """
    Whatever comes, in any chunking: only 503 and 500, then 221 or 421 (or,
    for a TLS ClientHello, the close without a reply); nothing asked, no body, no TLS.
    """
    h = Harness({"on_connect": SMTPError(554, "no", "5.7.1"), "on_auth": True, "on_data": None},
                use_xclient=True, xclient_trusted=("192.0.2.0/24",), max_command_length=512)
    assert h.codes() == [554] and h.phase is Phase.REFUSED
    stream = b"".join(p.replace(b"{n}", b"1") for p in pieces)
    asked: List[Any] = []
    pos = 0
    for i in itertools.count():
        if pos >= len(stream) or h.core.finished:
            break
        size = sizes[i % len(sizes)]
        h.core.receive(stream[pos:pos + size])
        asked += [a for a in h.core.actions if a[0] in (ASK, BODY_START, START_TLS)]
        h.run()
        pos += size
    codes = h.codes()
    assert asked == []
    assert set(codes[:-1]) <= {500, 503}
    if h.core.finished and not codes:
        assert looks_like_tls(stream[:3]) and h.closed
    elif h.core.finished:
        assert codes[-1] in (221, 421)
    else:
        assert set(codes) <= {500, 503} and h.phase is Phase.REFUSED


# -- loopback: smtplib, then a raw socket -------------------------------------------------------------


def _raw_session(port: int) -> Dict[str, bytes]:
    """Read the 554, see the connection stay open, NOOP, QUIT, EOF; every read has a timeout."""
    out: Dict[str, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        out["greeting"] = s.recv(4096)
        s.settimeout(0.5)
        try:
            out["idle"] = s.recv(4096)  # b"" would be EOF: the server closed
        except socket.timeout:
            out["idle"] = b"(still open)"
        s.settimeout(10)
        s.sendall(b"NOOP\r\n")
        out["noop"] = s.recv(4096)
        s.sendall(b"QUIT\r\n")
        out["quit"] = s.recv(4096)
        out["eof"] = s.recv(4096)
    return out


class RefusedLoopback(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_smtplib_then_raw_socket(self) -> Any:
        server = SMTPServer(Refuser(), name="mx.test", disable_reverse_lookup=True, socket_timeout=20)
        port = (yield server.listen("tcp:0:interface=127.0.0.1")).getHost().port
        self.addCleanup(server.close)

        def with_smtplib() -> Tuple[int, bytes]:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=10)
            except smtplib.SMTPConnectError as e:
                return e.smtp_code, e.smtp_error
            raise AssertionError("connected")

        code, text = yield deferToThread(with_smtplib)
        self.assertEqual((code, text), (554, b"5.7.1 go away"))
        out = yield deferToThread(_raw_session, port)
        self.assertEqual(out, {"greeting": b"554 5.7.1 go away\r\n", "idle": b"(still open)",
                               "noop": b"503 5.5.1 Error: connection refused, send QUIT\r\n",
                               "quit": b"221 2.0.0 Bye\r\n", "eof": b""})
