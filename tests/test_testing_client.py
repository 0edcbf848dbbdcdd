# -*- test-case-name: tests.test_testing_client -*-
"""
TestClient follows the server's mode (LMTP), speaks STARTTLS and implicit
TLS in memory, and Pending gives slow hooks: the public in-memory helpers.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.interfaces import ISSLTransport, ITLSTransport

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv.testing import (ImplicitTLSStringTransport, Pending, Replies, TestClient, TLSStringTransport,
                               make_server, test_ca)

BODY = b"Subject: t\r\n\r\nhello\r\n"


def tls_server(hooks: Any = None, **options: Any) -> Any:
    """A server with a real certificate from the throwaway CA (no development-certificate warning)."""
    return make_server(hooks, tls=test_ca().server_config(["mx.test"]), **options)[0]


def test_lmtp_sendmail_sends_lhlo_and_returns_per_recipient_replies():
    """sendmail() to an LMTP server: LHLO, and one final reply per accepted recipient."""
    class Hooks:
        def on_rcpt_to(self, session: Any, address: Any) -> None:
            if address.local_part == "nobody":
                raise SMTPError(550, "No such user", "5.1.1")

        async def on_data(self, session: Any, stream: Any) -> List[Any]:
            await stream.content()
            return [None, SMTPError(452, "Mailbox full", "4.2.2")]

    client = TestClient(make_server(Hooks(), lmtp=True)[0])
    assert client.lmtp and client.greeting is not None and "LMTP" in client.greeting.text
    replies = client.sendmail("a@x.test", ["one@y.test", "nobody@y.test", "two@y.test"], BODY)
    assert isinstance(replies, Replies)
    assert [r.code for r in replies] == [250, 250, 250, 550, 250, 354, 250, 452]
    assert client.session.opening_command == "LHLO"
    assert [(rcpt, r.code) for rcpt, r in replies.recipients] == [("one@y.test", 250), ("two@y.test", 452)]


def test_smtp_sendmail_recipients_share_the_one_verdict():
    """In SMTP every accepted recipient gets the single reply to the message."""
    client = TestClient(make_server()[0])
    replies = client.sendmail("a@x.test", ["b@y.test", "c@y.test"], BODY)
    assert client.session.opening_command == "EHLO"
    assert [(rcpt, r.code) for rcpt, r in replies.recipients] == [("b@y.test", 250), ("c@y.test", 250)]


def test_recipients_empty_while_a_hook_is_pending():
    """Replies not yet sent (a slow hook) leave recipients empty, not wrong."""
    hooks = Pending("on_rcpt_to")
    client = TestClient(make_server(hooks)[0])
    replies = client.sendmail("a@x.test", ["b@y.test"], BODY)
    assert [r.code for r in replies] == [250, 250] and replies.recipients == []
    hooks.deferreds[0].callback(None)
    assert [r.code for r in client.replies()] == [250, 354, 250]


def test_ehlo_follows_the_mode_and_accepts_a_spelled_out_command():
    """ehlo() sends LHLO to LMTP, EHLO to SMTP; 'HELO x' is sent as written."""
    lmtp = TestClient(make_server(lmtp=True)[0])
    assert lmtp.ehlo().code == 250 and lmtp.session.opening_command == "LHLO"
    smtp = TestClient(make_server()[0])
    assert smtp.sendmail("a@x.test", ["b@y.test"], BODY, ehlo="HELO old.test")[0].code == 250
    assert smtp.session.opening_command == "HELO"


def test_lmtp_mail_before_lhlo_says_lhlo():
    """An LMTP server's 503 before the greeting command names LHLO, not HELO/EHLO."""
    client = TestClient(make_server(lmtp=True)[0])
    reply = client.command("MAIL FROM:<a@x.test>")
    assert (reply.code, reply.enhanced) == (503, "5.5.1")
    assert "LHLO" in reply.text and "EHLO" not in reply.text
    smtp = TestClient(make_server()[0])
    assert "HELO/EHLO" in smtp.command("MAIL FROM:<a@x.test>").text


def test_starttls_in_memory():
    """tls='starttls': STARTTLS offered, 220, the server's context recorded, on_secure and session.secure."""
    secured: List[bool] = []

    class Hooks:
        def on_secure(self, session: Any) -> None:
            secured.append(session.secure)

    client = TestClient(tls_server(Hooks()), tls="starttls")
    assert isinstance(client.transport, TLSStringTransport)
    assert "STARTTLS" in client.ehlo().lines[1:]
    reply = client.starttls()
    assert (reply.code, reply.enhanced) == (220, "2.0.0")
    assert len(client.transport.tls_contexts) == 1 and ISSLTransport.providedBy(client.transport)
    assert secured == [True] and client.session.secure
    assert "STARTTLS" not in client.ehlo().lines[1:]
    assert client.sendmail("a@x.test", ["b@y.test"], BODY)[-1].code == 250


def test_starttls_without_handshake_then_handshake():
    """handshake=False stops between 220 and the end of the handshake; handshake() finishes it."""
    client = TestClient(tls_server(), tls="starttls")
    client.ehlo()
    client.starttls(handshake=False)
    assert not client.session.secure
    client.handshake()
    assert client.session.secure


def test_starttls_refused_reply_is_returned():
    """starttls() returns the refusal as it is (here 502: hidden) and starts nothing."""
    client = TestClient(tls_server(hide_starttls=True), tls="starttls")
    client.ehlo()
    assert client.starttls().code == 502
    assert client.transport.tls_contexts == []


def test_starttls_needs_a_tls_transport():
    """A plain TestClient cannot start TLS: a clear error, not a silent no-op."""
    client = TestClient(tls_server())
    assert not ITLSTransport.providedBy(client.transport)
    with pytest.raises(RuntimeError, match="tls='starttls'"):
        client.starttls()


def test_implicit_tls_in_memory():
    """tls='implicit': TLS from the start, handshake completed after the greeting."""
    client = TestClient(tls_server(), tls="implicit")
    assert isinstance(client.transport, ImplicitTLSStringTransport)
    assert client.greeting is not None and client.greeting.code == 220
    assert client.session.secure
    assert "STARTTLS" not in client.ehlo().lines[1:]


def test_bad_tls_argument():
    with pytest.raises(ValueError):
        TestClient(make_server()[0], tls="yes")


def test_pending_is_public_and_records_calls():
    """Pending answers with Deferreds the test fires; replies wait for them, in order."""
    hooks = Pending("on_mail_from")
    client = TestClient(make_server(hooks)[0])
    client.ehlo()
    client.send("MAIL FROM:<a@x.test>\r\nNOOP\r\n")
    assert client.replies() == [] and len(hooks.calls) == 1
    hooks.deferreds[0].errback(SMTPError(550, "Go away", "5.7.1"))
    assert [(r.code, r.enhanced) for r in client.replies()] == [(550, "5.7.1"), (250, "2.0.0")]


def test_reply_is_still_a_reply():
    assert isinstance(TestClient(make_server()[0]).ehlo(), Reply)
