# -*- test-case-name: tests.test_auth_mechanisms,tests.test_auth_hooks,tests.test_auth_policy -*-
"""
The SMTP AUTH test world shared by tests/test_auth_*.py: the password and
token alice authenticates with, SASL initial responses and answers, hooks
that accept alice (or keep on_auth pending), and a client connected after EHLO.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from twisted.internet.defer import Deferred

from txsmtpsrv import Credentials, Reply, SMTPError
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
