# -*- test-case-name: tests.test_dsn -*-
"""
Tests for the DSN extension (RFC 3461) in L{txsmtpsrv._protocol} and
L{txsmtpsrv._commands}: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT,
decoded and handed to hooks on the envelope and the recipient addresses.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv import Reply
from txsmtpsrv._commands import CommandError, parse_envid, parse_notify, parse_orcpt
from txsmtpsrv._xclient import xtext_encode
from txsmtpsrv.testing import TestClient, make_server


class Recorder:
    """Hooks that record what they are shown at RCPT and at DATA."""

    def __init__(self) -> None:
        self.rcpt: List[Any] = []  # (address, envelope.dsn_ret, envelope.dsn_envid)
        self.data: List[Any] = []  # (dsn_ret, dsn_envid, [(address, notify, orcpt)], rcpt objects)

    def on_rcpt_to(self, session, address):
        env = session.envelope
        self.rcpt.append((address, env.dsn_ret, env.dsn_envid))

    async def on_data(self, session, stream):
        await stream.content()
        env = session.envelope
        self.data.append((env.dsn_ret, env.dsn_envid, [(a.address, a.notify, a.orcpt) for a in env.rcpt_to],
                          list(env.rcpt_to)))


def greeted(hooks: Any = None, **options: Any) -> TestClient:
    """A client that has sent EHLO."""
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    return client


def code(reply: Reply) -> Tuple[int, Optional[str]]:
    """(code, enhanced) of a reply."""
    return reply.code, reply.enhanced


def mail(params: str, **options: Any) -> Tuple[Reply, TestClient]:
    """MAIL FROM with C{params} on a fresh session; the reply and the client."""
    client = greeted(Recorder(), **options)
    return client.command(f"MAIL FROM:<s@example.test> {params}"), client


def rcpt(params: str, **options: Any) -> Tuple[Reply, TestClient]:
    """RCPT TO with C{params} after a plain MAIL; the reply and the client."""
    client = greeted(Recorder(), **options)
    assert client.command("MAIL FROM:<s@example.test>").code == 250
    return client.command(f"RCPT TO:<r@example.test> {params}"), client


# -- advertising ---------------------------------------------------------------------


def test_dsn_advertised():
    """EHLO advertises DSN by default."""
    server, _ = make_server()
    assert "DSN" in TestClient(server).command("EHLO c.test").lines


@pytest.mark.parametrize("command", [
    "MAIL FROM:<s@example.test> RET=FULL",
    "MAIL FROM:<s@example.test> ENVID=abc",
    "RCPT TO:<r@example.test> NOTIFY=NEVER",
    "RCPT TO:<r@example.test> ORCPT=rfc822;r@example.test",
])
def test_hide_dsn(command):
    """hide_dsn: DSN is not offered and each DSN parameter is 555 5.5.4."""
    server, _ = make_server(hide_dsn=True)
    client = TestClient(server)
    assert "DSN" not in client.command("EHLO c.test").lines
    if command.startswith("RCPT"):
        assert client.command("MAIL FROM:<s@example.test>").code == 250
    assert code(client.command(command)) == (555, "5.5.4")


def test_dsn_parameters_need_ehlo():
    """After HELO, MAIL parameters (DSN ones included) are refused."""
    server, _ = make_server()
    client = TestClient(server)
    client.command("HELO c.test")
    assert code(client.command("MAIL FROM:<s@example.test> RET=HDRS")) == (555, "5.5.4")


def test_rcpt_dsn_parameters_need_ehlo():
    """After HELO, RCPT parameters such as NOTIFY are refused like MAIL ones (no ESMTP session)."""
    server, _ = make_server()
    client = TestClient(server)
    client.command("HELO c.test")
    assert client.command("MAIL FROM:<s@example.test>").code == 250
    assert code(client.command("RCPT TO:<r@example.test> NOTIFY=SUCCESS")) == (555, "5.5.4")


# -- RET -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [("FULL", "FULL"), ("HDRS", "HDRS"), ("full", "FULL"),
                                            ("Hdrs", "HDRS")])
def test_ret(value, expected):
    """RET=FULL|HDRS, in any case, is stored upper-cased on the envelope."""
    reply, client = mail(f"RET={value}")
    assert code(reply) == (250, "2.1.0")
    assert client.protocol.session.envelope.dsn_ret == expected


@pytest.mark.parametrize("params", ["RET=BODY", "RET=", "RET", "RET=FULLY", "RET=FULL RET=HDRS"])
def test_bad_ret(params):
    """A RET that is not FULL or HDRS (or given twice) is 501 5.5.4 and starts no transaction."""
    reply, client = mail(params)
    assert code(reply) == (501, "5.5.4")
    assert client.protocol.session.envelope.mail_from is None
    assert client.command("RCPT TO:<r@example.test>").code == 503


def test_no_dsn_parameters():
    """Without DSN parameters every DSN field is None."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\nx\r\n.\r\n")
    assert [r.code for r in client.replies()] == [250, 250, 354, 250]
    assert hooks.data[0][:3] == (None, None, [("r@example.test", None, None)])


# -- ENVID -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("ab+2Bc", "ab+c"),
    ("QQ+3Dx", "QQ=x"),
    ("+41+42", "AB"),
    ("plain-id.123@host", "plain-id.123@host"),
    ("x" * 100, "x" * 100),
])
def test_envid_decoded(value, expected):
    """ENVID is xtext-decoded onto envelope.dsn_envid."""
    reply, client = mail(f"ENVID={value}")
    assert code(reply) == (250, "2.1.0")
    assert client.protocol.session.envelope.dsn_envid == expected


@pytest.mark.parametrize("value", ["ab+2b", "ab+2", "ab+", "ab+ZZ", "x" * 101, "", None])
def test_bad_envid(value):
    """Bad xtext (lower-case hex, short escape), too long, or empty: 501 5.5.4."""
    reply, _ = mail("ENVID" if value is None else f"ENVID={value}")
    assert code(reply) == (501, "5.5.4")


@pytest.mark.parametrize("value", ["a+00b", "a+0Db", "a+7Fb", "a+C3+A9"])
def test_envid_must_decode_to_printable_ascii(value):
    """An ENVID decoding to a control or non-ASCII character is 501 5.5.4."""
    reply, _ = mail(f"ENVID={value}")
    assert code(reply) == (501, "5.5.4")


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=33))
def test_envid_round_trip(text):
    """Any printable ASCII ENVID, xtext-encoded by the client, arrives decoded as it was."""
    encoded = xtext_encode(text)
    assert len(encoded) <= 100
    reply, client = mail(f"ENVID={encoded}")
    assert reply.code == 250
    assert client.protocol.session.envelope.dsn_envid == text


# -- NOTIFY ------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("NEVER", ("NEVER",)),
    ("never", ("NEVER",)),
    ("SUCCESS", ("SUCCESS",)),
    ("SUCCESS,FAILURE,DELAY", ("SUCCESS", "FAILURE", "DELAY")),
    ("delay,Failure", ("DELAY", "FAILURE")),
])
def test_notify(value, expected):
    """NOTIFY=NEVER or a list of SUCCESS/FAILURE/DELAY becomes Address.notify (upper-cased)."""
    hooks = Recorder()
    client = greeted(hooks)
    client.command("MAIL FROM:<s@example.test>")
    assert code(client.command(f"RCPT TO:<r@example.test> NOTIFY={value}")) == (250, "2.1.5")
    address = hooks.rcpt[0][0]
    assert address.notify == expected
    assert address.params == {"NOTIFY": value}
    assert client.protocol.session.envelope.rcpt_to == [address]


@pytest.mark.parametrize("value", [
    "NEVER,SUCCESS", "SUCCESS,NEVER", "FAILURE,NEVER,DELAY",  # NEVER combined with others
    "SOMETIMES", "SUCCESS,BOGUS", "",  # unknown values
    "SUCCESS,SUCCESS", "DELAY,FAILURE,DELAY", "NEVER,NEVER",  # duplicates
    "SUCCESS,", ",SUCCESS", "SUCCESS,,FAILURE",  # empty items
])
def test_bad_notify(value):
    """NEVER combined, unknown, duplicated or empty NOTIFY values: 501 5.5.4, recipient not added."""
    reply, client = rcpt(f"NOTIFY={value}")
    assert code(reply) == (501, "5.5.4")
    assert client.protocol.session.envelope.rcpt_to == []


def test_notify_without_value():
    """NOTIFY without "=value" is 501 5.5.4."""
    reply, _ = rcpt("NOTIFY")
    assert code(reply) == (501, "5.5.4")


def test_notify_given_twice():
    """Two NOTIFY parameters on one RCPT: 501 5.5.4."""
    reply, _ = rcpt("NOTIFY=SUCCESS NOTIFY=FAILURE")
    assert code(reply) == (501, "5.5.4")


# -- ORCPT -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("rfc822;a+40b", ("rfc822", "a@b")),
    ("RFC822;bob@example.test", ("rfc822", "bob@example.test")),
    ("rfc822;first+20last+2B@example.test", ("rfc822", "first last+@example.test")),
    ("utf-8;j\\x{F6}rg@example.test", ("utf-8", "jörg@example.test")),
    ("UTF-8;\\x{1F600}@example.test", ("utf-8", "\U0001F600@example.test")),
    ("x-local;mailbox", ("x-local", "mailbox")),
])
def test_orcpt(value, expected):
    """ORCPT=type;xtext becomes Address.orcpt as (lower-cased type, decoded address)."""
    hooks = Recorder()
    client = greeted(hooks)
    client.command("MAIL FROM:<s@example.test>")
    assert code(client.command(f"RCPT TO:<r@example.test> ORCPT={value}")) == (250, "2.1.5")
    assert hooks.rcpt[0][0].orcpt == expected


@pytest.mark.parametrize("value", [
    "rfc822",  # missing ';'
    "rfc822a@b",
    "rfc822;",  # no address
    ";a@b",  # no type
    "rfc 822;a@b".replace(" ", "+"),  # bad type character
    "rfc822;a+4",  # bad xtext
    "rfc822;a+4g",
    "rfc822;" + "x" * 500,  # too long
])
def test_bad_orcpt(value):
    """Malformed ORCPT values: 501 5.5.4."""
    reply, client = rcpt(f"ORCPT={value}")
    assert code(reply) == (501, "5.5.4")
    assert client.protocol.session.envelope.rcpt_to == []


def test_orcpt_without_value():
    """ORCPT without "=value" is 501 5.5.4."""
    reply, _ = rcpt("ORCPT")
    assert code(reply) == (501, "5.5.4")


# -- what hooks see ------------------------------------------------------------------


def test_values_reach_hooks_and_envelope():
    """RET/ENVID on session.envelope, NOTIFY/ORCPT on each Address, kept in envelope.rcpt_to."""
    hooks = Recorder()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<s@example.test> RET=hdrs ENVID=QQ+2B1\r\n"
                b"RCPT TO:<a@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40example.test\r\n"
                b"RCPT TO:<b@example.test> NOTIFY=NEVER\r\n"
                b"RCPT TO:<c@example.test>\r\n"
                b"DATA\r\nhello\r\n.\r\n")
    assert [r.code for r in client.replies()] == [250, 250, 250, 250, 354, 250]
    assert [(a.address, ret, envid) for a, ret, envid in hooks.rcpt] == [
        ("a@example.test", "HDRS", "QQ+1"), ("b@example.test", "HDRS", "QQ+1"), ("c@example.test", "HDRS", "QQ+1")]
    ret, envid, rcpts, objects = hooks.data[0]
    assert (ret, envid) == ("HDRS", "QQ+1")
    assert rcpts == [("a@example.test", ("SUCCESS", "FAILURE"), ("rfc822", "a@example.test")),
                     ("b@example.test", ("NEVER",), None),
                     ("c@example.test", None, None)]
    # The very Address objects on_rcpt_to saw are the ones kept.
    assert all(kept is seen[0] for kept, seen in zip(objects, hooks.rcpt))


def test_mail_params_keep_raw_values():
    """The raw ESMTP values stay in Address.params of the sender."""
    seen: List[Any] = []

    class Hooks:
        def on_mail_from(self, session, address):
            seen.append(address.params)

    client = greeted(Hooks())
    assert client.command("MAIL FROM:<s@example.test> RET=FULL ENVID=ab+2Bc").code == 250
    assert seen == [{"RET": "FULL", "ENVID": "ab+2Bc"}]


def test_dsn_values_reset_with_transaction():
    """A new transaction starts without the previous one's DSN values."""
    client = greeted(Recorder())
    client.command("MAIL FROM:<s@example.test> RET=FULL ENVID=one")
    client.command("RSET")
    env = client.protocol.session.envelope
    assert (env.dsn_ret, env.dsn_envid) == (None, None)
    client.command("MAIL FROM:<s@example.test> ENVID=two")
    env = client.protocol.session.envelope
    assert (env.dsn_ret, env.dsn_envid) == (None, "two")


def test_refused_recipient_not_kept():
    """A recipient refused by the hook is not in envelope.rcpt_to even with DSN parameters."""
    from txsmtpsrv import SMTPError

    class Hooks:
        def on_rcpt_to(self, session, address):
            if address.notify == ("NEVER",):
                raise SMTPError(550, "I insist on DSNs", "5.7.1")

    client = greeted(Hooks())
    client.command("MAIL FROM:<s@example.test>")
    assert code(client.command("RCPT TO:<a@example.test> NOTIFY=NEVER")) == (550, "5.7.1")
    assert code(client.command("RCPT TO:<b@example.test> NOTIFY=DELAY")) == (250, "2.1.5")
    assert [(a.address, a.notify) for a in client.protocol.session.envelope.rcpt_to] == [
        ("b@example.test", ("DELAY",))]


def test_dsn_with_lmtp_and_bdat():
    """DSN values travel the same way over LMTP with BDAT."""
    hooks = Recorder()
    server, _ = make_server(hooks, lmtp=True)
    client = TestClient(server)
    client.send(b"LHLO c.test\r\nMAIL FROM:<s@example.test> RET=FULL ENVID=e1\r\n"
                b"RCPT TO:<a@example.test> NOTIFY=DELAY ORCPT=rfc822;a@example.test\r\nBDAT 2 LAST\r\nhi")
    assert [r.code for r in client.replies()] == [250, 250, 250, 250]
    assert hooks.data[0][:3] == ("FULL", "e1", [("a@example.test", ("DELAY",), ("rfc822", "a@example.test"))])


# -- the parsers directly ------------------------------------------------------------------


def test_parsers_directly():
    """The sans-IO parsers give the same answers as the dialogue."""
    assert parse_notify("success,delay") == ("SUCCESS", "DELAY")
    assert parse_orcpt("rfc822;a+40b") == ("rfc822", "a@b")
    assert parse_envid("ab+2Bc") == "ab+c"
    for call in (lambda: parse_notify("NEVER,DELAY"), lambda: parse_orcpt("rfc822"),
                 lambda: parse_envid("x" * 101), lambda: parse_notify(None)):
        with pytest.raises(CommandError) as e:
            call()
        assert (e.value.code, e.value.enhanced) == (501, "5.5.4")
