# -*- test-case-name: tests.test_auth -*-
"""
SMTP AUTH (RFC 4954) through the protocol, in memory: advertisement, every
mechanism, every error reply, hook outcomes, the auth-required policy, and
that secrets never reach observers or logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, eventAsText

from txsmtpsrv import CredAuthenticator, Credentials, Reply, SMTPError
from txsmtpsrv.testing import TestClient, make_server

ALL = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")
PASSWORD = "s3cret-Pa55"
TOKEN = "ya29.tok-EN-xyz"


def b64(data: bytes | str) -> str:
    """Base64 text for a SASL line."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def plain_ir(user: str = "alice", password: str = PASSWORD, authzid: str = "") -> str:
    """A PLAIN initial response."""
    return b64(f"{authzid}\0{user}\0{password}")


def xoauth2_ir(user: str = "alice", token: str = TOKEN) -> str:
    """An XOAUTH2 initial response."""
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def cram_answer(challenge_b64: str, user: str = "alice", password: str = PASSWORD) -> str:
    """The CRAM-MD5 answer a client knowing C{password} sends."""
    challenge = base64.b64decode(challenge_b64)
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}")


class PendingHooks:
    """on_auth returns a new Deferred, kept in C{pending}, for the test to fire."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def on_auth(self, session, credentials):
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


class AuthHooks:
    """Accepts alice with PASSWORD (or TOKEN for XOAUTH2); records every call."""

    def __init__(self, result: Any = "USER") -> None:
        self.calls: list[Credentials] = []
        self.result = result
        self.messages: list[tuple[Any, str]] = []

    def on_auth(self, session, credentials):
        self.calls.append(credentials)
        if credentials.username != "alice":
            raise SMTPError(535, "Authentication credentials invalid", "5.7.8")
        if credentials.method == "XOAUTH2":
            ok = credentials.access_token == TOKEN
        else:
            ok = credentials.validate_password(PASSWORD)
        if not ok:
            raise SMTPError(535, "Authentication credentials invalid", "5.7.8")
        return credentials.username if self.result == "USER" else self.result

    async def on_data(self, session, stream):
        await stream.content()
        self.messages.append((session.user, session.transmission_type))


def connect(hooks: Any = None, ehlo: bool = True, **options: Any) -> TestClient:
    """A client on a fresh server (insecure auth allowed unless overridden), after EHLO."""
    options.setdefault("allow_insecure_auth", True)
    server, _ = make_server(AuthHooks() if hooks is None else hooks, **options)
    client = TestClient(server)
    if ehlo:
        reply = client.command("EHLO client.test")
        assert reply.code == 250
        client.ehlo = reply  # type: ignore[attr-defined]
    return client


def auth_lines(reply: Reply) -> list[str]:
    """The AUTH lines of an EHLO reply."""
    return [line for line in reply.lines if line.split(" ")[0] == "AUTH"]


def code(reply: Reply) -> tuple[int, str | None]:
    """A reply's code and enhanced code."""
    return reply.code, reply.enhanced


# -- advertisement -------------------------------------------------------------


def test_advertised_default_methods():
    """With on_auth and insecure auth allowed, EHLO offers AUTH PLAIN LOGIN."""
    client = connect()
    assert auth_lines(client.ehlo) == ["AUTH PLAIN LOGIN"]


def test_advertised_configured_methods():
    """CRAM-MD5 and XOAUTH2 are offered when configured, in the configured order."""
    client = connect(auth_methods=("CRAM-MD5", "XOAUTH2"))
    assert auth_lines(client.ehlo) == ["AUTH CRAM-MD5 XOAUTH2"]
    client = connect(auth_methods="plain, login cram-md5 xoauth2")
    assert auth_lines(client.ehlo) == ["AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2"]


def test_not_advertised_without_hook():
    """Without on_auth AUTH is neither offered nor implemented (502 5.5.1)."""
    class NoAuth:
        def on_data(self, session, stream):
            return None

    client = connect(NoAuth())
    assert auth_lines(client.ehlo) == []
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (502, "5.5.1")


def test_not_advertised_in_plaintext():
    """Without allow_insecure_auth (and no TLS) AUTH is not offered and gets 538 5.7.11."""
    hooks = AuthHooks()
    client = connect(hooks, allow_insecure_auth=False, auth_methods=ALL)
    assert auth_lines(client.ehlo) == []
    for mech in ("PLAIN " + plain_ir(), "LOGIN", "CRAM-MD5", "XOAUTH2 " + xoauth2_ir()):
        assert code(client.command("AUTH " + mech)) == (538, "5.7.11")
    assert hooks.calls == []
    assert client.protocol.session.user is None


def test_not_advertised_after_helo():
    """HELO gets no extensions, so no AUTH line either."""
    client = connect(ehlo=False)
    assert auth_lines(client.command("HELO client.test")) == []


# -- command sequencing ----------------------------------------------------------


def test_auth_before_ehlo():
    """AUTH before EHLO (or after only HELO) is a bad sequence: 503 5.5.1."""
    hooks = AuthHooks()
    client = connect(hooks, ehlo=False)
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (503, "5.5.1")
    client.command("HELO client.test")
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (503, "5.5.1")
    assert hooks.calls == []


def test_auth_twice():
    """A second AUTH after success is 503 5.5.1 and the hook is not called again."""
    hooks = AuthHooks()
    client = connect(hooks)
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (235, "2.7.0")
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (503, "5.5.1")
    assert len(hooks.calls) == 1


def test_auth_during_transaction():
    """AUTH after MAIL (auth optional) is refused with 503 5.5.1."""
    hooks = AuthHooks()
    client = connect(hooks, auth_optional=True)
    assert client.command("MAIL FROM:<a@example.test>").code == 250
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (503, "5.5.1")
    assert hooks.calls == []
    assert client.command("RSET").code == 250
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (235, "2.7.0")


def test_auth_syntax():
    """AUTH needs a mechanism and at most one initial response: 501 5.5.4."""
    client = connect()
    assert code(client.command("AUTH")) == (501, "5.5.4")
    assert code(client.command("AUTH PLAIN a b")) == (501, "5.5.4")


# -- mechanisms ----------------------------------------------------------------------


@pytest.mark.parametrize("line", ["AUTH FOO", "AUTH CRAM-MD5", "AUTH XOAUTH2 " + xoauth2_ir()])
def test_unknown_or_unoffered_mechanism(line):
    """A mechanism not implemented or not configured gets 504 5.5.4."""
    hooks = AuthHooks()
    client = connect(hooks)  # default: PLAIN LOGIN
    assert code(client.command(line)) == (504, "5.5.4")
    assert hooks.calls == []


@pytest.mark.parametrize("verb", ["AUTH PLAIN", "auth plain", "Auth Plain", "AUTH pLaIn"])
def test_mechanism_case_insensitive(verb):
    """Command and mechanism names are case-insensitive."""
    hooks = AuthHooks()
    client = connect(hooks)
    assert code(client.command(f"{verb} {plain_ir()}")) == (235, "2.7.0")
    assert hooks.calls[0].method == "PLAIN"


def test_plain_initial_response():
    """PLAIN with an initial response: one round trip; the hook sees user, password, no authzid."""
    hooks = AuthHooks()
    client = connect(hooks)
    reply = client.command("AUTH PLAIN " + plain_ir())
    assert code(reply) == (235, "2.7.0")
    assert reply.text == "Authentication successful"
    [creds] = hooks.calls
    assert (creds.method, creds.username, creds.password, creds.authzid) == ("PLAIN", "alice", PASSWORD, None)
    assert client.protocol.session.user == "alice"


def test_plain_continuation():
    """PLAIN without an initial response gets an empty 334, then the client's line."""
    hooks = AuthHooks()
    client = connect(hooks)
    client.send("AUTH PLAIN\r\n")
    assert client.read() == b"334 \r\n"
    assert code(client.command(plain_ir())) == (235, "2.7.0")
    assert hooks.calls[0].username == "alice"


def test_plain_authzid():
    """The PLAIN authorization identity reaches the hook."""
    hooks = AuthHooks()
    client = connect(hooks)
    assert client.command("AUTH PLAIN " + plain_ir(authzid="boss")).code == 235
    assert (hooks.calls[0].authzid, hooks.calls[0].username) == ("boss", "alice")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_equals_is_empty_initial_response(mech):
    """"=" is an empty initial response: decoded (not a base64 error), then malformed: 501 5.5.4."""
    hooks = AuthHooks()
    client = connect(hooks)
    assert code(client.command(f"AUTH {mech} =")) == (501, "5.5.4")
    assert hooks.calls == []


def test_login_prompts():
    """LOGIN prompts Username: then Password:, both base64."""
    hooks = AuthHooks()
    client = connect(hooks)
    first = client.command("AUTH LOGIN")
    assert first.code == 334 and base64.b64decode(first.text) == b"Username:"
    second = client.command(b64("alice"))
    assert second.code == 334 and base64.b64decode(second.text) == b"Password:"
    assert code(client.command(b64(PASSWORD))) == (235, "2.7.0")
    [creds] = hooks.calls
    assert (creds.method, creds.username, creds.password) == ("LOGIN", "alice", PASSWORD)


def test_login_initial_response():
    """LOGIN's initial response is the user name; only the password is prompted for."""
    hooks = AuthHooks()
    client = connect(hooks)
    reply = client.command("AUTH LOGIN " + b64("alice"))
    assert reply.code == 334 and base64.b64decode(reply.text) == b"Password:"
    assert code(client.command(b64(PASSWORD))) == (235, "2.7.0")
    assert hooks.calls[0].username == "alice"


def test_cram_md5():
    """CRAM-MD5: a msg-id challenge; the hook gets it and checks with validate_password."""
    hooks = AuthHooks()
    client = connect(hooks, auth_methods=("CRAM-MD5",))
    reply = client.command("AUTH CRAM-MD5")
    assert reply.code == 334
    challenge = base64.b64decode(reply.text).decode()
    assert challenge.startswith("<") and challenge.endswith("@mx.test>")
    assert code(client.command(cram_answer(reply.text))) == (235, "2.7.0")
    [creds] = hooks.calls
    assert (creds.method, creds.username, creds.challenge, creds.password) == ("CRAM-MD5", "alice", challenge, None)
    assert creds.validate_password(PASSWORD) and not creds.validate_password("other")


def test_cram_md5_wrong_password():
    """A CRAM-MD5 digest made with another password fails with 535 5.7.8."""
    client = connect(auth_methods=("CRAM-MD5",))
    reply = client.command("AUTH CRAM-MD5")
    assert code(client.command(cram_answer(reply.text, password="wrong"))) == (535, "5.7.8")
    assert client.protocol.session.user is None


def test_cram_md5_rejects_initial_response():
    """CRAM-MD5 is server-first: an initial response is malformed (501 5.5.4)."""
    client = connect(auth_methods=("CRAM-MD5",))
    assert code(client.command("AUTH CRAM-MD5 " + b64("alice 0123"))) == (501, "5.5.4")


def test_cram_md5_nonces_differ():
    """Each session gets a fresh CRAM-MD5 challenge."""
    server, _ = make_server(AuthHooks(), allow_insecure_auth=True, auth_methods=("CRAM-MD5",))
    challenges = set()
    for _ in range(5):
        client = TestClient(server)
        client.command("EHLO client.test")
        reply = client.command("AUTH CRAM-MD5")
        assert reply.code == 334
        challenges.add(reply.text)
    assert len(challenges) == 5


def test_xoauth2():
    """XOAUTH2: the hook gets the user and the bearer token."""
    hooks = AuthHooks()
    client = connect(hooks, auth_methods=("XOAUTH2",))
    assert code(client.command("AUTH XOAUTH2 " + xoauth2_ir())) == (235, "2.7.0")
    [creds] = hooks.calls
    assert (creds.method, creds.username, creds.access_token, creds.password) == ("XOAUTH2", "alice", TOKEN, None)


def test_xoauth2_continuation():
    """XOAUTH2 without an initial response gets an empty 334 first."""
    hooks = AuthHooks()
    client = connect(hooks, auth_methods=("XOAUTH2",))
    client.send("AUTH XOAUTH2\r\n")
    assert client.read() == b"334 \r\n"
    assert client.command(xoauth2_ir()).code == 235


def test_xoauth2_error_flow():
    """RFC 7628: a refused token gets a 334 JSON error; the client's empty line then gets 535 5.7.8."""
    hooks = AuthHooks()
    client = connect(hooks, auth_methods=("XOAUTH2",))
    reply = client.command("AUTH XOAUTH2 " + xoauth2_ir(token="expired"))
    assert reply.code == 334 and reply.enhanced is None
    error = json.loads(base64.b64decode(reply.text))
    assert error["status"] == "401"
    assert "schemes" in error
    final = client.command("")
    assert code(final) == (535, "5.7.8")
    assert final.text == "Authentication credentials invalid"
    assert client.protocol.session.user is None
    assert client.command("NOOP").code == 250  # back in command mode


def test_xoauth2_error_flow_custom_text():
    """After the error challenge the hook's own 535 text is the final reply."""
    class Hooks:
        def on_auth(self, session, credentials):
            raise SMTPError(535, "Token expired", "5.7.8")

    client = connect(Hooks(), auth_methods=("XOAUTH2",))
    assert client.command("AUTH XOAUTH2 " + xoauth2_ir()).code == 334
    final = client.command("")
    assert (final.code, final.enhanced, final.text) == (535, "5.7.8", "Token expired")


def test_xoauth2_error_flow_cancel():
    """A "*" after the error challenge is a cancel: 501 5.7.0."""
    client = connect(auth_methods=("XOAUTH2",))
    assert client.command("AUTH XOAUTH2 " + xoauth2_ir(token="bad")).code == 334
    assert code(client.command("*")) == (501, "5.7.0")


# -- client errors ---------------------------------------------------------------


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
def test_cancel(mech):
    """"*" in answer to a 334 cancels the exchange: 501 5.7.0; the session goes on."""
    hooks = AuthHooks()
    client = connect(hooks, auth_methods=ALL)
    assert client.command(f"AUTH {mech}").code == 334
    assert code(client.command("*")) == (501, "5.7.0")
    assert hooks.calls == []
    assert client.command("NOOP").code == 250


def test_cancel_login_at_password():
    """"*" at LOGIN's password prompt also cancels."""
    client = connect()
    client.command("AUTH LOGIN")
    client.command(b64("alice"))
    assert code(client.command("*")) == (501, "5.7.0")


@pytest.mark.parametrize("lines", [["AUTH PLAIN !!!notbase64"], ["AUTH PLAIN", "@@@@"], ["AUTH LOGIN", "a=b="]])
def test_bad_base64(lines):
    """Undecodable base64, as initial response or continuation: 501 5.5.2."""
    hooks = AuthHooks()
    client = connect(hooks)
    for line in lines[:-1]:
        assert client.command(line).code == 334
    assert code(client.command(lines[-1])) == (501, "5.5.2")
    assert hooks.calls == []
    assert client.command("NOOP").code == 250


@pytest.mark.parametrize("line", [
    "AUTH PLAIN " + b64("alice\0pw"),                    # one NUL
    "AUTH PLAIN " + b64("\0\0pw"),                       # empty user
    "AUTH PLAIN " + b64(b"\0alice\0\xff"),               # not UTF-8
    "AUTH XOAUTH2 " + b64("user=alice\x01\x01"),         # no token
])
def test_malformed_sasl_data(line):
    """Valid base64 that is not valid mechanism data: 501 5.5.4."""
    hooks = AuthHooks()
    client = connect(hooks, auth_methods=ALL)
    assert code(client.command(line)) == (501, "5.5.4")
    assert hooks.calls == []


def test_malformed_cram_md5_answer():
    """A CRAM-MD5 answer without a hex digest: 501 5.5.4."""
    client = connect(auth_methods=("CRAM-MD5",))
    client.command("AUTH CRAM-MD5")
    assert code(client.command(b64("alice nothex"))) == (501, "5.5.4")


def test_retry_after_failure():
    """After a 535 the client may try again and succeed."""
    client = connect()
    assert code(client.command("AUTH PLAIN " + plain_ir(password="wrong"))) == (535, "5.7.8")
    assert client.protocol.session.user is None
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (235, "2.7.0")


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


# -- authentication required ------------------------------------------------------------


def test_mail_requires_auth_default_message():
    """With an auth hook and auth_optional False, MAIL before AUTH is 530 5.7.0."""
    client = connect()
    reply = client.command("MAIL FROM:<a@example.test>")
    assert (reply.code, reply.enhanced, reply.text) == (530, "5.7.0", "Error: authentication required")


def test_mail_requires_auth_custom_message():
    """auth_required_message is the 530 text."""
    client = connect(auth_required_message="Log in first, please")
    reply = client.command("MAIL FROM:<a@example.test>")
    assert (reply.code, reply.enhanced, reply.text) == (530, "5.7.0", "Log in first, please")


def test_mail_after_auth():
    """After AUTH the transaction goes through."""
    hooks = AuthHooks()
    client = connect(hooks)
    assert client.command("AUTH PLAIN " + plain_ir()).code == 235
    replies = client.sendmail("a@example.test", ["b@example.test"], b"hi\r\n", ehlo=None)
    assert [r.code for r in replies] == [250, 250, 354, 250]


def test_auth_optional():
    """With auth_optional MAIL works without AUTH, and the message is plain ESMTP."""
    hooks = AuthHooks()
    client = connect(hooks, auth_optional=True)
    replies = client.sendmail("a@example.test", ["b@example.test"], b"hi\r\n", ehlo=None)
    assert replies[-1].code == 250
    assert hooks.messages == [(None, "ESMTP")]


def test_no_hook_no_auth_required():
    """Without on_auth, MAIL is never refused for lack of authentication."""
    class Hooks:
        def on_mail_from(self, session, address):
            return None

    client = connect(Hooks(), allow_insecure_auth=False)
    assert client.command("MAIL FROM:<a@example.test>").code == 250


def test_too_many_unauthenticated_commands():
    """The N-th command before AUTH (limit N) gets 421 4.7.0 and the client is dropped (issue 10)."""
    client = connect(max_allowed_unauthenticated_commands=3)  # EHLO was the first
    assert client.command("NOOP").code == 250
    assert not client.closed
    reply = client.command("NOOP")
    assert code(reply) == (421, "4.7.0")
    assert "too many unauthenticated commands" in reply.text
    assert client.closed
    client.send("NOOP\r\n")
    assert client.replies() == []


def test_unauthenticated_limit_default():
    """The default limit (10) cuts a client that never authenticates."""
    client = connect()
    codes = []
    for _ in range(20):
        codes.append(client.command("NOOP").code)
        if client.closed:
            break
    assert codes == [250] * 8 + [421]  # EHLO, then eight NOOPs; the tenth command is cut


def test_unauthenticated_limit_zero():
    """max_allowed_unauthenticated_commands=0 turns the limit off."""
    client = connect(max_allowed_unauthenticated_commands=0)
    for _ in range(50):
        assert client.command("NOOP").code == 250
    assert not client.closed


def test_unauthenticated_limit_stops_after_auth():
    """Once authenticated, commands are no longer counted."""
    client = connect(max_allowed_unauthenticated_commands=3)
    assert client.command("AUTH PLAIN " + plain_ir()).code == 235
    for _ in range(20):
        assert client.command("NOOP").code == 250
    assert not client.closed


def test_unauthenticated_limit_not_when_optional():
    """With auth_optional, unauthenticated commands are not limited."""
    client = connect(auth_optional=True, max_allowed_unauthenticated_commands=2)
    for _ in range(10):
        assert client.command("NOOP").code == 250


def test_continuation_lines_not_counted():
    """SASL continuation lines are not commands: a LOGIN exchange fits in a small limit."""
    client = connect(max_allowed_unauthenticated_commands=2)  # EHLO + AUTH
    client.command("AUTH LOGIN")
    client.command(b64("alice"))
    assert code(client.command(b64(PASSWORD))) == (235, "2.7.0")
    assert not client.closed


# -- secrets stay secret ------------------------------------------------------------


def observed_session(**options: Any) -> list[tuple[str, str]]:
    """Run successful and failed exchanges of every mechanism; return what the command observer saw."""
    server, _ = make_server(AuthHooks(), allow_insecure_auth=True, auth_methods=ALL, **options)
    seen: list[tuple[str, str]] = []
    server.observe("command", lambda session, name, arg: seen.append((name, arg)))
    client = TestClient(server)
    client.command("EHLO client.test")
    client.command("AUTH PLAIN " + plain_ir(password="wrong"))
    client.command("AUTH LOGIN")
    client.command(b64("alice"))
    client.command(b64("wrong"))
    client.command("AUTH XOAUTH2 " + xoauth2_ir(token="bad"))
    client.command("")
    reply = client.command("AUTH CRAM-MD5")
    client.command(cram_answer(reply.text, password="wrong"))
    client.command("AUTH PLAIN")
    assert client.command(plain_ir()).code == 235
    return seen


def test_command_observer_skips_continuation_lines():
    """SASL continuation lines never reach the command observer: one event per command."""
    seen = observed_session()
    assert len(seen) == 6
    for _, arg in seen[1:]:
        assert arg.split(" ")[0] in ALL
    responses = [b64("alice"), b64("wrong"), plain_ir()]
    assert not any(r in arg for _, arg in seen for r in responses)


def test_command_observer_sees_only_mechanism():
    """The command observer gets AUTH with the mechanism only, never initial responses or secrets."""
    seen = observed_session()
    assert seen == [("EHLO", "client.test"), ("AUTH", "PLAIN"), ("AUTH", "LOGIN"), ("AUTH", "XOAUTH2"),
                    ("AUTH", "CRAM-MD5"), ("AUTH", "PLAIN")]
    for _, arg in seen:
        assert plain_ir(password="wrong") not in arg and xoauth2_ir(token="bad") not in arg


def test_auth_disabled():
    """AUTH in disabled_commands is neither offered nor accepted (502 5.5.1)."""
    hooks = AuthHooks()
    client = connect(hooks, disabled_commands=["AUTH"])
    assert auth_lines(client.ehlo) == []
    assert code(client.command("AUTH PLAIN " + plain_ir())) == (502, "5.5.1")
    assert hooks.calls == []


def test_logs_never_contain_secrets():
    """Successful, failed, cancelled and crashed AUTH exchanges log no password or token."""
    class Crashing(AuthHooks):
        def on_auth(self, session, credentials):
            if credentials.username == "crash":
                raise ValueError("backend trouble")
            return super().on_auth(session, credentials)

    with capturedLogs() as events:
        server, _ = make_server(Crashing(), allow_insecure_auth=True, auth_methods=ALL)
        for script in (
            ["AUTH PLAIN " + plain_ir()],
            ["AUTH PLAIN " + plain_ir(password=PASSWORD + "x")],
            ["AUTH PLAIN " + plain_ir(user="crash")],
            ["AUTH LOGIN " + b64("alice"), b64(PASSWORD)],
            ["AUTH LOGIN", b64("alice"), "*"],
            ["AUTH XOAUTH2 " + xoauth2_ir()],
            ["AUTH XOAUTH2 " + xoauth2_ir(token=TOKEN + "x"), ""],
            ["AUTH XOAUTH2 " + xoauth2_ir(user="crash")],
            ["AUTH PLAIN " + plain_ir(), "MAIL FROM:<a@example.test>", "QUIT"],
        ):
            client = TestClient(server)
            client.command("EHLO client.test")
            for line in script:
                client.send(line + "\r\n")
            client.replies()
            client.disconnect()
    text = "\n".join(eventAsText(e) or "" for e in events)
    assert "authenticated with PLAIN" in text  # the log is there...
    assert "backend trouble" in text
    for secret in (PASSWORD, TOKEN, b64(PASSWORD), plain_ir(), xoauth2_ir()):
        assert secret not in text  # ...the secrets are not


# -- protocol robustness ----------------------------------------------------------------


def test_overlong_continuation_ends_exchange():
    """A too-long SASL response ends the exchange (RFC 4954: 500 5.5.6); the next command is a command."""
    client = connect(auth_methods=("XOAUTH2",), max_command_length=512)
    assert client.command("AUTH XOAUTH2").code == 334
    client.send(b"A" * 600 + b"\r\n")
    [reply] = client.replies()
    assert reply.code == 500
    assert client.command("NOOP").code == 250


def test_pipelined_login():
    """A client that pipelines its LOGIN answers still gets them read in order."""
    hooks = AuthHooks()
    client = connect(hooks)
    client.send(f"AUTH LOGIN\r\n{b64('alice')}\r\n{b64(PASSWORD)}\r\nNOOP\r\n")
    assert [r.code for r in client.replies()] == [334, 334, 235, 250]


def test_disconnect_while_hook_pending():
    """A client that leaves while on_auth is running cancels it; nothing is written."""
    hooks = PendingHooks()
    client = connect(hooks)
    client.send(f"AUTH PLAIN {plain_ir()}\r\n")
    client.disconnect()
    assert hooks.pending[0].called  # cancelled
    hooks.pending[0].addErrback(lambda f: None)
    assert client.protocol.session.user is None


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
