# -*- test-case-name: tests.test_small_messages -*-
"""
Issue 13 part 2 (small messages): the per-message and per-connection savings
keep the behaviour. One envelope per transaction; hook_timeout kept by the
connection's own timer; a data hook that returns the stream's own C{collect}
Deferred answered without Deferred machinery; log events only built when an
observer wants them; no per-connection state until it is needed.
(The MAIL/RCPT fast path has its own property tests: C{test_fast_path}.)
"""

from __future__ import annotations

from typing import Any, List

import pytest

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._session import Envelope
from txsmtpsrv.testing import TestClient, make_server


# -- c. one Envelope per transaction ------------------------------------------------------


def test_one_envelope_per_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transaction builds exactly one Envelope, the one hooks see from MAIL to the verdict."""
    made: List[Envelope] = []
    original = Envelope.__init__

    def counting(self: Envelope) -> None:
        original(self)
        made.append(self)

    monkeypatch.setattr(Envelope, "__init__", counting)
    seen: List[Any] = []

    class H:
        def on_mail_from(self, session, address):
            seen.append(("mail", session.envelope, session.envelope.mail_from, session.envelope.size))

        def on_rcpt_to(self, session, address):
            seen.append(("rcpt", session.envelope))

        def on_data(self, session, stream):
            seen.append(("data", session.envelope))
            return stream.collect(lambda chunk: None)

    server, _ = make_server(H())
    messages: List[Any] = []
    server.observe("message", lambda session, envelope, size: messages.append(envelope))
    client = TestClient(server)
    client.ehlo()
    assert len(made) == 1  # the session's first
    for i in range(3):
        replies = client.sendmail("a@x.test", ["b@y.test"], b"Subject: %d\r\n\r\nbody\r\n" % i)
        assert replies[-1].code == 250
    # One per transaction: the session's first served the first transaction,
    # each end of a transaction made the next one's.
    assert len(made) == 4
    assert messages == made[:3]
    for i in range(3):
        mail, rcpt, data = seen[3 * i:3 * i + 3]
        assert mail[1] is rcpt[1] is data[1] is made[i]
        assert mail[2] is None  # not yet the sender while on_mail_from decides
    assert client.session.envelope is made[3] and made[3].mail_from is None


def test_refused_mail_leaves_the_envelope_untouched() -> None:
    """A MAIL refused by its hook sets nothing in the envelope, not even its parameters."""
    class H:
        def on_mail_from(self, session, address):
            if address.address == "no@x.test":
                raise SMTPError(550, "no")

    server, _ = make_server(H())
    client = TestClient(server)
    client.ehlo()
    env = client.session.envelope
    assert client.command("MAIL FROM:<no@x.test> SIZE=100 BODY=8BITMIME SMTPUTF8").code == 550
    assert client.session.envelope is env
    assert (env.mail_from, env.size, env.body_type, env.smtputf8) == (None, None, "7BIT", False)
    assert client.command("MAIL FROM:<yes@x.test> SIZE=200 BODY=8BITMIME RET=HDRS ENVID=abc").code == 250
    assert client.session.envelope is env
    assert (env.mail_from.address, env.size, env.body_type, env.dsn_ret, env.dsn_envid) == (
        "yes@x.test", 200, "8BITMIME", "HDRS", "abc")
    assert client.command("RSET").code == 250
    assert client.session.envelope is not env and client.session.envelope.mail_from is None


def test_non_ascii_sender_needs_smtputf8_on_the_same_command() -> None:
    """SMTPUTF8 given with the UTF-8 sender allows it; without, 553 5.6.7."""
    server, _ = make_server()
    client = TestClient(server)
    client.ehlo()
    assert client.command("MAIL FROM:<é@x.test>").code == 553
    reply = client.command("MAIL FROM:<é@x.test> SMTPUTF8")
    assert reply.code == 250
    assert client.session.envelope.smtputf8 is True
