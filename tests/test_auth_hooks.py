# -*- test-case-name: tests.test_auth_hooks -*-
"""
SMTP AUTH hook outcomes, in memory: what the server replies when on_auth
rejects, returns None or False, raises, returns a Deferred or a coroutine or a
custom reply, what the session then records, and CredAuthenticator checking
every mechanism against a twisted.cred checker.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, eventAsText

from txsmtpsrv import CredAuthenticator, Reply, SMTPError

from tests._smtpauth import ALL, AuthHooks, PASSWORD, PendingHooks, b64, code, connect, cram_answer, plain_ir


# -- hook outcomes ---------------------------------------------------------------------


def test_wrong_password():
    """A hook raising SMTPError(535) gives 535 5.7.8."""
    client = connect()
    assert code(client.command("AUTH PLAIN " + plain_ir(password="wrong"))) == (535, "5.7.8")
    assert client.protocol.session.user is None


def test_hook_returns_none():
    """A hook returning None fails closed: 535 5.7.8."""
    class Hooks:
        def on_auth(self, session, credentials):
            return None

    client = connect(Hooks())
    reply = client.command("AUTH PLAIN " + plain_ir())
    assert code(reply) == (535, "5.7.8")
    assert client.protocol.session.user is None


def test_hook_returns_false():
    """A hook returning False (a failed check) must not authenticate: 535 5.7.8."""
    class Hooks:
        def on_auth(self, session, credentials):
            return credentials.validate_password("the-real-password")

    client = connect(Hooks())
    reply = client.command("AUTH PLAIN " + plain_ir(password="wrong"))
    assert code(reply) == (535, "5.7.8")
    assert client.protocol.session.user is None


def test_hook_smtp_error_passes_through():
    """An SMTPError other than 535 from the hook is sent as is."""
    class Hooks:
        def on_auth(self, session, credentials):
            raise SMTPError(454, "Temporary authentication failure", "4.7.0")

    client = connect(Hooks())
    reply = client.command("AUTH PLAIN " + plain_ir())
    assert (reply.code, reply.enhanced, reply.text) == (454, "4.7.0", "Temporary authentication failure")
    assert client.protocol.session.user is None


def test_hook_exception_is_454():
    """Any other exception is 454 4.7.0 (RFC 4954 6); it is logged, never shown to the client."""
    class Hooks:
        def on_auth(self, session, credentials):
            raise RuntimeError("database exploded")

    with capturedLogs() as events:
        client = connect(Hooks())
        reply = client.command("AUTH PLAIN " + plain_ir())
    assert code(reply) == (454, "4.7.0")
    assert "exploded" not in reply.text
    text = "\n".join(eventAsText(e) for e in events)
    assert "database exploded" in text
    assert PASSWORD not in text
    assert client.protocol.session.user is None


def test_hook_deferred():
    """A Deferred hook: the reply (and pipelined commands) wait for it."""
    hooks = PendingHooks()
    client = connect(hooks)
    client.send(f"AUTH PLAIN {plain_ir()}\r\nNOOP\r\n")
    assert client.replies() == []
    hooks.pending[0].callback("alice-avatar")
    assert [code(r) for r in client.replies()] == [(235, "2.7.0"), (250, "2.0.0")]
    assert client.protocol.session.user == "alice-avatar"


def test_hook_deferred_failure():
    """A Deferred hook failing with SMTPError(535) gives 535."""
    hooks = PendingHooks()
    client = connect(hooks)
    client.send(f"AUTH PLAIN {plain_ir()}\r\n")
    hooks.pending[0].errback(SMTPError(535, "No", "5.7.8"))
    assert [code(r) for r in client.replies()] == [(535, "5.7.8")]


def test_hook_async_def():
    """An async def hook works like a synchronous one."""
    gate: Deferred[Any] = Deferred()

    class Hooks:
        async def on_auth(self, session, credentials):
            await gate
            return {"name": credentials.username}

    client = connect(Hooks())
    client.send(f"AUTH PLAIN {plain_ir()}\r\n")
    assert client.replies() == []
    gate.callback(None)
    assert [code(r) for r in client.replies()] == [(235, "2.7.0")]
    assert client.protocol.session.user == {"name": "alice"}


def test_hook_custom_success_reply():
    """A Reply(235, ...) from the hook chooses the success text."""
    class Hooks:
        def on_auth(self, session, credentials):
            return Reply(235, "Welcome")

    client = connect(Hooks())
    reply = client.command("AUTH PLAIN " + plain_ir())
    assert (reply.code, reply.text) == (235, "Welcome")
    assert reply.enhanced == "2.7.0"
    assert client.protocol.session.user == "alice"


def test_session_user_is_hook_result():
    """session.user is exactly the object the hook returned; transmission type becomes ESMTPA."""
    avatar = object()
    client = connect(AuthHooks(result=avatar))
    session = client.protocol.session
    assert session.transmission_type == "ESMTP"
    assert client.command("AUTH PLAIN " + plain_ir()).code == 235
    assert session.user is avatar
    assert session.transmission_type == "ESMTPA"


def test_esmtpa_in_message():
    """A message sent after AUTH is received with ESMTPA and the user."""
    hooks = AuthHooks()
    client = connect(hooks)
    assert client.command("AUTH PLAIN " + plain_ir()).code == 235
    replies = client.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nhi\r\n", ehlo=None)
    assert replies[-1].code == 250
    assert hooks.messages == [("alice", "ESMTPA")]


# -- twisted.cred ----------------------------------------------------------------------------


class CredHooks:
    """Hooks whose on_auth is a CredAuthenticator over an in-memory database."""

    def __init__(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=PASSWORD.encode())
        self.on_auth = CredAuthenticator(checker)


@pytest.mark.parametrize("password, expected", [(PASSWORD, (235, "2.7.0")), ("wrong", (535, "5.7.8"))])
def test_cred_plain(password, expected):
    """CredAuthenticator checks PLAIN against the twisted.cred checker."""
    client = connect(CredHooks(), auth_methods=ALL)
    assert code(client.command("AUTH PLAIN " + plain_ir(password=password))) == expected
    assert client.protocol.session.user == (b"alice" if expected[0] == 235 else None)


@pytest.mark.parametrize("password, expected", [(PASSWORD, (235, "2.7.0")), ("wrong", (535, "5.7.8"))])
def test_cred_login(password, expected):
    """CredAuthenticator checks LOGIN against the twisted.cred checker."""
    client = connect(CredHooks(), auth_methods=ALL)
    client.command("AUTH LOGIN")
    client.command(b64("alice"))
    assert code(client.command(b64(password))) == expected


@pytest.mark.parametrize("password, expected", [(PASSWORD, (235, "2.7.0")), ("wrong", (535, "5.7.8"))])
def test_cred_cram_md5(password, expected):
    """CredAuthenticator checks CRAM-MD5 digests against stored passwords."""
    client = connect(CredHooks(), auth_methods=ALL)
    reply = client.command("AUTH CRAM-MD5")
    assert code(client.command(cram_answer(reply.text, password=password))) == expected
    assert client.protocol.session.transmission_type == ("ESMTPA" if expected[0] == 235 else "ESMTP")


def test_cred_unknown_user():
    """An unknown user through CredAuthenticator is 535 5.7.8."""
    client = connect(CredHooks())
    assert code(client.command("AUTH PLAIN " + plain_ir(user="mallory"))) == (535, "5.7.8")
