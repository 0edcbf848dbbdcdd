# -*- test-case-name: tests.test_auth_order -*-
"""
Issue 10 item 4: with authentication required, RFC 4954 section 6's 530 for
every command but AUTH, EHLO, HELO, NOOP, RSET, QUIT (and STARTTLS, LHLO,
XCLIENT, XFORWARD); the unauthenticated command limit counted as Node's
smtp-server counts it; the XOAUTH2 error challenge chosen by C{on_auth}.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from txsmtpsrv import OAuthError, SMTPError
from txsmtpsrv._authgate import CLOSE, REFUSE, unauthenticated_command
from txsmtpsrv._sasl import MAX_OAUTH_ERROR
from txsmtpsrv.testing import TestClient, make_server

PASSWORD = "pw"


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


GOOD = "AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}")
BAD = "AUTH PLAIN " + b64("\0alice\0wrong")


class Hooks:
    def __init__(self) -> None:
        self.mail: list[str] = []

    def on_auth(self, session, credentials):
        if credentials.username == "alice" and credentials.validate_password(PASSWORD):
            return "alice"
        raise SMTPError(535, "Authentication credentials invalid", "5.7.8")

    def on_mail_from(self, session, address):
        self.mail.append(address.address)


def client_for(hooks: Any = None, ehlo: str | None = "EHLO client.test", **options: Any) -> TestClient:
    options.setdefault("allow_insecure_auth", True)
    server, _ = make_server(Hooks() if hooks is None else hooks, **options)
    client = TestClient(server)
    if ehlo:
        assert client.command(ehlo).code == 250
    return client


def codes(client: TestClient, *lines: str) -> list[tuple[int, str | None]]:
    return [(r.code, r.enhanced) for r in (client.command(line) for line in lines)]


# -- 530 before AUTH ----------------------------------------------------------------


@pytest.mark.parametrize("line", ["MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA", "VRFY alice",
                                  "EXPN list", "HELP"])
def test_530_before_auth(line):
    """RCPT and DATA (503 before issue 10), MAIL, VRFY, EXPN, HELP: all 530 5.7.0 until AUTH."""
    client = client_for()
    reply = client.command(line)
    assert (reply.code, reply.enhanced) == (530, "5.7.0")
    assert reply.text == "Error: authentication required"


@pytest.mark.parametrize("line,code", [("NOOP", 250), ("RSET", 250), ("EHLO again.test", 250),
                                       ("HELO again.test", 250), ("STARTTLS", 454), ("QUIT", 221)])
def test_allowed_before_auth(line, code):
    """AUTH, EHLO, HELO, NOOP, RSET, QUIT and STARTTLS are answered as usual."""
    client = client_for()
    assert client.command(line).code == code


def test_lmtp_lhlo_allowed_before_auth():
    """LHLO opens an LMTP session that requires AUTH; MAIL is then 530."""
    client = client_for(lmtp=True, ehlo=None)
    assert client.command("LHLO client.test").code == 250
    assert codes(client, "MAIL FROM:<a@x.test>") == [(530, "5.7.0")]


def test_bdat_before_auth_reads_chunk():
    """BDAT before AUTH: 530 once its chunk is read, so the chunk's bytes never run as commands."""
    client = client_for()
    client.send(b"BDAT 25 LAST\r\nMAIL FROM:<evil@x.test>\r\n")
    assert [(r.code, r.enhanced) for r in client.replies()] == [(530, "5.7.0")]
    assert client.protocol.session.envelope.mail_from is None


def test_after_auth_everything_works():
    """After AUTH the transaction goes through; the custom 530 text is used before."""
    hooks = Hooks()
    client = client_for(hooks, auth_required_message="Log in first")
    reply = client.command("RCPT TO:<b@y.test>")
    assert (reply.code, reply.text) == (530, "Log in first")
    assert client.command(GOOD).code == 235
    assert codes(client, "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>") == [(250, "2.1.0"), (250, "2.1.5")]
    assert hooks.mail == ["a@x.test"]


def test_auth_optional_no_530():
    """auth_optional: nothing is refused for lack of AUTH, RCPT without MAIL stays 503."""
    client = client_for(auth_optional=True)
    assert codes(client, "RCPT TO:<b@y.test>", "MAIL FROM:<a@x.test>") == [(503, "5.5.1"), (250, "2.1.0")]


def test_needs_upgrade_text():
    """needs_upgrade without TLS: the 530 says STARTTLS first, as MAIL always did."""
    client = client_for(needs_upgrade=True)
    reply = client.command("RCPT TO:<b@y.test>")
    assert (reply.code, reply.enhanced) == (530, "5.7.0") and "STARTTLS" in reply.text


# -- max_allowed_unauthenticated_commands --------------------------------------------


def test_auth_commands_never_count():
    """The issue's case: EHLO, mistyped AUTH PLAINs (535), the right one: 235 (was 421), limit 3 or 2."""
    for limit in (3, 2):
        client = client_for(max_allowed_unauthenticated_commands=limit)
        assert codes(client, BAD, BAD) == [(535, "5.7.8")] * 2
        assert codes(client, GOOD) == [(235, "2.7.0")]
    assert not client.closed


def test_sasl_lines_never_count():
    """AUTH LOGIN's two response lines do not count either: limit 2 leaves room for EHLO only."""
    client = client_for(max_allowed_unauthenticated_commands=2)
    for _ in range(3):  # three failed LOGIN exchanges: 3 AUTH + 6 SASL lines
        assert client.command("AUTH LOGIN").code == 334
        assert client.command(b64("alice")).code == 334
        assert client.command(b64("wrong")).code == 535
    client.send("AUTH LOGIN\r\n" + b64("alice") + "\r\n" + b64(PASSWORD) + "\r\n")
    assert [r.code for r in client.replies()] == [334, 334, 235]


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_nth_command_gets_421(limit):
    """With limit N the N-th counted command (EHLO included) is answered 421 4.7.0, and the connection closed."""
    server, _ = make_server(Hooks(), allow_insecure_auth=True, max_allowed_unauthenticated_commands=limit)
    client = TestClient(server)
    replies = []
    for line in ["EHLO client.test", "MAIL FROM:<a@x.test>", "NOOP", "RCPT TO:<b@y.test>", "RSET", "NOOP"]:
        replies.append(client.command(line))
        if client.closed:
            break
    assert len(replies) == limit
    assert all(r.code != 421 for r in replies[:-1])
    assert (replies[-1].code, replies[-1].enhanced) == (421, "4.7.0")
    assert "too many unauthenticated commands" in replies[-1].text
    assert client.closed


def test_unrecognized_commands_do_not_count():
    """Unknown verbs count toward max_unrecognized_commands only."""
    client = client_for(max_allowed_unauthenticated_commands=2, max_unrecognized_commands=0)
    assert [client.command(f"FOO{i}").code for i in range(5)] == [500] * 5
    assert client.command("NOOP").code == 421


def test_no_count_after_auth():
    """After AUTH nothing counts."""
    client = client_for(max_allowed_unauthenticated_commands=3)
    assert client.command(GOOD).code == 235
    assert [client.command("NOOP").code for _ in range(10)] == [250] * 10


def test_gate_pure():
    """The pure gate: counts all but AUTH, CLOSE at the limit, REFUSE outside RFC 4954's list."""
    assert unauthenticated_command("AUTH", 4, 5) == (4, None)
    assert unauthenticated_command("NOOP", 3, 5) == (4, None)
    assert unauthenticated_command("NOOP", 4, 5) == (5, CLOSE)
    assert unauthenticated_command("RCPT", 0, 0) == (1, REFUSE)
    assert unauthenticated_command("STARTTLS", 0, 0) == (1, None)


# -- XOAUTH2 error challenge chosen by on_auth --------------------------------------------


def xoauth2(user: str = "alice", token: str = "tok") -> str:
    return "AUTH XOAUTH2 " + b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def test_xoauth2_custom_error_challenge():
    """on_auth raises OAuthError(error): that JSON goes in the 334, then its 535."""
    class OAuthHooks:
        def on_auth(self, session, credentials):
            raise OAuthError({"status": "invalid_token", "schemes": "bearer",
                              "scope": "https://mail.example/smtp"}, "Token expired")

    client = client_for(OAuthHooks(), auth_methods="XOAUTH2")
    reply = client.command(xoauth2())
    assert reply.code == 334
    assert json.loads(base64.b64decode(reply.text)) == {
        "status": "invalid_token", "schemes": "bearer", "scope": "https://mail.example/smtp"}
    final = client.command("")
    assert (final.code, final.enhanced, final.text) == (535, "5.7.8", "Token expired")


def test_xoauth2_custom_error_challenge_async():
    """The same from a Deferred that fails with OAuthError."""
    pending: list[Deferred[Any]] = []

    class OAuthHooks:
        def on_auth(self, session, credentials):
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

    client = client_for(OAuthHooks(), auth_methods="XOAUTH2")
    client.send(xoauth2() + "\r\n")
    assert client.replies() == []
    pending[0].errback(OAuthError({"status": "insufficient_scope"}))
    reply = client.replies()[0]
    assert reply.code == 334 and json.loads(base64.b64decode(reply.text)) == {"status": "insufficient_scope"}
    assert client.command("\x01").code == 535


def test_xoauth2_default_error_challenge_kept():
    """OAuthError() without an error, or any other refusal, sends today's default challenge."""
    for exc in (OAuthError(), SMTPError(535, "no", "5.7.8")):
        class OAuthHooks:
            def on_auth(self, session, credentials, exc=exc):
                raise exc

        client = client_for(OAuthHooks(), auth_methods="XOAUTH2")
        reply = client.command(xoauth2())
        assert json.loads(base64.b64decode(reply.text)) == {"status": "401", "schemes": "Bearer"}


def test_oauth_error_for_plain_is_a_535():
    """For other mechanisms OAuthError is a plain 535 5.7.8."""
    class OAuthHooks:
        def on_auth(self, session, credentials):
            raise OAuthError({"status": "invalid_token"})

    client = client_for(OAuthHooks())
    assert codes(client, GOOD) == [(535, "5.7.8")]


def test_oauth_error_validation():
    """The error must be a JSON object whose 334 line fits 512 octets: ValueError at construction."""
    with pytest.raises(ValueError, match="JSON object"):
        OAuthError(["status"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON-serialisable"):
        OAuthError({"status": object()})
    with pytest.raises(ValueError, match="334"):
        OAuthError({"status": "x" * MAX_OAUTH_ERROR})
    ok = OAuthError({"s": "x" * (MAX_OAUTH_ERROR - 8)})
    assert ok.challenge is not None and len(ok.challenge) == MAX_OAUTH_ERROR
    assert len(b"334 " + base64.b64encode(ok.challenge) + b"\r\n") <= 512
    assert (ok.code, ok.enhanced) == (535, "5.7.8")
