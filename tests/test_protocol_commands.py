# -*- test-case-name: tests.test_protocol_commands -*-
"""
Tests for L{txsmtpsrv._protocol}: the commands around a mail transaction, in
memory through L{txsmtpsrv.testing}: the greeting, EHLO/HELO and what EHLO
advertises, RSET, NOOP, QUIT, VRFY, EXPN, HELP, unknown and disabled commands,
and that hide_enhancedstatuscodes leaves no enhanced code on any reply. The
mail transaction itself is in C{test_protocol_transaction.py}.
"""

from __future__ import annotations

import pytest

from txsmtpsrv.testing import TestClient, make_server
from tests._memory import ENHANCED_ON_WIRE, Recorder, Rejector, codes, connect, ehlo, rcpt


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


@pytest.mark.parametrize("option, keywords", [
    ("hide_pipelining", {"PIPELINING"}),
    # RFC 6531 3.1 item 8: a server offering SMTPUTF8 must offer 8BITMIME.
    ("hide_8bitmime", {"8BITMIME", "SMTPUTF8"}),
    ("hide_smtputf8", {"SMTPUTF8"}),
    ("hide_enhancedstatuscodes", {"ENHANCEDSTATUSCODES"}),
])
def test_hide_option_removes_keyword(option, keywords):
    """Each hide_* option removes exactly its keyword from the EHLO reply (8BITMIME takes SMTPUTF8 along)."""
    _, _, plain = connect()
    _, _, client = connect(**{option: True})
    assert set(ehlo(plain).lines) - set(ehlo(client).lines) == keywords
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
