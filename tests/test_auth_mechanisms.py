# -*- test-case-name: tests.test_auth_mechanisms -*-
"""
SMTP AUTH (RFC 4954) through the protocol, in memory: advertisement, command
sequencing, every mechanism (PLAIN, LOGIN, CRAM-MD5, XOAUTH2) and every
client error reply (cancel, bad base64, malformed mechanism data).
"""

from __future__ import annotations

import base64
import json

import pytest

from txsmtpsrv import SMTPError
from txsmtpsrv.testing import TestClient, make_server

from tests._smtpauth import (
    ALL, AuthHooks, PASSWORD, TOKEN, auth_lines, b64, code, connect, cram_answer, plain_ir,
    xoauth2_ir,
)


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
