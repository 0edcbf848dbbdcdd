# -*- test-case-name: tests.test_lmtp -*-
"""
Tests for LMTP (RFC 2033) in L{txsmtpsrv._protocol}: LHLO, one reply per
accepted recipient after the message, the data hook answering per recipient;
and a table-driven walk over every reachable reply path checking its
RFC 3463 enhanced status code (RFC 2034).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv.testing import TestClient, dot_stuff, make_server
from tests._memory import codes


class Recorder:
    """Hooks that refuse C{nobody@...} at RCPT and answer the message with C{self.answer}."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer  # value returned, or exception raised, by on_data
        self.messages: List[Tuple[List[str], bytes, str]] = []

    def on_rcpt_to(self, session, address):
        if address.local_part == "nobody":
            raise SMTPError(550, "No such user here", "5.1.1")

    async def on_data(self, session, stream):
        body = await stream.content()
        self.messages.append(([r.address for r in session.envelope.rcpt_to], body,
                              session.transmission_type))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def lmtp_client(hooks: Any = None, **options: Any) -> TestClient:
    """An LMTP client that has sent LHLO."""
    server, _ = make_server(hooks, lmtp=True, **options)
    client = TestClient(server)
    assert client.command("LHLO client.test").code == 250
    return client


def transaction(client: TestClient, rcpts: List[str], body: bytes = b"Subject: t\r\n\r\nhi\r\n") -> List[Reply]:
    """Send MAIL, the RCPTs, DATA and the body pipelined in one write; return every reply."""
    lines = ["MAIL FROM:<s@example.test>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
    client.send("".join(line + "\r\n" for line in lines).encode("utf-8") + dot_stuff(body))
    return client.replies()



# -- LHLO and the greeting ----------------------------------------------------


def test_greeting_says_lmtp():
    """With lmtp=True the greeting names LMTP, not ESMTP."""
    server, _ = make_server(lmtp=True)
    greeting = TestClient(server).greeting
    assert greeting is not None and greeting.code == 220
    assert greeting.text == "mx.test LMTP"


def test_smtp_greeting_says_esmtp():
    """Without lmtp the greeting names ESMTP (the contrast to LMTP)."""
    server, _ = make_server()
    assert TestClient(server).greeting.text == "mx.test ESMTP"


def test_lhlo_works():
    """LHLO gets a multi-line 250 with extensions and opens the session as LHLO."""
    server, _ = make_server(lmtp=True)
    client = TestClient(server)
    reply = client.command("LHLO client.test")
    assert reply.code == 250 and reply.enhanced is None
    assert reply.lines[0] == "mx.test Nice to meet you, [192.0.2.10]"
    assert "8BITMIME" in reply.lines
    session = client.protocol.session
    assert (session.opening_command, session.host_name_appears_as) == ("LHLO", "client.test")


def test_lhlo_lower_case():
    """The verb is case-insensitive: lhlo works."""
    server, _ = make_server(lmtp=True)
    assert TestClient(server).command("lhlo client.test").code == 250


def test_lhlo_needs_hostname():
    """LHLO without a host name is a syntax error."""
    server, _ = make_server(lmtp=True)
    assert codes([TestClient(server).command("LHLO")]) == [(501, "5.5.4")]


@pytest.mark.parametrize("verb", ["HELO", "EHLO", "ehlo"])
def test_helo_and_ehlo_refused_in_lmtp(verb):
    """An LMTP server answers HELO and EHLO with 500 5.5.1 and opens no session."""
    server, _ = make_server(lmtp=True)
    client = TestClient(server)
    reply = client.command(f"{verb} client.test")
    assert (reply.code, reply.enhanced) == (500, "5.5.1")
    assert "LHLO" in reply.text
    assert client.protocol.session.opening_command == ""
    assert client.command("MAIL FROM:<a@x.test>").code == 503  # still no LHLO


def test_lhlo_refused_in_smtp():
    """An SMTP server does not know LHLO: 500 5.5.2."""
    server, _ = make_server()
    client = TestClient(server)
    assert codes([client.command("LHLO client.test")]) == [(500, "5.5.2")]
    assert client.protocol.session.opening_command == ""
    assert client.command("EHLO client.test").code == 250


def test_pipelining_and_enhancedstatuscodes_always_advertised():
    """RFC 2033: PIPELINING and ENHANCEDSTATUSCODES are offered even when told to hide them."""
    server, _ = make_server(lmtp=True, hide_pipelining=True, hide_enhancedstatuscodes=True)
    client = TestClient(server)
    lines = client.command("LHLO client.test").lines
    assert "PIPELINING" in lines
    assert "ENHANCEDSTATUSCODES" in lines
    assert codes([client.command("NOOP")]) == [(250, "2.0.0")]  # and the codes are used


def test_smtp_honours_hidden_pipelining_and_codes():
    """In SMTP mode the same options do hide both (so the LMTP override is what differs)."""
    server, _ = make_server(hide_pipelining=True, hide_enhancedstatuscodes=True)
    client = TestClient(server)
    lines = client.command("EHLO client.test").lines
    assert "PIPELINING" not in lines and "ENHANCEDSTATUSCODES" not in lines
    assert client.read() == b""
    client.send(b"NOOP\r\n")
    assert client.read() == b"250 OK\r\n"


def test_transmission_type_is_lmtp():
    """The hook sees transmission_type LMTP (RFC 3848)."""
    hooks = Recorder()
    client = lmtp_client(hooks)
    transaction(client, ["a@example.test"])
    assert hooks.messages[0][2] == "LMTP"


def test_transmission_type_utf8lmtp():
    """With SMTPUTF8 it is UTF8LMTP (RFC 6531 4.3), not LMTP."""
    hooks = Recorder()
    client = lmtp_client(hooks)
    client.send(b"MAIL FROM:<s@example.test> SMTPUTF8\r\nRCPT TO:<\xc3\xa9@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert codes(client.replies())[-1] == (250, "2.0.0")
    assert hooks.messages[0][2] == "UTF8LMTP"


# -- one reply per recipient ----------------------------------------------------


def test_one_reply_per_accepted_recipient_in_rcpt_order():
    """After the dot: one 250 per accepted recipient, in RCPT order; refused ones get none."""
    hooks = Recorder()
    client = lmtp_client(hooks)
    replies = transaction(client, ["a@example.test", "nobody@example.test", "b@example.test", "c@example.test"])
    assert codes(replies[:6]) == [(250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"),
                                  (250, "2.1.5"), (354, None)]
    final = replies[6:]
    assert codes(final) == [(250, "2.0.0")] * 3
    assert [r.text for r in final] == ["OK: message accepted for <a@example.test>",
                                       "OK: message accepted for <b@example.test>",
                                       "OK: message accepted for <c@example.test>"]
    assert hooks.messages[0][0] == ["a@example.test", "b@example.test", "c@example.test"]


def test_same_recipient_twice_gets_two_replies():
    """A recipient given twice was accepted twice, so it is answered twice."""
    client = lmtp_client(Recorder())
    replies = transaction(client, ["a@example.test", "a@example.test"])
    final = replies[replies.index(next(r for r in replies if r.code == 354)) + 1:]
    assert [r.text for r in final] == ["OK: message accepted for <a@example.test>"] * 2


@pytest.mark.parametrize("rcpt", [b"RCPT TO:<nobody@example.test>\r\n", b""], ids=["refused", "none"])
def test_no_accepted_recipient_means_no_data(rcpt):
    """No accepted recipient: DATA gets 503 (RFC 2033 4.2: MUST) and there is no per-recipient reply."""
    client = lmtp_client(Recorder())
    client.send(b"MAIL FROM:<s@example.test>\r\n" + rcpt + b"DATA\r\nNOOP\r\n")
    assert codes(client.replies()) == [(250, "2.1.0")] + [(550, "5.1.1")] * bool(rcpt) + [
        (503, "5.5.1"), (250, "2.0.0")]


def test_smtp_data_without_recipient_stays_554():
    """SMTP may answer 554 or 503 there (RFC 5321 3.3); it keeps 554, the code it always gave."""
    server, _ = make_server(Recorder())
    client = TestClient(server)
    client.send(b"EHLO c.test\r\nMAIL FROM:<s@example.test>\r\nDATA\r\n")
    assert codes(client.replies())[-1] == (554, "5.5.1")


def test_hook_none_accepts_all():
    """on_data returning None: 250 for every recipient."""
    client = lmtp_client(Recorder(None))
    replies = transaction(client, ["a@example.test", "b@example.test"])
    assert codes(replies[-2:]) == [(250, "2.0.0"), (250, "2.0.0")]


def test_hook_reply_applies_to_all():
    """on_data returning one Reply: that reply for every recipient."""
    client = lmtp_client(Recorder(Reply(250, "Queued as 42", "2.6.0")))
    replies = transaction(client, ["a@example.test", "b@example.test"])
    assert [(r.code, r.enhanced, r.text) for r in replies[-2:]] == [(250, "2.6.0", "Queued as 42")] * 2


def test_hook_smtperror_applies_to_all():
    """on_data raising SMTPError: that error for every recipient."""
    client = lmtp_client(Recorder(SMTPError(552, "Mailbox full", "5.2.2")))
    replies = transaction(client, ["a@example.test", "b@example.test", "c@example.test"])
    assert [(r.code, r.enhanced, r.text) for r in replies[-3:]] == [(552, "5.2.2", "Mailbox full")] * 3


def test_hook_other_exception_is_451_for_all():
    """on_data raising anything else: 451 4.3.0 for every recipient (details only logged)."""
    client = lmtp_client(Recorder(RuntimeError("secret detail")))
    replies = transaction(client, ["a@example.test", "b@example.test"])
    assert codes(replies[-2:]) == [(451, "4.3.0")] * 2
    assert all("secret" not in r.text for r in replies)


def test_hook_per_recipient_list():
    """A list answers each recipient in order: None, Reply, SMTPError, other exception (451)."""
    answer = [None, Reply(250, "Delivered to folder X", "2.1.5"), SMTPError(452, "Over quota", "4.2.2"),
              ValueError("boom"), SMTPError(550, "Gone")]
    client = lmtp_client(Recorder(answer))
    rcpts = ["a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test"]
    replies = transaction(client, rcpts)
    assert [(r.code, r.enhanced, r.text) for r in replies[-5:]] == [
        (250, "2.0.0", "OK: message accepted for <a@example.test>"),
        (250, "2.1.5", "Delivered to folder X"),
        (452, "4.2.2", "Over quota"),
        (451, "4.3.0", "Requested action aborted: local error in processing"),
        (550, "5.0.0", "Gone"),
    ]


def test_hook_per_recipient_tuple():
    """A tuple works like a list."""
    client = lmtp_client(Recorder((None, SMTPError(450, "Locked", "4.2.1"))))
    replies = transaction(client, ["a@example.test", "b@example.test"])
    assert codes(replies[-2:]) == [(250, "2.0.0"), (450, "4.2.1")]


def test_per_recipient_list_skips_refused_recipients():
    """The list has one item per accepted recipient; refused RCPTs do not count."""
    client = lmtp_client(Recorder([SMTPError(550, "x", "5.1.1"), None]))
    replies = transaction(client, ["a@example.test", "nobody@example.test", "b@example.test"])
    assert codes(replies[-2:]) == [(550, "5.1.1"), (250, "2.0.0")]
    assert replies[-1].text == "OK: message accepted for <b@example.test>"


@pytest.mark.parametrize("answer", [[None], [None, None, None], []])
def test_hook_list_of_wrong_length(answer, monkeypatch):
    """A list of the wrong length: 451 4.3.0 for each recipient, and an error is logged."""
    client = lmtp_client(Recorder(answer))
    events: List[Dict[str, Any]] = []
    # The protocol has slots only (no instance dict): its logger is replaced on the class.
    monkeypatch.setattr(type(client.protocol), "log", Logger(observer=events.append))
    replies = transaction(client, ["a@example.test", "b@example.test"])
    assert codes(replies[-2:]) == [(451, "4.3.0")] * 2
    assert any(e.get("n") == len(answer) and e.get("m") == 2 for e in events)


def test_async_per_recipient_answer_waits_and_keeps_order():
    """A slow hook: no reply before it answers, then the per-recipient replies, then pipelined NOOP."""
    gate: Deferred = Deferred()

    class Slow:
        async def on_data(self, session, stream):
            await stream.content()
            return await gate

    client = lmtp_client(Slow())
    client.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
                b"DATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert codes(client.replies()) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.1.5"), (354, None)]
    gate.callback([SMTPError(550, "no", "5.7.1"), None])
    assert [r.text for r in client.replies()] == ["no", "OK: message accepted for <b@example.test>", "OK"]


def test_size_exceeded_per_recipient():
    """A message over the size limit: 552 5.3.4 for each recipient, the hook sees no body."""
    hooks = Recorder()
    client = lmtp_client(hooks, size=100)
    replies = transaction(client, ["a@example.test", "b@example.test"], b"x" * 300 + b"\r\n")
    assert codes(replies[-2:]) == [(552, "5.3.4")] * 2
    assert hooks.messages == []
    assert client.command("NOOP").code == 250


def test_bare_line_ending_per_recipient():
    """A bare LF in the body: 550 5.6.0 for each recipient."""
    client = lmtp_client(Recorder())
    replies = transaction(client, ["a@example.test", "b@example.test"], b"a\nb\r\n")
    assert codes(replies[-2:]) == [(550, "5.6.0")] * 2


def test_message_observer_when_some_accepted():
    """The message observer fires when at least one recipient got the message, not when none did."""
    hooks = Recorder([SMTPError(550, "x", "5.1.1"), None])
    server, _ = make_server(hooks, lmtp=True)
    seen: List[Any] = []
    server.observe("message", lambda session, envelope, size: seen.append(size))
    client = TestClient(server)
    client.command("LHLO client.test")
    transaction(client, ["a@example.test", "b@example.test"], b"hello\r\n")
    assert seen == [7]
    hooks.answer = SMTPError(550, "none", "5.7.1")
    transaction(client, ["a@example.test", "b@example.test"], b"hello\r\n")
    assert seen == [7]


def test_second_transaction_after_per_recipient_replies():
    """The session stays in step: a second transaction after the first gets its own replies."""
    hooks = Recorder()
    client = lmtp_client(hooks)
    transaction(client, ["a@example.test", "b@example.test"])
    replies = transaction(client, ["c@example.test"], b"second\r\n")
    assert codes(replies) == [(250, "2.1.0"), (250, "2.1.5"), (354, None), (250, "2.0.0")]
    assert [m[1] for m in hooks.messages] == [b"Subject: t\r\n\r\nhi\r\n", b"second\r\n"]


# -- enhanced status codes on every reply path ---------------------------------------

_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
_ESC = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3}) ")


def raw_replies(data: bytes) -> List[Tuple[int, List[str]]]:
    """Split server output into (code, [line texts]) without interpreting enhanced codes."""
    out: List[Tuple[int, List[str]]] = []
    lines: List[str] = []
    for raw in data.split(b"\r\n")[:-1]:
        m = _REPLY_LINE.match(raw)
        assert m is not None, raw
        lines.append(m.group(3).decode("utf-8"))
        if m.group(2) == b" ":
            out.append((int(m.group(1)), lines))
            lines = []
    assert data.endswith(b"\r\n") or data == b""
    return out


def check_enhanced(data: bytes, greeting: bool = True) -> List[Tuple[int, str]]:
    """
    Assert every reply carries an RFC 3463 code of its own class on every line,
    except the greeting, 354 / 334 and the LHLO/EHLO 250, which carry none.
    @return: (code, enhanced) of the replies that carry one.
    """
    seen: List[Tuple[int, str]] = []
    for i, (code, lines) in enumerate(raw_replies(data)):
        exempt = (greeting and i == 0) or code in (354, 334) or (
            code == 250 and lines[0].startswith("mx.test Nice to meet you"))
        if exempt:
            assert not any(_ESC.match(line) for line in lines), (code, lines)
            continue
        found = [_ESC.match(line) for line in lines]
        assert all(found), (code, lines)
        enhanced = {m.group(0).strip() for m in found if m}
        assert len(enhanced) == 1, (code, lines)
        [esc] = enhanced
        assert esc[0] == str(code)[0], f"{code} {esc} class mismatch"
        seen.append((code, esc))
    return seen


class Policy:
    """Hooks that produce many different replies, chosen by the address."""

    def __init__(self) -> None:
        self.gate: Optional[Deferred] = None

    def on_mail_from(self, session, address):
        if address.local_part == "bounce":
            raise SMTPError(550, "Sender refused")  # enhanced derived by the server
        if address.local_part == "temp":
            raise SMTPError(451, "Try later")
        if address.local_part == "custom":
            return Reply(250, "Sender fine")

    def on_rcpt_to(self, session, address):
        if address.local_part == "nobody":
            raise SMTPError(550, "No such user", "5.1.1")
        if address.local_part == "crash":
            raise RuntimeError("hook bug")
        if address.local_part == "custom":
            return Reply(251, "Will forward")
        if address.local_part == "slow":
            self.gate = Deferred()
            return self.gate

    async def on_data(self, session, stream):
        body = await stream.content()
        if b"REJECT" in body:
            raise SMTPError(554, "Content refused")
        if b"CRASH" in body:
            raise RuntimeError("hook bug")
        if b"MIXED" in body:
            return [None, Reply(250, "Custom"), SMTPError(450, "Busy"), KeyError("x"),
                    SMTPError(552, "Full", "5.2.2")][:len(session.envelope.rcpt_to)]
        return None


M = "MAIL FROM:<s@example.test>\r\n"
R = "RCPT TO:<r@example.test>\r\n"
R2 = "RCPT TO:<r2@example.test>\r\n"
FIVE = "".join(f"RCPT TO:<r{i}@example.test>\r\n" for i in range(5))

# Each script: (id, options, steps). A step is bytes to send, a number of
# seconds to advance the clock, or a callable(client, hooks) for the rest.
SCRIPTS: List[Tuple[str, Dict[str, Any], List[Any]]] = [
    ("hello", {}, ["EHLO c.test\r\nHELO c.test\r\nLHLO\r\nLHLO c.test\r\nlhlo c.test\r\n"]),
    ("misc", {}, ["LHLO c.test\r\nNOOP\r\nNOOP x\r\nRSET\r\nRSET x\r\nVRFY\r\nVRFY a@b.test\r\nEXPN list\r\n"
                  "HELP\r\nFOO\r\n\r\nSTARTTLS\r\nSTARTTLS x\r\nAUTH PLAIN\r\nDATA\r\nBDAT 3\r\nabc"
                  "RCPT TO:<a@b.test>\r\n" + "X" * 13000 + "\r\nNOOP\r\nQUIT\r\n"]),
    ("mail-errors", {"size": 1000}, [
        "MAIL FROM:<a@b.test>\r\nLHLO c.test\r\nMAIL FROM:a@b.test\r\nMAIL FROM:<a@b.test> SIZE=5000\r\n"
        "MAIL FROM:<a@b.test> SIZE=x\r\nMAIL FROM:<a@b.test> FOO=1\r\nMAIL FROM:<a@b.test> BODY=9BIT\r\n"
        "MAIL FROM:<j\u00f6@b.test>\r\nMAIL FROM:<a@b.test> RET=NONE\r\nMAIL FROM:<a@b.test> ENVID=a+zz\r\n"
        "MAIL FROM:<a@b.test> SMTPUTF8=x\r\nMAIL FROM:<a@b.test> REQUIRETLS\r\n"
        "MAIL FROM:<bounce@b.test>\r\nMAIL FROM:<temp@b.test>\r\nMAIL FROM:<custom@b.test>\r\n"
        "MAIL FROM:<a@b.test>\r\nRSET\r\nMAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME\r\n"
        "MAIL FROM:<a@b.test>\r\nQUIT\r\n"]),
    ("rcpt-errors", {"max_recipients": 3}, [
        "LHLO c.test\r\nRCPT TO:<a@b.test>\r\n" + M + "RCPT TO:a@b.test\r\nRCPT TO:<>\r\n"
        "RCPT TO:<j\u00f6@b.test>\r\nRCPT TO:<a@b.test> NOTIFY=SOMETIMES\r\nRCPT TO:<a@b.test> ORCPT=x\r\n"
        "RCPT TO:<a@b.test> FOO=1\r\nRCPT TO:<nobody@b.test>\r\nRCPT TO:<crash@b.test>\r\n"
        "RCPT TO:<custom@b.test>\r\nRCPT TO:<a@b.test> NOTIFY=SUCCESS ORCPT=rfc822;a@b.test\r\n"
        "RCPT TO:<postmaster>\r\nRCPT TO:<z@b.test>\r\nDATA x\r\nQUIT\r\n"]),
    ("data-per-recipient", {}, ["LHLO c.test\r\n" + M + FIVE + "DATA\r\nMIXED\r\n.\r\n",
                                M + R + R2 + "DATA\r\nREJECT\r\n.\r\n",
                                M + R + R2 + "DATA\r\nCRASH\r\n.\r\n",
                                M + R + R2 + "DATA\r\nbare\nLF\r\n.\r\n",
                                M + R + R2 + "DATA\r\nfine\r\n.\r\n"]),
    ("data-size", {"size": 10}, ["LHLO c.test\r\n" + M + R + R2 + "DATA\r\n" + "y" * 50 + "\r\n.\r\nNOOP\r\n"]),
    ("bdat", {}, ["LHLO c.test\r\nBDAT 3\r\nabc" + M + "BDAT 3\r\nabcRSET\r\n" + M + R + R2
                  + "BDAT 3\r\nabcDATA\r\nBDAT 0\r\nBDAT 5 LAST\r\nMIXED",
                  M + R + "BDAT 6 LAST\r\nREJECT", M + R + "BDAT 5 LAST\r\nCRASH",
                  "MAIL FROM:<s@example.test> BODY=BINARYMIME\r\n" + R + "DATA\r\nBDAT 2 LAST\r\nok",
                  "QUIT\r\n"]),
    ("bdat-size", {"size": 10}, ["LHLO c.test\r\n" + M + R + "BDAT 20\r\n" + "z" * 20 + "BDAT 3\r\nabc"
                                 "BDAT 1 LAST\r\nxNOOP\r\n"]),
    ("bdat-hook-rejects-early", {}, [
        "LHLO c.test\r\n",
        lambda client, hooks: setattr(hooks, "early", True),
        M + R + "BDAT 3\r\nabcBDAT 3\r\ndefBDAT 1 LAST\r\nxNOOP\r\n"]),
    ("bdat-bad-size", {}, ["LHLO c.test\r\nBDAT x\r\n"]),
    ("hook-timeout", {"hook_timeout": 5}, ["LHLO c.test\r\n" + M + "RCPT TO:<slow@b.test>\r\n", 6,
                                           "NOOP\r\n"]),
    ("idle-timeout", {"socket_timeout": 30}, ["LHLO c.test\r\n", 31]),
    ("too-many-unrecognized", {"max_unrecognized_commands": 3}, ["FOO\r\nBAR\r\nBAZ\r\n"]),
    ("disabled", {"disabled_commands": {"VRFY", "BDAT"}}, ["LHLO c.test\r\nVRFY a\r\nBDAT 1\r\n"]),
    ("hidden-chunking-dsn", {"hide_chunking": True, "hide_dsn": True}, [
        "LHLO c.test\r\nBDAT 1\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\nMAIL FROM:<a@b.test> RET=FULL\r\n"
        + M + "RCPT TO:<a@b.test> NOTIFY=NEVER\r\n"]),
]


class EarlyReject(Policy):
    """Policy, but on_data can refuse before reading anything."""

    early = False

    def on_data(self, session, stream):
        if self.early:
            raise SMTPError(550, "Refused at once")
        return Policy.on_data(self, session, stream)


def run_script(options: Dict[str, Any], steps: List[Any]) -> bytes:
    """Run one script against a fresh LMTP server; return all the server wrote."""
    hooks = EarlyReject()
    server, clock = make_server(hooks, lmtp=True, **options)
    client = TestClient(server, greeting=False)
    for step in steps:
        if isinstance(step, str):
            client.send(step.encode("utf-8"))
        elif isinstance(step, (int, float)):
            clock.advance(step)
        else:
            step(client, hooks)
    return client.read()


@pytest.mark.parametrize("hide", [False, True], ids=["shown", "hide_option_ignored"])
@pytest.mark.parametrize("name,options,steps", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_lmtp_replies_carry_enhanced_codes(name, options, steps, hide):
    """Every LMTP reply carries an RFC 3463 code of its own class (even with hide_enhancedstatuscodes)."""
    seen = check_enhanced(run_script(dict(options, hide_enhancedstatuscodes=hide), steps))
    assert seen, "the script produced no coded reply"


def test_enhanced_code_walk_covers_the_paths():
    """The walk above really reaches the reply codes it claims to (guards against a silent script)."""
    seen = set()
    for _, options, steps in SCRIPTS:
        seen.update(code for code, _ in check_enhanced(run_script(options, steps)))
    for code in (221, 250, 252, 214, 421, 450, 451, 452, 454, 500, 501, 502, 503, 550, 552, 553, 554, 555):
        assert code in seen, code


def test_enhanced_codes_of_known_paths():
    """Spot-check exact codes on the LMTP and BDAT paths."""
    seen = check_enhanced(run_script({}, SCRIPTS[6][2]))  # "bdat"
    assert (503, "5.5.1") in seen  # BDAT without MAIL, DATA after BDAT, BINARYMIME with DATA
    assert (554, "5.5.1") in seen  # BDAT without RCPT
    assert (250, "2.0.0") in seen  # chunk accepted
    assert (554, "5.0.0") in seen  # hook's SMTPError without an enhanced code
    assert (451, "4.3.0") in seen  # hook crashed
    seen = check_enhanced(run_script({"size": 10}, SCRIPTS[7][2]))  # "bdat-size"
    assert seen.count((552, "5.3.4")) >= 1


@pytest.mark.parametrize("script", [
    "EHLO c.test\r\n" + M + R + "DATA\r\nhi\r\n.\r\nVRFY x\r\nRSET\r\nNOOP\r\nFOO\r\nBDAT 3\r\nabcQUIT\r\n",
    "EHLO c.test\r\n" + M + R + "BDAT 2\r\nhiBDAT 0 LAST\r\nMAIL FROM:<x>\r\nRCPT TO:<a@b.test>\r\nQUIT\r\n",
    "HELO c.test\r\nMAIL FROM:<a@b.test> SIZE=1\r\n" + M + "RCPT TO:<nobody@b.test>\r\nDATA\r\nQUIT\r\n",
], ids=["data", "bdat", "helo"])
def test_smtp_replies_carry_enhanced_codes(script):
    """A few SMTP dialogues: every reply but greeting, 354 and EHLO carries a code of its class."""
    server, _ = make_server(Policy())
    client = TestClient(server, greeting=False)
    client.send(script.encode("utf-8"))
    assert len(check_enhanced(client.read())) >= 5


def test_smtp_without_enhancedstatuscodes_has_none():
    """SMTP with hide_enhancedstatuscodes: no reply carries a code (LMTP ignores the option)."""
    server, _ = make_server(Policy(), hide_enhancedstatuscodes=True)
    client = TestClient(server, greeting=False)
    client.send(("EHLO c.test\r\n" + M + "RCPT TO:<nobody@b.test>\r\n" + R + "DATA\r\nhi\r\n.\r\nFOO\r\n").encode())
    for code, lines in raw_replies(client.read()):
        assert not any(_ESC.match(line) for line in lines), (code, lines)


def test_custom_greeting_and_rejection_from_on_connect():
    """A custom 220 greeting carries no code; an on_connect rejection carries one of its class."""
    class Greeter:
        def __init__(self, answer: Callable[[], Any]) -> None:
            self.answer = answer

        def on_connect(self, session):
            return self.answer()

    server, _ = make_server(Greeter(lambda: Reply(220, "hello there", "2.0.0")), lmtp=True)
    assert raw_replies(TestClient(server, greeting=False).read()) == [(220, ["hello there"])]

    def refuse() -> Any:
        raise SMTPError(554, "go away")

    server, _ = make_server(Greeter(refuse), lmtp=True)
    client = TestClient(server, greeting=False)
    assert check_enhanced(client.read(), greeting=False) == [(554, "5.0.0")]
    assert not client.closed  # RFC 5321 3.1: until QUIT
