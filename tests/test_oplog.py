# -*- test-case-name: tests.test_oplog -*-
"""
The operator's log (L{txsmtpsrv._oplog}): the session id in the text of
every session line, one summary line per session, and one line per refused
MAIL, RCPT, DATA and AUTH in the documented format (fail2ban parses it: see
tests/test_fail2ban.py for the real tool on a real server's log).
"""

from __future__ import annotations

import base64
import re
from typing import Any, List

from twisted.logger import capturedLogs, formatEventAsClassicLogText

from txsmtpsrv import Hooks, SMTPError
from txsmtpsrv._oplog import log_value
from txsmtpsrv.testing import TestClient, make_server


class Policy(Hooks):
    """Refuses one recipient, one sender and a wrong password; accepts the rest."""

    def on_mail_from(self, session: Any, address: Any) -> None:
        if address.address == "spammer@x.test":
            raise SMTPError(550, "Sender blocked", "5.7.1")

    def on_rcpt_to(self, session: Any, address: Any) -> None:
        if address.local_part == "nobody":
            raise SMTPError(550, "No such user here", "5.1.1")

    def on_auth(self, session: Any, credentials: Any) -> Any:
        return credentials.username if credentials.password == "right" else None

    async def on_data(self, session: Any, stream: Any) -> None:
        await stream.collect(lambda chunk: None)


def text_lines(events: List[dict]) -> List[str]:
    """The events as twistd writes them (without the time stamp)."""
    lines = []
    for event in events:
        text = formatEventAsClassicLogText(event, formatTime=lambda t: "-")
        if text:
            lines.append(text.rstrip("\n")[2:])
    return lines


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def run_session(**options: Any) -> List[str]:
    server, clock = make_server(Policy(), allow_insecure_auth=True, auth_optional=True, **options)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.7", 40000))
        client.command("EHLO client.test")
        assert client.command(f"AUTH PLAIN {plain('mallory', 'wrong')}").code == 535
        assert client.command("MAIL FROM:<spammer@x.test>").code == 550
        replies = client.sendmail("a@x.test", ["nobody@x.test", "b@x.test"], b"Subject: x\r\n\r\nbody\r\n",
                                  ehlo=None)
        assert [r.code for r in replies] == [250, 550, 250, 354, 250]
        assert client.command("MAIL FROM:<a@x.test>").code == 250
        assert client.command("DATA").code == 554  # no recipients
        clock.advance(2.5)
        client.command("QUIT")
        client.disconnect()
    return text_lines(events)


def test_every_session_line_carries_the_session_id_in_its_text():
    """Each line about the session names its id in the system: [txsmtpsrv#level <id>]."""
    lines = run_session()
    ids = {m.group(1) for line in lines for m in [re.match(r"\[txsmtpsrv#\w+ ([0-9a-f]{16})\] ", line)] if m}
    assert len(ids) == 1, lines
    session_lines = [line for line in lines if "198.51.100.7" in line or "connection" in line]
    assert session_lines and all(line.startswith("[txsmtpsrv#") for line in session_lines), session_lines


def test_refusals_are_logged_with_code_and_client_address():
    """Refused AUTH (with the user), MAIL, RCPT and DATA: one line each, in the documented format."""
    lines = [line.split("] ", 1)[1] for line in run_session() if "] refused " in line]
    assert lines == [
        'refused AUTH PLAIN from 198.51.100.7 user="mallory": 535',
        "refused MAIL from 198.51.100.7: 550 5.7.1 Sender blocked",
        "refused RCPT from 198.51.100.7: 550 5.1.1 No such user here",
        "refused DATA from 198.51.100.7: 554 5.5.1 Error: no valid recipients",
    ]


def test_one_summary_line_per_session():
    """The closing line says who, HELO, TLS, user, messages accepted and refused, bytes and duration."""
    [summary] = [line for line in run_session() if "connection closed" in line]
    assert re.search(r"\] connection closed: client=198\.51\.100\.7 name=\[198\.51\.100\.7\] helo=client\.test "
                     r"tls=- user=- accepted=1 refused=1 bytes=\d+ duration=2\.500s$", summary), summary


def test_authenticated_user_in_summary():
    """A successful AUTH shows as user= in the summary; no refusal line."""
    server, _ = make_server(Policy(), allow_insecure_auth=True)
    with capturedLogs() as events:
        client = TestClient(server)
        client.command("EHLO c.test")
        assert client.command(f"AUTH PLAIN {plain('alice', 'right')}").code == 235
        client.disconnect()
    lines = text_lines(events)
    assert not [line for line in lines if "] refused " in line]
    assert [line for line in lines if "connection closed" in line and " user=alice " in line]


def test_crafted_user_name_cannot_forge_an_address():
    """A user name with spaces, quotes and a fake 'from' is quoted after the real address."""
    server, _ = make_server(Policy(), allow_insecure_auth=True)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.9", 1))
        client.command("EHLO c.test")
        client.command(f"AUTH PLAIN {plain('x from 192.0.2.66 ', 'wrong')}")
        client.disconnect()
    [line] = [line for line in text_lines(events) if "refused AUTH" in line]
    assert line.endswith('refused AUTH PLAIN from 198.51.100.9 user="x from 192.0.2.66 ": 535')


def test_too_many_auth_failures_is_a_refused_connection():
    """Hitting max_auth_failures: the 535 line, then 'refused connection ...: auth_failures'."""
    server, _ = make_server(Policy(), allow_insecure_auth=True, max_auth_failures=2)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.8", 1))
        client.command("EHLO c.test")
        client.command(f"AUTH PLAIN {plain('bob', 'x')}")
        client.send(f"AUTH PLAIN {plain('bob', 'y')}\r\n")
        assert [r.code for r in client.replies()] == [535, 421]
        client.disconnect()
    lines = [line.split("] ", 1)[1] for line in text_lines(events) if "] refused " in line]
    assert lines == ['refused AUTH PLAIN from 198.51.100.8 user="bob": 535',
                     'refused AUTH PLAIN from 198.51.100.8 user="bob": 535',
                     "refused connection from 198.51.100.8: auth_failures"]


def test_max_clients_refusal_is_one_line():
    """A client over max_clients: one 'refused connection' warning."""
    server, _ = make_server(Policy(), max_clients=1)
    first = TestClient(server)
    with capturedLogs() as events:
        second = TestClient(server, peer=("203.0.113.5", 2))
        assert second.greeting is not None and second.greeting.code == 421
    lines = text_lines(events)
    assert lines == ["[txsmtpsrv._oplog.SessionLog#warn] refused connection from 203.0.113.5: max_clients"]
    first.disconnect()


def test_ignored_hosts_write_nothing():
    """Sessions from ignored_hosts write no refusal or summary lines."""
    server, _ = make_server(Policy(), ignored_hosts=["198.51.100.0/24"], auth_optional=True)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.7", 1))
        client.command("EHLO c.test")
        client.command("MAIL FROM:<spammer@x.test>")
        client.disconnect()
    assert [line for line in text_lines(events) if "refused" in line or "closed" in line] == []


def test_session_log_can_be_stopped():
    """An embedder writing its own lines removes ours with session_log.stop()."""
    server, _ = make_server(Policy())
    server.session_log.stop()
    with capturedLogs() as events:
        client = TestClient(server)
        client.command("QUIT")
        client.disconnect()
    assert not [line for line in text_lines(events) if "connection closed" in line]


def test_log_value_quotes_what_is_not_plain():
    """Plain tokens stay bare; empty is '-'; spaces, quotes and controls give a JSON string."""
    assert log_value("mx.example.org") == "mx.example.org"
    assert log_value(None) == "-" and log_value("") == "-"
    assert log_value("a b") == '"a b"'
    assert log_value("x\r\ny") == '"x\\r\\ny"'
    assert log_value('q"') == '"q\\""'


def test_auth_refusals_before_the_hook_reach_the_limit_logged():
    """AUTH refused before on_auth (unknown mechanism) counts too; at the limit, one 'refused connection' line."""
    server, _ = make_server(Policy(), allow_insecure_auth=True, max_auth_failures=2)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.11", 1))
        client.command("EHLO c.test")
        client.command("AUTH FOO")
        client.send(b"AUTH BAR\r\n")
        assert [r.code for r in client.replies()] == [504, 421]
        client.disconnect()
    lines = [line.split("] ", 1)[1] for line in text_lines(events) if "] refused " in line]
    assert lines == ["refused AUTH from 198.51.100.11: 504 5.5.4 Error: unrecognized authentication type",
                     "refused AUTH from 198.51.100.11: 504 5.5.4 Error: unrecognized authentication type",
                     "refused connection from 198.51.100.11: auth_failures"]
