# -*- test-case-name: tests.test_protocol_transaction -*-
"""
Tests for L{txsmtpsrv._protocol}: the mail transaction, in memory through
L{txsmtpsrv.testing}: MAIL (addresses, SIZE, BODY, SMTPUTF8, parameters),
RCPT (addresses, postmaster, limits, parameters) and DATA (ordering, the
body delivered byte for byte, the reset after a message).
"""

from __future__ import annotations

import pytest

from txsmtpsrv import Address
from tests._memory import Recorder, answer, codes, connect, ehlo, mail, rcpt


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


def test_mail_smtputf8_not_offered_without_8bitmime():
    """With hide_8bitmime SMTPUTF8 is not offered (RFC 6531 3.1 item 8), so on MAIL it is unknown too."""
    assert answer("MAIL FROM:<a@x.test> SMTPUTF8", hide_8bitmime=True) == (555, "5.5.4")


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
