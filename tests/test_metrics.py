# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics (L{txsmtpsrv._metrics}): in memory for an embedder's own
registry, then C{twistd smtpsrv --metrics} scraped over a real socket and
checked with Prometheus' own C{promtool check metrics}, in one process and
with C{--workers} (one scrape adds up every process).
"""

from __future__ import annotations

import smtplib
import socket
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Dict

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from txsmtpsrv import ServerMetrics
from txsmtpsrv.testing import TestClient, make_server

from tests._certs import unverified_client_context
from tests._support import tool_path
from tests.test_oplog import Policy, plain
from tests.test_twistd import CLEAN_EXITS, TIMEOUT, Twistd, workers_with_policy


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_embedder_registry_counts_a_session():
    """ServerMetrics(registry).observe(server): connections, commands, messages, AUTH, hooks, durations."""
    registry = CollectorRegistry()
    server, clock = make_server(Policy(), allow_insecure_auth=True, auth_optional=True, max_auth_failures=2)
    stop = ServerMetrics(registry).observe(server)
    client = TestClient(server, peer=("198.51.100.7", 1), host=("192.0.2.1", 25))
    assert value(registry, "txsmtpsrv_connections_open", listener="192.0.2.1:25") == 1
    client.command("EHLO c.test")
    assert client.command(f"AUTH PLAIN {plain('alice', 'wrong')}").code == 535
    assert client.command(f"AUTH PLAIN {plain('alice', 'right')}").code == 235
    replies = client.sendmail("a@x.test", ["nobody@x.test", "b@x.test"], b"Subject: m\r\n\r\nhello\r\n", ehlo=None)
    assert [r.code for r in replies] == [250, 550, 250, 354, 250]
    clock.advance(3)
    client.command("QUIT")
    client.disconnect()
    assert value(registry, "txsmtpsrv_connections_total", listener="192.0.2.1:25") == 1
    assert value(registry, "txsmtpsrv_connections_open", listener="192.0.2.1:25") == 0
    assert value(registry, "txsmtpsrv_commands_total", verb="EHLO", reply_class="2xx") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="RCPT", reply_class="5xx") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="RCPT", reply_class="2xx") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="DATA", reply_class="2xx") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="DATA", reply_class="3xx") == 0  # 354 is not final
    assert value(registry, "txsmtpsrv_messages_total", outcome="accepted") == 1
    assert value(registry, "txsmtpsrv_received_bytes_total") > len(b"Subject: m\r\n\r\nhello\r\n") - 3
    assert value(registry, "txsmtpsrv_auth_total", mechanism="PLAIN", result="failure") == 1
    assert value(registry, "txsmtpsrv_auth_total", mechanism="PLAIN", result="success") == 1
    assert value(registry, "txsmtpsrv_hook_duration_seconds_count", hook="on_rcpt_to") == 2
    assert value(registry, "txsmtpsrv_session_duration_seconds_count") == 1
    assert value(registry, "txsmtpsrv_session_duration_seconds_sum") == 3.0
    stop()
    TestClient(server).disconnect()
    assert value(registry, "txsmtpsrv_connections_total", listener="192.0.2.1:25") == 1  # no longer counted


def test_refusals_by_reason():
    """max_clients and the unrecognized-command limit are counted by reason."""
    registry = CollectorRegistry()
    server, _ = make_server(Policy(), max_clients=1, max_unrecognized_commands=2)
    ServerMetrics(registry).observe(server)
    first = TestClient(server)
    TestClient(server, peer=("203.0.113.5", 2))  # over max_clients
    first.send(b"FOO\r\nBAR\r\n")
    assert [r.code for r in first.replies()] == [500, 500, 421]
    assert value(registry, "txsmtpsrv_refusals_total", reason="max_clients") == 1
    assert value(registry, "txsmtpsrv_refusals_total", reason="unrecognized_commands") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="UNKNOWN", reply_class="5xx") == 2
    assert value(registry, "txsmtpsrv_commands_total", verb="UNKNOWN", reply_class="4xx") == 1


def test_messages_refused_counted():
    """A DATA refused by the server counts as a refused message."""
    registry = CollectorRegistry()
    server, _ = make_server(Policy(), size=100, auth_optional=True)
    ServerMetrics(registry).observe(server)
    client = TestClient(server)
    replies = client.sendmail("a@x.test", ["b@x.test"], b"x" * 500 + b"\r\n")
    assert replies[-1].code == 552
    assert value(registry, "txsmtpsrv_messages_total", outcome="refused") == 1
    assert value(registry, "txsmtpsrv_messages_total", outcome="accepted") == 0


# ---------------------------------------------------------------------------
# twistd smtpsrv --metrics, scraped for real


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str) -> Dict[Any, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def promtool_check(text: str) -> None:
    """Prometheus' own linter accepts the exposition."""
    promtool = tool_path("promtool", "/usr/bin")
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_twistd_metrics_over_http(tmp_path):
    """--metrics serves Prometheus text that promtool accepts; counters move as mail flows, TLS counted."""
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "-l", "smtps:tcp:0:interface=127.0.0.1",
                               "--no-reverse-lookup", "--metrics", "tcp:0:interface=127.0.0.1"])
    try:
        smtps = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(smtps:").group(1))
        port = int(server.wait_for(r"metrics listening on 127\.0\.0\.1:(\d+)").group(1))
        before = scrape(port)
        promtool_check(before)
        listener = f"127.0.0.1:{server.port}"
        key = ("txsmtpsrv_messages_total", (("outcome", "accepted"),))
        assert samples(before).get(key, 0.0) == 0
        context = unverified_client_context()  # the development certificate
        for i in range(3):
            with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
                if i == 0:
                    client.starttls(context=context)
                client.sendmail("a@x.test", ["b@x.test"], b"Subject: m\r\n\r\nhello\r\n")
        with socket.create_connection(("127.0.0.1", smtps), timeout=TIMEOUT) as sock:
            sock.sendall(b"EHLO plaintext.test\r\n" * 50)  # not a TLS ClientHello: the handshake fails
            while sock.recv(4096):
                pass
        server.wait_for(r"connection closed: client=127\.0\.0\.1 \S+ helo=- tls=-")
        after = scrape(port)
        promtool_check(after)
        found = samples(after)
        assert found[key] == 3
        assert found[("txsmtpsrv_connections_total", (("listener", listener),))] == 3
        assert found[("txsmtpsrv_commands_total", (("reply_class", "2xx"), ("verb", "MAIL")))] == 3
        assert found[("txsmtpsrv_tls_handshakes_total", (("result", "ok"),))] == 1
        assert found[("txsmtpsrv_tls_handshakes_total", (("result", "failed"),))] == 1
        assert found[("txsmtpsrv_hook_duration_seconds_count", (("hook", "on_data"),))] == 3
        assert server.terminate() in CLEAN_EXITS
    finally:
        server.kill()


def test_twistd_workers_one_scrape_shows_every_process(tmp_path):
    """--workers 2 --metrics: connections served by both processes all show in the parent's scrape."""
    server, pids_file = workers_with_policy(tmp_path, "--metrics", "tcp:0:interface=127.0.0.1")
    try:
        port = int(server.wait_for(r"metrics listening on 127\.0\.0\.1:(\d+)").group(1))
        server.wait_for(r"worker \d+\] txsmtpsrv ready")
        directory = Path(re.search(r"metrics of all processes in (\S+) ", server.log()).group(1))  # logged early
        assert directory.is_dir()  # the worker listens too
        count = 30
        for i in range(count):
            with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
                client.sendmail("a@x.test", ["b@x.test"], f"Subject: {i}\r\n\r\nx\r\n".encode())
        pids = set(int(line) for line in pids_file.read_text().split())
        assert len(pids) == 2  # both processes served some
        text = scrape(port)
        promtool_check(text)
        found = samples(text)
        assert found[("txsmtpsrv_messages_total", (("outcome", "accepted"),))] == count
        listener = f"127.0.0.1:{server.port}"
        assert found[("txsmtpsrv_connections_total", (("listener", listener),))] == count
        assert found[("txsmtpsrv_connections_open", (("listener", listener),))] == 0
        assert server.terminate() in CLEAN_EXITS
        assert not directory.exists()  # the multiprocess files go with the server
    finally:
        server.kill()


@pytest.mark.parametrize("end", ["timeout", "shutdown"])
def test_421_after_an_accepted_message_is_not_a_refused_one(end):
    """
    A client idle after its 250 (a timeout, or the server stopping) gets a 421 that
    answers no command: the summary and the metrics still say one message accepted,
    none refused, and no DATA answered 4xx. (A timeout in the body is DATA's answer.)
    """
    from twisted.logger import capturedLogs

    from tests.test_oplog import text_lines

    registry = CollectorRegistry()
    server, clock = make_server(Policy(), auth_optional=True)
    ServerMetrics(registry).observe(server)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.7", 1))
        if end == "timeout":
            stalled = TestClient(server, peer=("198.51.100.8", 1))
            stalled.ehlo()
            for line, code in (("MAIL FROM:<a@x.test>", 250), ("RCPT TO:<b@x.test>", 250), ("DATA", 354)):
                assert stalled.command(line).code == code
            stalled.send(b"Subject: never finished\r\n")
        replies = client.sendmail("a@x.test", ["b@x.test"], b"Subject: m\r\n\r\nhello\r\n")
        assert [r.code for r in replies] == [250, 250, 250, 354, 250]
        if end == "timeout":
            clock.advance(server.options.socket_timeout + 1)
            assert [r.code for r in stalled.replies()] == [421]
            stalled.disconnect()
        else:
            server.close()
        assert [r.code for r in client.replies()] == [421]
        client.disconnect()
    assert value(registry, "txsmtpsrv_messages_total", outcome="accepted") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="DATA", reply_class="2xx") == 1
    summaries = {line.split("client=")[1].split()[0]: line
                 for line in text_lines(events) if "connection closed:" in line}
    assert "accepted=1 refused=0" in summaries["198.51.100.7"], summaries
    stalled_refused = 1 if end == "timeout" else 0  # the unfinished body: DATA answered 421
    if end == "timeout":
        assert "accepted=0 refused=1" in summaries["198.51.100.8"], summaries
    assert value(registry, "txsmtpsrv_messages_total", outcome="refused") == stalled_refused
    assert value(registry, "txsmtpsrv_commands_total", verb="DATA", reply_class="4xx") == stalled_refused
    # As the README's metrics table says: CONNECT counts the greetings and the 421 said at the client's turn.
    assert value(registry, "txsmtpsrv_commands_total", verb="CONNECT", reply_class="2xx") == (2 if end == "timeout" else 1)
    assert value(registry, "txsmtpsrv_commands_total", verb="CONNECT", reply_class="4xx") == 1


@pytest.mark.parametrize("end", ["timeout", "force_close"])
@pytest.mark.parametrize("noop", [False, True])
def test_421_between_bdat_chunks_refuses_the_message(end, noop):
    """
    A 421 between two BDAT chunks cuts the message short: a refused message and
    BDAT answered 4xx, as one mid-chunk or mid-DATA is (even after a NOOP there),
    not a 421 that answers no command.
    """
    from twisted.logger import capturedLogs

    from tests.test_oplog import text_lines

    registry = CollectorRegistry()
    server, clock = make_server(Policy(), auth_optional=True)
    ServerMetrics(registry).observe(server)
    with capturedLogs() as events:
        client = TestClient(server, peer=("198.51.100.7", 1))
        client.ehlo()
        for line, code in (("MAIL FROM:<a@x.test>", 250), ("RCPT TO:<b@x.test>", 250)):
            assert client.command(line).code == code
        client.send(b"BDAT 5\r\nhello")
        if noop:
            client.send(b"NOOP\r\n")
        assert [r.code for r in client.replies()] == ([250, 250] if noop else [250])
        if end == "timeout":
            clock.advance(server.options.socket_timeout + 1)
        else:
            server.close()
            clock.advance(server.options.close_timeout + 1)
        assert [r.code for r in client.replies()] == [421]
        client.disconnect()
    [summary] = [line for line in text_lines(events) if "connection closed:" in line]
    assert "accepted=0 refused=1" in summary
    assert value(registry, "txsmtpsrv_messages_total", outcome="refused") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="BDAT", reply_class="4xx") == 1
    assert value(registry, "txsmtpsrv_commands_total", verb="CONNECT", reply_class="4xx") == 0
