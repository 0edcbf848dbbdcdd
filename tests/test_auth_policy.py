# -*- test-case-name: tests.test_auth_policy -*-
"""
SMTP AUTH policy and hygiene, in memory: the auth-required policy and the
limit on unauthenticated commands, that secrets never reach command
observers or logs, and robustness (overlong continuation lines, pipelined
LOGIN, a disconnect while the hook is pending).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import capturedLogs, eventAsText

from txsmtpsrv.testing import TestClient, make_server

from tests._smtpauth import (
    ALL, AuthHooks, PASSWORD, PendingHooks, TOKEN, auth_lines, b64, code, connect, cram_answer,
    plain_ir, xoauth2_ir,
)


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


# -- the AUTH parameter of MAIL (RFC 4954 section 5) -------------------------------------


class SeesMail(AuthHooks):
    """AuthHooks that keep the MAIL addresses they are shown."""

    def __init__(self) -> None:
        super().__init__()
        self.mail: list[Any] = []

    def on_mail_from(self, session, address):
        self.mail.append(address)


@pytest.mark.parametrize("value, decoded", [("<>", "<>"), ("alice+40example.test", "alice@example.test"),
                                            ("+3C+3E", "<>"), ("b+2Bc@example.test", "b+c@example.test")])
@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "anonymous"])
def test_mail_auth_parameter_accepted(value, decoded, authenticated):
    """
    A server offering AUTH MUST take MAIL's AUTH= even from a client that has
    not authenticated, and then MUST behave as if it were AUTH=<> (RFC 4954 5):
    hooks see the decoded submitter of an authenticated client, <> otherwise,
    and the value sent in params (for logs).
    """
    hooks = SeesMail()
    client = connect(hooks, auth_optional=True)
    if authenticated:
        assert client.command("AUTH PLAIN " + plain_ir()).code == 235
    reply = client.command(f"MAIL FROM:<a@example.test> AUTH={value}")
    assert code(reply) == (250, "2.1.0")
    assert hooks.mail[0].params["AUTH"] == value
    assert hooks.mail[0].submitter == (decoded if authenticated else "<>")


def test_mail_without_auth_parameter_has_no_submitter():
    """No AUTH= on MAIL: no submitter, authenticated or not."""
    hooks = SeesMail()
    client = connect(hooks, auth_optional=True)
    assert client.command("AUTH PLAIN " + plain_ir()).code == 235
    assert code(client.command("MAIL FROM:<a@example.test> SIZE=10")) == (250, "2.1.0")
    assert code(client.command("RSET")) == (250, "2.0.0")
    assert code(client.command("MAIL FROM:<a@example.test>")) == (250, "2.1.0")
    assert [a.submitter for a in hooks.mail] == [None, None]


@pytest.mark.parametrize("param", ["AUTH", "AUTH=a+4", "AUTH=a+0Db", "AUTH=a\u00e9", "AUTH=" + "a" * 501])
def test_mail_auth_parameter_checked(param):
    """AUTH= is xtext: none, a bad escape, a control, 8-bit text or over 500 characters is 501 5.5.4."""
    client = connect(auth_optional=True)
    assert code(client.command(f"MAIL FROM:<a@example.test> {param}")) == (501, "5.5.4")


@pytest.mark.parametrize("options", [{"allow_insecure_auth": False}, {"disabled_commands": "AUTH"}],
                         ids=["not-offered-in-plaintext", "disabled"])
def test_mail_auth_parameter_only_when_auth_offered(options):
    """Where EHLO does not offer AUTH, the AUTH parameter is unknown: 555 5.5.4."""
    client = connect(auth_optional=True, **options)
    assert auth_lines(client.ehlo) == []  # type: ignore[attr-defined]
    assert code(client.command("MAIL FROM:<a@example.test> AUTH=<>")) == (555, "5.5.4")
