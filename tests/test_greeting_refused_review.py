# -*- test-case-name: tests.test_greeting_refused_review -*-
"""
Review of the refused greeting (RFC 5321 3.1; see test_greeting_refused.py):
a hook that holds reading and is cancelled by the refusal must not leave the
dialogue held (QUIT unread, the client never timed out), and a TLS handshake
that completes while the client waits for QUIT is still a TLS session.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import CancelledError, Deferred

from txsmtpsrv import SMTPError
from txsmtpsrv.testing import TestClient, make_server


class AsyncHooks:
    """on_connect and on_secure answer when the test fires their Deferreds."""

    def __init__(self) -> None:
        self.connect: Deferred[Any] = Deferred()
        self.secure: Deferred[Any] = Deferred()
        self.secure_failures: List[Any] = []
        self.secure.addErrback(self.secure_failures.append)

    def on_connect(self, session: Any) -> Any:
        return self.connect

    def on_secure(self, session: Any) -> Any:
        return self.secure


def test_refused_while_on_secure_pending_reads_quit() -> None:
    """Implicit TLS: the handshake ends before on_connect's 554; on_secure is cancelled, QUIT is read."""
    hooks = AsyncHooks()
    server, _ = make_server(hooks, socket_timeout=30)
    client = TestClient(server, greeting=False, tls="implicit")  # handshake done: on_secure asked, pending
    hooks.connect.errback(SMTPError(554, "go away", "5.7.1"))
    assert client.codes() == [(554, "5.7.1")]
    assert [f.type for f in hooks.secure_failures] == [CancelledError]
    client.send(b"NOOP\r\nQUIT\r\n")
    assert [r.code for r in client.replies()] == [503, 221] and client.closed


def test_refused_while_on_secure_pending_times_out() -> None:
    """The same client, silent: socket_timeout (from the refusal) ends the wait with 421."""
    hooks = AsyncHooks()
    server, clock = make_server(hooks, socket_timeout=30)
    client = TestClient(server, greeting=False, tls="implicit")
    clock.advance(20)
    hooks.connect.errback(SMTPError(554, "go away", "5.7.1"))
    assert client.codes() == [(554, "5.7.1")]
    clock.advance(29)
    assert client.replies() == [] and not client.closed
    clock.advance(1)
    assert client.codes() == [(421, "4.4.2")] and client.closed


def test_early_talker_while_on_secure_pending() -> None:
    """greeting_delay on implicit TLS: talking while on_secure runs is an early talker; QUIT still ends it."""
    hooks = AsyncHooks()
    hooks.connect.callback(None)
    server, clock = make_server(hooks, greeting_delay=1.0, socket_timeout=30)
    client = TestClient(server, greeting=False, tls="implicit")
    client.send(b"EHLO spam\r\n")
    assert client.codes() == [(554, "5.7.1"), (503, "5.5.1")]
    assert client.command("QUIT").code == 221 and client.closed
    assert [f.type for f in hooks.secure_failures] == [CancelledError]


def test_handshake_after_refusal_is_a_tls_session() -> None:
    """No on_secure for a refused client, but its handshake is seen: the "tls" event, session.secure, session.tls."""
    secured: List[Any] = []

    class Refuser:
        def on_connect(self, session: Any) -> None:
            raise SMTPError(554, "go away", "5.7.1")

        def on_secure(self, session: Any) -> None:
            secured.append(session)

    server, _ = make_server(Refuser())
    events: List[Optional[str]] = []
    server.observe("tls", lambda session, error: events.append(error))
    client = TestClient(server, greeting=False, tls="implicit")
    assert client.codes() == [(554, "5.7.1")]
    assert events == [None] and secured == []
    assert client.session.secure
    assert client.command("QUIT").code == 221 and client.closed


def test_slow_refusal_during_greeting_delay_gives_a_whole_timeout_to_quit() -> None:
    """on_connect (not holding reading during a greeting delay) refuses late: socket_timeout counts from the 554."""
    gate: Deferred[None] = Deferred()

    class Slow:
        def on_connect(self, session: Any) -> Any:
            return gate

    server, clock = make_server(Slow(), greeting_delay=0.1, socket_timeout=30)
    client = TestClient(server, greeting=False)
    clock.advance(25)
    gate.errback(SMTPError(554, "go away", "5.7.1"))
    assert client.codes() == [(554, "5.7.1")]
    clock.advance(29)
    assert client.replies() == [] and not client.closed
    assert client.command("QUIT").code == 221 and client.closed
