"""
Tests for L{txsmtpsrv._protocol}: every command, hooks in every style,
observers and the session as hooks see it, all in memory through
L{txsmtpsrv.testing}.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import capturedLogs

from txsmtpsrv import Address, Reply, SMTPError
from txsmtpsrv.testing import TestClient, make_server
from tests._memory import codes

ENHANCED_ON_WIRE = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)", re.M)


def connect(hooks: Any = None, **options: Any):
    """A server and one greeted client; returns (server, clock, client)."""
    server, clock = make_server(hooks, **options)
    return server, clock, TestClient(server)


def ehlo(client: TestClient, name: str = "client.test") -> Reply:
    """EHLO that must succeed."""
    reply = client.command(f"EHLO {name}")
    assert reply.code == 250, reply
    return reply


def mail(client: TestClient, sender: str = "a@x.test") -> None:
    """EHLO plus an accepted MAIL FROM."""
    ehlo(client)
    reply = client.command(f"MAIL FROM:<{sender}>")
    assert reply.code == 250, reply


def rcpt(client: TestClient, sender: str = "a@x.test", to: str = "b@y.test") -> None:
    """EHLO, MAIL and one accepted RCPT."""
    mail(client, sender)
    reply = client.command(f"RCPT TO:<{to}>")
    assert reply.code == 250, reply


def answer(line: str, after: Callable[[TestClient], Any] = ehlo, **options: Any) -> tuple:
    """(code, enhanced) of the reply to C{line} on a new connection, sent after C{after} (ehlo, mail or rcpt)."""
    _, _, client = connect(**options)
    after(client)
    reply = client.command(line)
    return reply.code, reply.enhanced



class Recorder:
    """Hooks that record their calls and accept everything."""

    def __init__(self) -> None:
        self.calls: list = []
        self.bodies: list = []

    def on_connect(self, session):
        self.calls.append(("connect", session))

    def on_helo(self, session, hostname):
        self.calls.append(("helo", hostname))

    def on_mail_from(self, session, address):
        self.calls.append(("mail", address))

    def on_rcpt_to(self, session, address):
        self.calls.append(("rcpt", address))

    async def on_data(self, session, stream):
        self.bodies.append(await stream.content())

    def on_close(self, session):
        self.calls.append(("close", session))


# -- greeting ------------------------------------------------------------------


def test_greeting_carries_name_and_banner():
    """The greeting is `220 <name> ESMTP <banner>` with no enhanced code."""
    server, _ = make_server(banner="Welcome, friend")
    client = TestClient(server, greeting=False)
    assert client.read() == b"220 mx.test ESMTP Welcome, friend\r\n"


def test_greeting_without_banner():
    """Without a banner the greeting is just `220 <name> ESMTP`."""
    server, _ = make_server()
    client = TestClient(server, greeting=False)
    assert client.read() == b"220 mx.test ESMTP\r\n"


# -- EHLO / HELO -----------------------------------------------------------------


def test_ehlo_lists_extensions():
    """EHLO answers the helo_response line, then the extensions with SIZE last, without enhanced codes."""
    _, _, client = connect()
    client.send(b"EHLO client.test\r\n")
    raw = client.read()
    assert raw.startswith(b"250-mx.test Nice to meet you, [192.0.2.10]\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                          b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n")
    assert raw.endswith(b"\r\n250 SIZE 33554432\r\n")
    assert ENHANCED_ON_WIRE.search(raw) is None


@pytest.mark.parametrize("option, keyword", [
    ("hide_pipelining", "PIPELINING"),
    ("hide_8bitmime", "8BITMIME"),
    ("hide_smtputf8", "SMTPUTF8"),
    ("hide_enhancedstatuscodes", "ENHANCEDSTATUSCODES"),
])
def test_hide_option_removes_keyword(option, keyword):
    """Each hide_* option removes exactly its keyword from the EHLO reply."""
    _, _, plain = connect()
    _, _, client = connect(**{option: True})
    assert set(ehlo(plain).lines) - set(ehlo(client).lines) == {keyword}
    assert set(ehlo(client).lines) - set(ehlo(plain).lines) == set()


def test_hide_size_advertises_bare_size():
    """hide_size advertises SIZE without the number."""
    _, _, client = connect(hide_size=True, size=1000)
    assert ehlo(client).lines[-1] == "SIZE"


def test_size_zero_advertises_bare_size():
    """size=0 (no limit) advertises SIZE without a number."""
    _, _, client = connect(size=0)
    assert ehlo(client).lines[-1] == "SIZE"


def test_helo_response_format():
    """helo_response is formatted with name, client_hostname, remote_address and helo."""
    _, _, client = connect(helo_response="{name} hi {helo} at {remote_address} aka {client_hostname}")
    assert ehlo(client, "c.test").lines[0] == "mx.test hi c.test at 192.0.2.10 aka [192.0.2.10]"


def test_helo_answers_one_line_without_extensions():
    """HELO answers a single 250 line with no extension list and no enhanced code."""
    _, _, client = connect()
    client.send(b"HELO client.test\r\n")
    assert client.read() == b"250 mx.test Nice to meet you, [192.0.2.10]\r\n"


@pytest.mark.parametrize("verb", ["EHLO", "HELO", "EHLO ", "helo"])
def test_helo_without_hostname(verb):
    """EHLO/HELO without a host name is 501 5.5.4."""
    _, _, client = connect()
    reply = client.command(verb)
    assert (reply.code, reply.enhanced) == (501, "5.5.4")


def test_commands_are_case_insensitive():
    """Verbs are matched case-insensitively."""
    _, _, client = connect()
    assert client.command("ehlo client.test").code == 250
    assert client.command("mail from:<a@x.test>").code == 250


# -- MAIL ----------------------------------------------------------------------------


def test_mail_before_helo():
    """MAIL before HELO/EHLO is 503 5.5.1."""
    _, _, client = connect()
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced) == (503, "5.5.1")


def test_mail_accepted():
    """MAIL FROM is answered 250 2.1.0."""
    _, _, client = connect()
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (250, "2.1.0", "Accepted")


def test_nested_mail():
    """A second MAIL in one transaction is 503 5.5.1."""
    assert answer("MAIL FROM:<c@x.test>", after=mail) == (503, "5.5.1")


def test_null_sender():
    """The null reverse-path <> is accepted and reaches the hook as an empty address."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    ehlo(client)
    reply = client.command("MAIL FROM:<>")
    assert (reply.code, reply.enhanced) == (250, "2.1.0")
    assert hooks.calls[-1] == ("mail", Address(""))


@pytest.mark.parametrize("line", [
    "MAIL FROM:a@x.test",
    "MAIL FROM:<a b@x.test>",
    "MAIL FROM:<a@x.test",
    "MAIL FROM:<a@x.test>SIZE=10",
    "MAIL FROM:<@x.test>",
    "MAIL FROM:<" + "a" * 65 + "@x.test>",
])
def test_mail_bad_address(line):
    """A malformed reverse-path is 501 5.1.7."""
    assert answer(line) == (501, "5.1.7")


@pytest.mark.parametrize("line", ["MAIL TO:<a@x.test>", "MAIL", "MAIL FROM"])
def test_mail_bad_keyword(line):
    """MAIL without FROM: is 501 5.5.4."""
    assert answer(line) == (501, "5.5.4")


def test_mail_source_route_ignored():
    """A source route in the reverse-path is accepted and dropped."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    ehlo(client)
    assert client.command("MAIL FROM:<@relay.test,@r2.test:a@x.test>").code == 250
    assert hooks.calls[-1][1].address == "a@x.test"


def test_mail_size_within_limit():
    """SIZE not over the limit is accepted and recorded in the envelope."""
    hooks = Recorder()
    server, _, client = connect(hooks, size=1000)
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test> SIZE=1000")
    assert (reply.code, reply.enhanced) == (250, "2.1.0")
    session = hooks.calls[0][1]
    assert session.envelope.size == 1000
    assert hooks.calls[-1][1].params == {"SIZE": "1000"}


def test_mail_size_too_big():
    """SIZE over the limit is 552 5.3.4."""
    assert answer("MAIL FROM:<a@x.test> SIZE=1001", size=1000) == (552, "5.3.4")


@pytest.mark.parametrize("param", ["SIZE=abc", "SIZE", "SIZE=-1", "SIZE=" + "9" * 21])
def test_mail_size_bad(param):
    """A SIZE that is not a number is 501 5.5.4."""
    assert answer(f"MAIL FROM:<a@x.test> {param}") == (501, "5.5.4")


@pytest.mark.parametrize("value, body_type", [("7BIT", "7BIT"), ("8BITMIME", "8BITMIME"), ("8bitmime", "8BITMIME")])
def test_mail_body_types(value, body_type):
    """BODY=7BIT and BODY=8BITMIME are accepted and set the envelope's body type."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    ehlo(client)
    assert client.command(f"MAIL FROM:<a@x.test> BODY={value}").code == 250
    assert hooks.calls[0][1].envelope.body_type == body_type


@pytest.mark.parametrize("param, options", [
    ("BODY=FOO", {}),
    ("BODY=", {}),
    ("BODY", {}),
    ("BODY=8BITMIME", {"hide_8bitmime": True}),
])
def test_mail_body_bad(param, options):
    """An unsupported BODY value is 501 5.5.4."""
    assert answer(f"MAIL FROM:<a@x.test> {param}", **options) == (501, "5.5.4")


def test_mail_smtputf8_non_ascii_accepted():
    """With SMTPUTF8 a non-ASCII sender is accepted and reaches the hook as str."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    ehlo(client)
    reply = client.command("MAIL FROM:<jörg@exämple.test> SMTPUTF8")
    assert (reply.code, reply.enhanced) == (250, "2.1.0")
    address = hooks.calls[-1][1]
    assert address.address == "jörg@exämple.test"
    assert address.utf8 and address.params == {"SMTPUTF8": None}
    assert hooks.calls[0][1].envelope.smtputf8


def test_mail_non_ascii_without_smtputf8():
    """A non-ASCII sender without SMTPUTF8 is 553 5.6.7."""
    assert answer("MAIL FROM:<jörg@exämple.test>") == (553, "5.6.7")


def test_mail_smtputf8_with_value():
    """SMTPUTF8=x is 501 5.5.4."""
    assert answer("MAIL FROM:<a@x.test> SMTPUTF8=yes") == (501, "5.5.4")


def test_mail_smtputf8_hidden_is_unknown():
    """With hide_smtputf8, SMTPUTF8 on MAIL is an unknown parameter (555 5.5.4)."""
    assert answer("MAIL FROM:<a@x.test> SMTPUTF8", hide_smtputf8=True) == (555, "5.5.4")


def test_mail_unknown_param():
    """An unregistered MAIL parameter is 555 5.5.4."""
    assert answer("MAIL FROM:<a@x.test> FOO=bar") == (555, "5.5.4")


def test_mail_registered_param():
    """A parameter named in mail_params is accepted and passed to the hook."""
    hooks = Recorder()
    _, _, client = connect(hooks, mail_params={"foo", "ENVID"})
    ehlo(client)
    assert client.command("MAIL FROM:<a@x.test> foo=bar ENVID=x1").code == 250
    assert hooks.calls[-1][1].params == {"FOO": "bar", "ENVID": "x1"}


@pytest.mark.parametrize("param", ["=x", "A=B=C=", "FOO=a b=", "SIZE=1 SIZE=2"])
def test_mail_param_syntax(param):
    """Malformed or repeated parameters are 501 5.5.4."""
    assert answer(f"MAIL FROM:<a@x.test> {param}", mail_params={"FOO", "A"}) == (501, "5.5.4")


def test_mail_params_after_helo():
    """MAIL parameters after HELO (not EHLO) are 555 5.5.4."""
    _, _, client = connect()
    assert client.command("HELO client.test").code == 250
    reply = client.command("MAIL FROM:<a@x.test> SIZE=10")
    assert (reply.code, reply.enhanced) == (555, "5.5.4")
    assert client.command("MAIL FROM:<a@x.test>").code == 250


# -- RCPT --------------------------------------------------------------------------


def test_rcpt_without_mail():
    """RCPT before MAIL is 503 5.5.1."""
    assert answer("RCPT TO:<b@y.test>") == (503, "5.5.1")


def test_rcpt_accepted():
    """RCPT TO is answered 250 2.1.5 and the address goes into the envelope."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    mail(client)
    reply = client.command("RCPT TO:<b@y.test>")
    assert (reply.code, reply.enhanced, reply.text) == (250, "2.1.5", "Accepted")
    assert hooks.calls[0][1].envelope.rcpt_to == [Address("b@y.test")]


@pytest.mark.parametrize("line", ["RCPT TO:b@y.test", "RCPT TO:<>", "RCPT TO:<b y@y.test>", "RCPT TO:<b@>"])
def test_rcpt_bad_address(line):
    """A malformed forward-path is 501 5.1.3."""
    assert answer(line, after=mail) == (501, "5.1.3")


@pytest.mark.parametrize("box", ["postmaster", "Postmaster", "POSTMASTER"])
def test_rcpt_postmaster(box):
    """A bare <postmaster> (any case) is accepted as a recipient."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    mail(client)
    reply = client.command(f"RCPT TO:<{box}>")
    assert (reply.code, reply.enhanced) == (250, "2.1.5")
    assert hooks.calls[-1][1].address == box


def test_rcpt_max_recipients():
    """Recipients past max_recipients get 452 4.5.3; the earlier ones stay."""
    hooks = Recorder()
    _, _, client = connect(hooks, max_recipients=2)
    mail(client)
    assert client.command("RCPT TO:<b1@y.test>").code == 250
    assert client.command("RCPT TO:<b2@y.test>").code == 250
    reply = client.command("RCPT TO:<b3@y.test>")
    assert (reply.code, reply.enhanced) == (452, "4.5.3")
    assert len(hooks.calls[0][1].envelope.rcpt_to) == 2


def test_rcpt_unknown_param():
    """An unregistered RCPT parameter is 555 5.5.4."""
    assert answer("RCPT TO:<b@y.test> XFOO=1", after=mail) == (555, "5.5.4")


def test_rcpt_registered_param():
    """A parameter named in rcpt_params is accepted and passed to the hook."""
    hooks = Recorder()
    _, _, client = connect(hooks, rcpt_params={"xfoo", "XBAR"})
    mail(client)
    assert client.command("RCPT TO:<b@y.test> XFOO=1 xbar").code == 250
    assert hooks.calls[-1][1].params == {"XFOO": "1", "XBAR": None}


def test_rcpt_non_ascii_without_smtputf8():
    """A non-ASCII recipient without SMTPUTF8 on MAIL is 553 5.6.7."""
    assert answer("RCPT TO:<jörg@y.test>", after=mail) == (553, "5.6.7")


def test_rcpt_non_ascii_with_smtputf8():
    """A non-ASCII recipient is accepted when MAIL had SMTPUTF8."""
    _, _, client = connect()
    ehlo(client)
    assert client.command("MAIL FROM:<a@x.test> SMTPUTF8").code == 250
    assert client.command("RCPT TO:<jörg@ÿ.test>").code == 250


# -- DATA ----------------------------------------------------------------------------


def test_data_without_mail():
    """DATA before MAIL is 503 5.5.1."""
    assert answer("DATA") == (503, "5.5.1")


def test_data_without_rcpt():
    """DATA with no accepted recipient is 554 5.5.1."""
    assert answer("DATA", after=mail) == (554, "5.5.1")


def test_data_with_argument():
    """DATA with an argument is 501 5.5.4."""
    assert answer("DATA now", after=rcpt) == (501, "5.5.4")


def test_data_354_and_body_delivered_exactly():
    """DATA gets a bare 354, the body is dot-unstuffed and delivered byte for byte, then 250 2.0.0."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    rcpt(client)
    client.send(b"DATA\r\n")
    assert client.read() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    client.send(b"Subject: t\r\n\r\n..leading dot\r\n...\r\n.\r\n")
    reply, = client.replies()
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    assert hooks.bodies == [b"Subject: t\r\n\r\n.leading dot\r\n..\r\n"]


def test_sendmail_body_round_trips():
    """A body with lines starting with dots round-trips through dot_stuff and the server."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    body = b".first\r\n\r\n.\r\nmid . dot\r\n..x\r\nlast"
    replies = client.sendmail("a@x.test", ["b@y.test", "c@y.test"], body)
    assert codes(replies) == [(250, None), (250, "2.1.0"), (250, "2.1.5"), (250, "2.1.5"), (354, None),
                              (250, "2.0.0")]
    assert hooks.bodies == [body + b"\r\n"]


def test_empty_body():
    """A message with no body (just the dot) is accepted with an empty body."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    rcpt(client)
    client.send(b"DATA\r\n.\r\n")
    assert codes(client.replies()) == [(354, None), (250, "2.0.0")]
    assert hooks.bodies == [b""]


def test_transaction_resets_after_message():
    """After the message the envelope is empty: RCPT needs a new MAIL."""
    _, _, client = connect()
    replies = client.sendmail("a@x.test", ["b@y.test"], b"hi\r\n")
    assert replies[-1].code == 250
    assert client.command("RCPT TO:<b@y.test>").code == 503
    assert client.command("MAIL FROM:<a@x.test>").code == 250


def test_data_without_hook_accepts():
    """With no on_data hook the body is discarded and the message accepted."""
    _, _, client = connect()
    replies = client.sendmail("a@x.test", ["b@y.test"], b"hi\r\n")
    assert (replies[-1].code, replies[-1].enhanced) == (250, "2.0.0")


# -- RSET, NOOP, QUIT, VRFY, EXPN, HELP, unknown -------------------------------------------


def test_rset_clears_transaction():
    """RSET is 250 2.0.0 and drops the envelope."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    rcpt(client)
    reply = client.command("RSET")
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    session = hooks.calls[0][1]
    assert session.envelope.mail_from is None and session.envelope.rcpt_to == []
    assert client.command("RCPT TO:<b@y.test>").code == 503


def test_rset_with_argument():
    """RSET with an argument is 501 5.5.4."""
    _, _, client = connect()
    reply = client.command("RSET now")
    assert (reply.code, reply.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize("line", ["NOOP", "NOOP anything at all"])
def test_noop(line):
    """NOOP (with or without argument) is 250 2.0.0, even before EHLO."""
    _, _, client = connect()
    reply = client.command(line)
    assert (reply.code, reply.enhanced) == (250, "2.0.0")


def test_quit_replies_and_closes():
    """QUIT is 221 2.0.0 and the server closes; pipelined commands after it are ignored."""
    _, _, client = connect()
    client.send(b"QUIT\r\nNOOP\r\n")
    assert client.read() == b"221 2.0.0 Bye\r\n"
    assert client.closed
    client.send(b"NOOP\r\n")
    assert client.read() == b""


def test_vrfy():
    """VRFY with an argument is 252 2.5.0; without one 501 5.5.4."""
    _, _, client = connect()
    reply = client.command("VRFY bob")
    assert (reply.code, reply.enhanced) == (252, "2.5.0")
    reply = client.command("VRFY")
    assert (reply.code, reply.enhanced) == (501, "5.5.4")


def test_expn():
    """EXPN is 502 5.5.1."""
    _, _, client = connect()
    reply = client.command("EXPN list")
    assert (reply.code, reply.enhanced) == (502, "5.5.1")


def test_help():
    """HELP is 214 2.0.0."""
    _, _, client = connect()
    reply = client.command("HELP")
    assert (reply.code, reply.enhanced) == (214, "2.0.0")


@pytest.mark.parametrize("line", ["FOO", "XYZZY bar", "MAILFROM:<a@x.test>", "\tNOOP"])
def test_unknown_command(line):
    """An unknown command is 500 5.5.2."""
    _, _, client = connect()
    reply = client.command(line)
    assert (reply.code, reply.enhanced) == (500, "5.5.2")


@pytest.mark.parametrize("line", ["", " "])
def test_empty_line(line):
    """An empty line is 500 5.5.2."""
    _, _, client = connect()
    reply = client.command(line)
    assert (reply.code, reply.enhanced) == (500, "5.5.2")


@pytest.mark.parametrize("line", ["VRFY bob", "vrfy bob", "HELP", "EHLO client.test"])
def test_disabled_commands(line):
    """A command in disabled_commands is 502 5.5.1."""
    _, _, client = connect(disabled_commands={"VRFY", "help", "EHLO"})
    reply = client.command(line)
    assert (reply.code, reply.enhanced) == (502, "5.5.1")


def test_disabled_ehlo_leaves_helo():
    """Disabling EHLO leaves HELO working."""
    _, _, client = connect(disabled_commands="EHLO")
    assert client.command("HELO client.test").code == 250


def test_invalid_utf8():
    """A command argument that is not valid UTF-8 is 501 5.5.2."""
    _, _, client = connect()
    ehlo(client)
    reply = client.command(b"MAIL FROM:<\xff\xfe@x.test>")
    assert (reply.code, reply.enhanced) == (501, "5.5.2")
    assert client.command("MAIL FROM:<a@x.test>").code == 250


def test_bare_lf_command_accepted():
    """A command ended by a bare LF is accepted (lenient like Postfix)."""
    _, _, client = connect()
    client.send(b"NOOP\n")
    assert codes(client.replies()) == [(250, "2.0.0")]


class Rejector:
    """Hooks that reject or fail in each phase, to see codes in error replies."""

    def on_rcpt_to(self, session, address):
        if address.local_part == "fail":
            raise RuntimeError("boom")
        if address.local_part == "reply":
            return Reply(250, "fine", "2.1.5")
        raise SMTPError(550, "No such user", "5.1.1")

    def on_data(self, session, stream):
        raise SMTPError(554, "Rejected")


def test_hide_enhancedstatuscodes_everywhere():
    """With hide_enhancedstatuscodes no reply of any kind carries an enhanced code."""
    server, clock = make_server(Rejector(), hide_enhancedstatuscodes=True, max_recipients=3,
                                max_unrecognized_commands=4)
    client = TestClient(server, greeting=False)
    client.send(b"MAIL FROM:<a@x.test>\r\nEHLO c.test\r\nMAIL FROM:<a b>\r\nMAIL FROM:<a@x.test> SIZE=x\r\n"
                b"MAIL FROM:<a@x.test> FOO=1\r\nMAIL FROM:<j\xc3\xb6rg@x.test>\r\nMAIL FROM:<\xff>\r\n"
                b"MAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<>\r\nRCPT TO:<no@y.test>\r\n"
                b"RCPT TO:<fail@y.test>\r\nRCPT TO:<reply@y.test>\r\nRCPT TO:<x@y.test> A=B\r\n"
                b"DATA x\r\nDATA\r\nhi\r\n.\r\nRSET\r\nNOOP\r\nVRFY x\r\nVRFY\r\nEXPN\r\nHELP\r\nFOO\r\n\r\n"
                b"RSET\r\nMAIL FROM:<a@x.test>\r\nDATA\r\n" + b"X" * 5000 + b"\r\nFOO\r\n")
    raw = client.read()
    assert raw.count(b"\r\n") > 25
    assert ENHANCED_ON_WIRE.search(raw) is None, raw
    assert b"ENHANCEDSTATUSCODES" not in raw
    assert raw.endswith(b"421 mx.test Error: too many unrecognized commands\r\n")
    # The timeout reply too.
    client2 = TestClient(server)
    clock.advance(61)
    raw = client2.read()
    assert raw.startswith(b"421 ") and ENHANCED_ON_WIRE.search(raw) is None


# -- hooks in every style --------------------------------------------------------------------


def test_hook_plain_return_accepts():
    """A hook returning None accepts with the default reply."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    replies = client.sendmail("a@x.test", ["b@y.test"], b"x")
    assert codes(replies)[-1] == (250, "2.0.0")
    assert [c[0] for c in hooks.calls] == ["connect", "helo", "mail", "rcpt"]


class ReplyHooks:
    """Hooks that accept with their own text."""

    def on_mail_from(self, session, address):
        return Reply(250, "Sender looks fine", "2.1.0")

    def on_rcpt_to(self, session, address):
        return Reply(251, ["Not local;", "will forward"])

    def on_data(self, session, stream):
        return Reply(250, "Queued as 1234", "2.6.0")


def test_hook_reply_custom_text():
    """A hook returning a Reply accepts with that code, text and enhanced code."""
    _, _, client = connect(ReplyHooks())
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (250, "2.1.0", "Sender looks fine")
    client.send(b"RCPT TO:<b@y.test>\r\n")
    raw = client.read()
    assert raw.startswith(b"251-2.") and b"\r\n251 2." in raw
    reply, = __import__("txsmtpsrv.testing", fromlist=["parse_replies"]).parse_replies(raw)[0]
    assert reply.code == 251 and reply.lines == ("Not local;", "will forward")
    assert reply.enhanced is not None and reply.enhanced.startswith("2.")
    client.send(b"DATA\r\nbody\r\n.\r\n")
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [
        (354, None, "End data with <CR><LF>.<CR><LF>"), (250, "2.6.0", "Queued as 1234")]


def test_hook_reply_rejecting_code():
    """A Reply with a 4xx/5xx code rejects like an SMTPError."""
    class H:
        def on_mail_from(self, session, address):
            return Reply(450, "later", "4.7.1")

    _, _, client = connect(H())
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (450, "4.7.1", "later")
    assert client.command("RCPT TO:<b@y.test>").code == 503


def test_hook_raise_smtperror():
    """A hook raising SMTPError rejects with its code, enhanced code and text."""
    _, _, client = connect(Rejector())
    mail(client)
    reply = client.command("RCPT TO:<nobody@y.test>")
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.1.1", "No such user")
    assert client.command("DATA").code == 554


def test_hook_smtperror_without_enhanced_gets_class_code():
    """An SMTPError without an enhanced code is sent with the class default X.0.0."""
    class H:
        def on_mail_from(self, session, address):
            raise SMTPError(451, "try later")

    _, _, client = connect(H())
    ehlo(client)
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced, reply.text) == (451, "4.0.0", "try later")


def test_hook_smtperror_multiline():
    """A multi-line SMTPError text becomes a multi-line reply, each line with the code."""
    class H:
        def on_mail_from(self, session, address):
            raise SMTPError(550, ["one", "two"], "5.7.1")

    _, _, client = connect(H())
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.read() == b"550-5.7.1 one\r\n550 5.7.1 two\r\n"


class DeferredHooks:
    """Hooks that return Deferreds the test fires."""

    def __init__(self) -> None:
        self.pending: List[Deferred] = []

    def _later(self, *args):
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    on_helo = on_mail_from = on_rcpt_to = _later


def test_hook_deferred_fired_later():
    """A hook's Deferred holds the reply until it fires."""
    hooks = DeferredHooks()
    _, _, client = connect(hooks)
    client.send(b"EHLO c.test\r\n")
    assert client.read() == b""
    hooks.pending.pop().callback(None)
    assert client.replies()[0].code == 250
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.read() == b""
    hooks.pending.pop().callback(Reply(250, "ok then", "2.1.0"))
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [(250, "2.1.0", "ok then")]
    client.send(b"RCPT TO:<b@y.test>\r\n")
    hooks.pending.pop().errback(SMTPError(550, "nope", "5.1.1"))
    assert codes(client.replies()) == [(550, "5.1.1")]


def test_hook_already_fired_deferred():
    """A hook returning an already-fired Deferred answers at once."""
    class H:
        def on_mail_from(self, session, address):
            return succeed(None)

    _, _, client = connect(H())
    ehlo(client)
    assert codes([client.command("MAIL FROM:<a@x.test>")]) == [(250, "2.1.0")]


def test_hook_async_awaiting_deferred():
    """An async def hook awaiting a Deferred answers when it returns or raises."""
    gate: List[Deferred] = []

    class H:
        async def on_mail_from(self, session, address):
            d: Deferred = Deferred()
            gate.append(d)
            verdict = await d
            if verdict == "no":
                raise SMTPError(553, "not you", "5.7.1")
            return Reply(250, f"hi {address.local_part}", "2.1.0")

    _, _, client = connect(H())
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    assert client.read() == b""
    gate.pop().callback("no")
    assert [(r.code, r.enhanced, r.text) for r in client.replies()] == [(553, "5.7.1", "not you")]
    client.send(b"MAIL FROM:<bob@x.test>\r\n")
    gate.pop().callback("yes")
    assert [(r.code, r.text) for r in client.replies()] == [(250, "hi bob")]


class Broken:
    """Hooks that fail with an unexpected exception, at once or later."""

    def __init__(self) -> None:
        self.later: List[Deferred] = []

    def on_mail_from(self, session, address):
        raise RuntimeError("secret-internal-detail")

    def on_rcpt_to(self, session, address):
        d: Deferred = Deferred()
        self.later.append(d)
        return d


def test_hook_unexpected_exception_is_451_and_logged():
    """Any other exception is 451 4.3.0 to the client and logged with its traceback."""
    _, _, client = connect(Broken())
    ehlo(client)
    with capturedLogs() as events:
        client.send(b"MAIL FROM:<a@x.test>\r\n")
    raw = client.read()
    assert raw == b"451 4.3.0 Requested action aborted: local error in processing\r\n"
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0].check(RuntimeError)
    assert "on_mail_from" in failures[0].getTraceback()
    assert b"secret" not in raw and b"Traceback" not in raw
    # The transaction did not start.
    assert client.command("RCPT TO:<b@y.test>").code == 503


def test_hook_deferred_failing_later_is_451_and_logged():
    """A Deferred failing later with a non-SMTPError is 451 4.3.0 and logged."""
    class H(Broken):
        def on_mail_from(self, session, address):
            return None

    hooks = H()
    _, _, client = connect(hooks)
    ehlo(client)
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    client.send(b"RCPT TO:<b@y.test>\r\n")
    with capturedLogs() as events:
        hooks.later.pop().errback(KeyError("secret"))
    assert codes(client.replies()) == [(451, "4.3.0")]
    assert any(e.get("log_failure") is not None and e["log_failure"].check(KeyError) for e in events)


def test_hook_returning_garbage_is_451():
    """A hook returning something other than None or a Reply is 451 4.3.0."""
    class H:
        def on_mail_from(self, session, address):
            return "yes please"

    _, _, client = connect(H())
    ehlo(client)
    with capturedLogs() as events:
        reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert any("log_failure" in e for e in events)


def test_hook_timeout():
    """A hook slower than hook_timeout is 451 4.3.0 and the dialogue goes on."""
    hooks = DeferredHooks()
    _, clock, client = connect(hooks, hook_timeout=10, socket_timeout=5)
    client.send(b"EHLO c.test\r\n")
    hooks.pending.pop().callback(None)
    client.replies()
    client.send(b"MAIL FROM:<a@x.test>\r\nNOOP\r\n")
    clock.advance(9.9)
    assert client.read() == b""
    clock.advance(0.1)
    assert codes(client.replies()) == [(451, "4.3.0"), (250, "2.0.0")]
    assert hooks.pending[-1].called  # cancelled
    assert not client.closed


def test_hook_timeout_async_sees_cancel():
    """An async hook past hook_timeout is cancelled inside (CancelledError) and the client gets 451."""
    seen = []

    class H:
        async def on_rcpt_to(self, session, address):
            try:
                await Deferred()
            except CancelledError:
                seen.append("cancelled")
                raise

    _, clock, client = connect(H(), hook_timeout=3)
    mail(client)
    client.send(b"RCPT TO:<b@y.test>\r\n")
    clock.advance(3)
    assert codes(client.replies()) == [(451, "4.3.0")]
    assert seen == ["cancelled"]


def test_on_connect_rejects_and_closes():
    """on_connect raising SMTPError(554) answers 554 in place of the greeting and closes."""
    class H:
        def on_connect(self, session):
            raise SMTPError(554, "go away", "5.7.1")

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    assert client.read() == b"554 5.7.1 go away\r\n"
    assert client.closed
    client.send(b"EHLO c.test\r\n")
    assert client.read() == b""


@pytest.mark.parametrize("style", ["raise", "timeout"])
def test_on_connect_failure_greets_421(style):
    """An on_connect that fails unexpectedly or times out answers 421 (a valid greeting code) and closes."""
    class H:
        def on_connect(self, session):
            if style == "raise":
                raise RuntimeError("database down")
            return Deferred()

    server, clock = make_server(H(), hook_timeout=5)
    client = TestClient(server, greeting=False)
    clock.advance(5)
    reply, = client.replies()
    assert reply.code == 421
    assert client.closed


def test_on_connect_custom_greeting():
    """on_connect returning a Reply replaces the greeting, with no enhanced code."""
    class H:
        def on_connect(self, session):
            return Reply(220, ["mx.test ESMTP custom", "second line"], "2.0.0")

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    assert client.read() == b"220-mx.test ESMTP custom\r\n220 second line\r\n"
    assert not client.closed


def test_on_connect_deferred_holds_greeting():
    """A pending on_connect holds the greeting and any early commands until it fires."""
    gate: List[Deferred] = []

    class H:
        def on_connect(self, session):
            gate.append(Deferred())
            return gate[0]

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    client.send(b"EHLO c.test\r\n")
    assert client.read() == b""
    gate[0].callback(None)
    replies = client.replies()
    assert [r.code for r in replies] == [220, 250]


def test_on_helo_rejects():
    """on_helo raising SMTPError rejects the greeting; the session stays un-greeted."""
    class H:
        def on_helo(self, session, hostname):
            raise SMTPError(550, "bad helo", "5.7.1")

    _, _, client = connect(H())
    reply = client.command("EHLO bad.test")
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.7.1", "bad helo")
    assert client.command("MAIL FROM:<a@x.test>").code == 503


def test_on_helo_custom_reply():
    """on_helo returning a Reply replaces the first line; extensions still follow."""
    class H:
        def on_helo(self, session, hostname):
            return Reply(250, f"hello {hostname}")

    _, _, client = connect(H())
    reply = ehlo(client, "c.test")
    assert reply.lines[0] == "hello c.test" and "PIPELINING" in reply.lines
    assert reply.enhanced is None


def test_ehlo_reply_bytes_match_one_framed_reply():
    """
    The EHLO keyword lines are framed once per server and reused: the wire
    bytes stay what framing the whole reply at once gives, for a multi-line
    custom greeting, for a second connection (the cached tail) and for HELO.
    """
    from txsmtpsrv._errors import format_reply

    class H:
        def on_helo(self, session, hostname):
            return Reply(250, [f"hello {hostname}", "second line"])

    server, _ = make_server(H())
    for name in ("one.test", "two.test"):
        client = TestClient(server, ("192.0.2.7", 4000))
        client.read()
        client.send(f"EHLO {name}\r\n")
        raw = client.read()
        lines = raw.decode().split("\r\n")[:-1]
        assert lines[0] == f"250-hello {name}" and lines[1] == "250-second line"
        assert len(lines) > 3 and lines[-1].startswith("250 ")
        assert raw == format_reply(250, [line[4:] for line in lines], None)
        client.send("HELO again.test\r\n")
        assert client.read() == b"250-hello again.test\r\n250 second line\r\n"  # HELO: no keywords


def test_on_close_called():
    """on_close is called with the session when the connection closes."""
    hooks = Recorder()
    _, _, client = connect(hooks)
    client.command("QUIT")
    assert hooks.calls[-1][0] == "connect"
    client.disconnect()
    assert hooks.calls[-1] == ("close", hooks.calls[0][1])


def test_on_close_failure_is_logged():
    """An on_close hook that raises is logged, not propagated."""
    class H:
        def on_close(self, session):
            raise RuntimeError("close failed")

    _, _, client = connect(H())
    with capturedLogs() as events:
        client.disconnect()
    assert any(e.get("log_failure") is not None and e["log_failure"].check(RuntimeError) for e in events)


def test_async_on_close_failure_is_logged():
    """An async on_close hook that fails after it was called is logged too, with the session id."""
    gate: Deferred = Deferred()

    class H:
        async def on_close(self, session):
            await gate
            raise RuntimeError("close failed later")

    _, _, client = connect(H())
    with capturedLogs() as events:
        client.disconnect()
        assert not any(e.get("log_failure") is not None for e in events)
        gate.callback(None)
    failed = [e for e in events if e.get("log_failure") is not None and e["log_failure"].check(RuntimeError)]
    assert len(failed) == 1 and failed[0].get("session_id")


def test_disconnect_cancels_async_hook():
    """A client vanishing while an async hook awaits cancels it (CancelledError inside)."""
    seen = []

    class H:
        async def on_mail_from(self, session, address):
            try:
                await Deferred()
            except CancelledError:
                seen.append("cancelled")
                raise

    _, _, client = connect(H())
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    client.disconnect()
    assert seen == ["cancelled"]
    assert client.read() == b""


def test_disconnect_cancel_leaves_no_error_in_hook_deferred():
    """Cancelling a pending hook on disconnect leaves no unhandled error in its Deferred."""
    hooks = DeferredHooks()
    _, _, client = connect(hooks)
    client.send(b"EHLO c.test\r\n")
    d = hooks.pending[0]
    with capturedLogs() as events:
        client.disconnect()
    results: list = []
    d.addBoth(results.append)
    assert results == [None]
    assert not any("log_failure" in e for e in events)


# -- observers ----------------------------------------------------------------------------------


def test_observers_called_with_the_right_arguments():
    """Each observer event is called with its documented arguments."""
    server, _ = make_server()
    seen: list = []
    for event in ("connect", "disconnect", "command", "helo", "mail", "rcpt", "message"):
        server.observe(event, lambda *args, event=event: seen.append((event,) + args))
    client = TestClient(server)
    session = client.protocol.session
    client.sendmail("a@x.test", ["b@y.test"], b"12345")
    client.disconnect()
    assert seen[0] == ("connect", session)
    commands = [s[3] for s in seen if s[0] == "command"]
    assert commands == ["client.test", "FROM:<a@x.test>", "TO:<b@y.test>", ""]
    assert all(s[1] is session for s in seen)
    assert ("helo", session, "client.test") in seen
    assert ("mail", session, Address("a@x.test")) in seen
    assert ("rcpt", session, Address("b@y.test")) in seen
    message = [s for s in seen if s[0] == "message"]
    assert len(message) == 1
    _, msession, envelope, size = message[0]
    assert msession is session and size == 7  # b"12345\r\n"
    assert envelope.mail_from == Address("a@x.test") and envelope.rcpt_to == [Address("b@y.test")]
    assert seen[-1] == ("disconnect", session)
    order = [s[0] for s in seen]
    assert order == ["connect", "command", "helo", "command", "mail", "command", "rcpt", "command", "message",
                     "disconnect"]


def test_command_observer_gets_the_verb():
    """The command observer gets the upper-case verb and the argument."""
    server, _ = make_server()
    seen: list = []
    server.observe("command", lambda session, verb, arg: seen.append((verb, arg)))
    client = TestClient(server)
    client.command("ehlo client.test")
    client.command("NOOP")
    assert seen == [("EHLO", "client.test"), ("NOOP", "")]


def test_observers_not_called_on_rejection():
    """mail/rcpt/message observers are not called for rejected steps."""
    server, _ = make_server(Rejector())
    seen: list = []
    for event in ("rcpt", "message"):
        server.observe(event, lambda *args, event=event: seen.append(event))
    client = TestClient(server)
    client.sendmail("a@x.test", ["no@y.test", "reply@y.test"], b"x")
    assert seen == ["rcpt"]


def test_raising_observer_does_not_disturb_dialogue():
    """An observer that raises is logged and the client sees nothing unusual."""
    server, _ = make_server()

    def bad(*args):
        raise RuntimeError("observer bug")

    for event in ("connect", "command", "helo", "mail", "rcpt", "message", "disconnect"):
        server.observe(event, bad)
    with capturedLogs() as events:
        client = TestClient(server)
        replies = client.sendmail("a@x.test", ["b@y.test"], b"x")
        client.disconnect()
    assert client.greeting.code == 220
    assert codes(replies)[-1] == (250, "2.0.0")
    assert sum(1 for e in events if e.get("log_failure") is not None and e["log_failure"].check(RuntimeError)) == 10


def test_observer_failing_deferred_is_logged():
    """An observer returning a failing Deferred is logged, not left unhandled."""
    server, _ = make_server()
    d: Deferred = Deferred()
    server.observe("connect", lambda s: d)
    client = TestClient(server)
    with capturedLogs() as events:
        d.errback(RuntimeError("late"))
    assert client.greeting.code == 220
    assert any(e.get("log_failure") is not None for e in events)


def test_observe_unknown_event():
    """observe() with an unknown event is ValueError."""
    server, _ = make_server()
    with pytest.raises(ValueError, match="bogus"):
        server.observe("bogus", print)


def test_observe_unsubscribe():
    """The function observe() returns removes the observer."""
    server, _ = make_server()
    seen: list = []
    stop = server.observe("command", lambda *a: seen.append(a[2]))
    client = TestClient(server)
    client.command("NOOP first")
    stop()
    client.command("NOOP second")
    assert seen == ["first"]


# -- session and address ---------------------------------------------------------------------------


def test_session_fields():
    """The session carries ids, addresses, ports and the client host name."""
    server, _ = make_server()
    a = TestClient(server, peer=("198.51.100.7", 5555), host=("203.0.113.1", 587))
    b = TestClient(server)
    s = a.protocol.session
    assert s.id != b.protocol.session.id and s.id
    assert (s.remote_address, s.remote_port, s.local_address, s.local_port) == ("198.51.100.7", 5555,
                                                                                "203.0.113.1", 587)
    assert s.client_hostname == "[198.51.100.7]"
    assert (s.host_name_appears_as, s.opening_command, s.transaction) == ("", "", 0)
    assert s.secure is False and s.user is None


def test_session_ipv6_peer():
    """An IPv6 peer's address is recorded in the session."""
    server, _ = make_server()
    client = TestClient(server, peer=("2001:db8::5", 1234), host=("2001:db8::1", 25))
    s = client.protocol.session
    assert (s.remote_address, s.remote_port, s.local_address) == ("2001:db8::5", 1234, "2001:db8::1")
    assert s.client_hostname == "[IPv6:2001:db8::5]"
    assert client.greeting.code == 220


def test_session_tracks_helo_and_transactions():
    """HELO/EHLO set host_name_appears_as and opening_command; each accepted MAIL counts a transaction."""
    server, _ = make_server()
    client = TestClient(server)
    s = client.protocol.session
    client.command("HELO first.test")
    assert (s.host_name_appears_as, s.opening_command, s.transmission_type) == ("first.test", "HELO", "SMTP")
    client.command("EHLO second.test")
    assert (s.host_name_appears_as, s.opening_command, s.transmission_type) == ("second.test", "EHLO", "ESMTP")
    client.command("MAIL FROM:<a@x.test>")
    assert s.transaction == 1
    client.command("RSET")
    client.command("MAIL FROM:<a b>")
    assert s.transaction == 1
    client.command("MAIL FROM:<a@x.test> SMTPUTF8")
    assert s.transaction == 2
    assert s.transmission_type == "UTF8SMTP"
    client.command("RSET")
    assert s.transmission_type == "ESMTP"


def test_address_parts():
    """Address splits at the last @ and knows whether it needs SMTPUTF8."""
    a = Address('"odd@local"@example.test', {"SIZE": "1"})
    assert (a.local_part, a.domain, a.params, a.utf8) == ('"odd@local"', "example.test", {"SIZE": "1"}, False)
    assert str(a) == '"odd@local"@example.test'
    assert (Address("").local_part, Address("").domain) == ("", "")
    assert (Address("postmaster").local_part, Address("postmaster").domain) == ("postmaster", "")
    assert Address("jörg@x.test").utf8
    assert Address("a@x.test", {"A": "1"}) == Address("a@x.test", {"A": "1"})


def test_command_observer_never_sees_auth_initial_response():
    """The command observer sees only the mechanism of AUTH, never the initial response."""
    import base64

    class H:
        def on_auth(self, session, credentials):
            return "user"

    server, _ = make_server(H(), allow_insecure_auth=True)
    seen: list = []
    server.observe("command", lambda session, verb, arg: seen.append(arg))
    client = TestClient(server)
    ehlo(client)
    secret = base64.b64encode(b"\0user\0hunter2").decode()
    client.command(f"AUTH PLAIN {secret}")
    assert secret not in " ".join(seen)
