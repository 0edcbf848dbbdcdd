# -*- test-case-name: tests.test_real_client_peer,tests.test_real_client_forwarding,tests.test_real_client_proxy -*-
"""
What the real-client tests (C{tests/test_real_client_*.py}) share: hooks that
snapshot the session (L{Recorder}), a successful EHLO and transaction, and
the connection log lines.
"""

from __future__ import annotations

from typing import Any, Dict, List

from txsmtpsrv.testing import TestClient

BODY = b"Subject: t\r\n\r\nhello\r\n"


class Recorder:
    """Hooks that snapshot what they see of the session and accept everything."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []

    def _snap(self, hook: str, s: Any) -> None:
        self.seen.append((hook, {
            "remote_address": s.remote_address, "remote_port": s.remote_port,
            "local_address": s.local_address, "local_port": s.local_port,
            "client_hostname": s.client_hostname, "helo": s.host_name_appears_as,
            "user": s.user, "proxy": s.proxy, "xforward": dict(s.xforward), "xclient": dict(s.xclient),
        }))

    def on_connect(self, session: Any) -> None:
        self._snap("connect", session)

    def on_helo(self, session: Any, hostname: str) -> None:
        self._snap("helo", session)

    def on_mail_from(self, session: Any, address: Any) -> None:
        self._snap("mail", session)

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.content()
        self._snap("data", session)

    def on_close(self, session: Any) -> None:
        self._snap("close", session)

    def get(self, hook: str) -> List[Dict[str, Any]]:
        """The snapshots taken by C{hook}, in order."""
        return [snap for name, snap in self.seen if name == hook]


def ehlo_lines(client: TestClient, name: str = "client.test") -> List[str]:
    """EHLO that must succeed; its reply lines."""
    reply = client.command(f"EHLO {name}")
    assert reply.code == 250, reply
    return list(reply.lines)


def transaction(client: TestClient) -> None:
    """MAIL, RCPT, DATA, all accepted (EHLO must have been sent)."""
    for line in ("MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>"):
        reply = client.command(line)
        assert reply.code == 250, reply
    reply = client.command("DATA")
    assert reply.code == 354, reply
    client.send(BODY + b".\r\n")
    (reply,) = client.replies()
    assert reply.code == 250, reply


def conn_events(events: List[dict]) -> List[str]:
    """The connection-open/close log formats among C{events}."""
    return [e["log_format"] for e in events
            if e.get("log_format", "").startswith(("connection from", "connection closed"))]
