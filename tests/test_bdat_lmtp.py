# -*- test-case-name: tests.test_bdat_lmtp -*-
"""
BDAT under LMTP (RFC 2033 with RFC 3030): BDAT LAST is answered once per
accepted recipient, and errors, size limits and early hook refusals are
reported per recipient too.
"""

from __future__ import annotations

from typing import Any

import pytest

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv.testing import TestClient, make_server
from tests._bdat import Recorder, bdat
from tests._memory import codes


# -- LMTP -----------------------------------------------------------------------------------


def lmtp_client(hooks: Any = None, **options: Any) -> TestClient:
    """An LMTP client after LHLO, MAIL and two RCPTs (all replies read)."""
    server, _ = make_server(hooks, lmtp=True, **options)
    client = TestClient(server)
    client.send(b"LHLO c.test\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\n"
                b"RCPT TO:<b@example.test>\r\n")
    assert [r.code for r in client.replies()] == [250] * 4
    return client


def test_lmtp_bdat_last_per_recipient():
    """LMTP: non-last chunks get one reply, BDAT LAST one per recipient."""
    hooks = Recorder()
    client = lmtp_client(hooks)
    client.send(bdat(b"abc", b"def") + b"NOOP\r\n")
    assert [r.text for r in client.replies()] == [
        "3 octets received", "OK: message accepted for <a@example.test>",
        "OK: message accepted for <b@example.test>", "OK"]
    assert hooks.bodies == [b"abcdef"]


def test_lmtp_bdat_per_recipient_list():
    """LMTP with BDAT: the hook's list answers each recipient."""
    class Hooks:
        async def on_data(self, session, stream):
            await stream.content()
            return [SMTPError(452, "Over quota", "4.2.2"), Reply(250, "Saved", "2.0.0")]

    client = lmtp_client(Hooks())
    client.send(b"BDAT 0 LAST\r\n")
    assert [(r.code, r.text) for r in client.replies()] == [(452, "Over quota"), (250, "Saved")]


def test_lmtp_bdat_hook_rejects_at_last_per_recipient():
    """LMTP: a hook refusing after reading the whole body gives its error once per recipient."""
    class Hooks:
        async def on_data(self, session, stream):
            await stream.content()
            raise SMTPError(550, "Nope", "5.7.1")

    client = lmtp_client(Hooks())
    client.send(bdat(b"abc"))
    assert codes(client.replies()) == [(550, "5.7.1")] * 2


def test_lmtp_bdat_last_over_size_per_recipient():
    """LMTP: a LAST chunk crossing the size limit gets 552 5.3.4 once per recipient, then NOOP 250."""
    client = lmtp_client(Recorder(), size=5)
    client.send(bdat(b"0123456789") + b"NOOP\r\n")
    assert codes(client.replies()) == [(552, "5.3.4"), (552, "5.3.4"), (250, "2.0.0")]


def test_lmtp_bdat_last_hook_refused_early_per_recipient():
    """LMTP: a hook that refused before the LAST chunk arrived still gets one reply per recipient."""
    class No:
        def on_data(self, session, stream):
            raise SMTPError(550, "Refused", "5.7.1")

    client = lmtp_client(No())
    client.send(bdat(b"abc") + b"NOOP\r\n")
    assert codes(client.replies()) == [(550, "5.7.1"), (550, "5.7.1"), (250, "2.0.0")]


def test_lmtp_failed_chunk_then_last_per_recipient():
    """LMTP: an oversized non-last chunk gets one 552; the LAST of that transaction one per recipient."""
    client = lmtp_client(Recorder(), size=5)
    client.send(bdat(b"0123456789", b"x") + b"NOOP\r\n")
    assert codes(client.replies()) == [(552, "5.3.4")] * 3 + [(250, "2.0.0")]


@pytest.mark.parametrize("before,expected", [(b"", (503, "5.5.1")),
                                             (b"MAIL FROM:<s@example.test>\r\n", (554, "5.5.1"))],
                         ids=["no-mail", "no-rcpt"])
def test_lmtp_bdat_last_without_recipients_gets_one_reply(before, expected):
    """LMTP: BDAT LAST without MAIL or without an accepted RCPT still gets exactly one error reply."""
    server, _ = make_server(Recorder(), lmtp=True)
    client = TestClient(server)
    assert client.command("LHLO c.test").code == 250
    client.send(before + b"BDAT 3 LAST\r\nabcNOOP\r\n")
    replies = codes(client.replies())
    assert replies[-2:] == [expected, (250, "2.0.0")]
