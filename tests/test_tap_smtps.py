# -*- test-case-name: tests.test_tap_smtps -*-
"""
`twistd smtpsrv --listen smtps:...`: implicit TLS with the server's own
certificates (here the development certificate), delivering to the Maildir.
"""

from __future__ import annotations

import smtplib

import pytest
from twisted.python import usage

from tests._certs import unverified_client_context
from tests.test_twistd import CLEAN_EXITS, Twistd, maildir_messages
from txsmtpsrv._tap import Options


def test_smtps_listener_delivers_over_implicit_tls(tmp_path):
    """A client speaking TLS from the first byte (SMTPS) delivers into the Maildir."""
    server = Twistd(tmp_path, ["-l", "smtps:tcp:0:interface=127.0.0.1", "--no-reverse-lookup"])
    try:
        context = unverified_client_context()  # the development certificate
        with smtplib.SMTP_SSL("127.0.0.1", server.port, context=context, timeout=10) as client:
            code, features = client.ehlo("client.test")
            assert code == 250 and b"STARTTLS" not in features
            assert client.sock.version().startswith("TLS")
            client.sendmail("a@example.test", ["b@example.test"], b"Subject: smtps\r\n\r\nhello\r\n")
        assert server.terminate() in CLEAN_EXITS
        [message] = maildir_messages(tmp_path / "Maildir")
        assert b"with ESMTPS" in message and b"hello" in message
        assert "development TLS certificate" in server.log()
    finally:
        server.kill()


def test_workers_refuse_what_they_cannot_share():
    """--workers shares tcp:, tcp6:, unix: (also behind smtps:/smtpproxy:); another endpoint is refused, saying so."""
    Options().parseOptions(["--workers", "2", "-l", "smtps:tcp:465", "-l", "smtpproxy:trusted=10.0.0.0/8:tcp:25",
                            "-l", "unix:/tmp/txsmtpsrv-test.sock"])
    with pytest.raises(usage.UsageError, match=r"cannot share --listen adopted:5:INET: .* not for adopted: ones"):
        Options().parseOptions(["--workers", "2", "-l", "adopted:5:INET"])


FAILS_IN_WORKERS = """
import sys
if "--worker" in sys.argv:
    raise RuntimeError("this worker cannot start")
from txsmtpsrv import Hooks

class Policy(Hooks):
    pass
"""


def test_dead_worker_socket_is_served_by_the_parent(tmp_path):
    """A worker that cannot start is retried with back-off while the parent serves its socket: no hung clients."""
    (tmp_path / "failing.py").write_text(FAILS_IN_WORKERS)
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--workers", "2",
                               "--hooks", "failing:Policy"], pythonpath=[str(tmp_path)])
    try:
        server.wait_for(r"worker 1 \(pid \d+\) exited unexpectedly")
        for _ in range(20):  # SO_REUSEPORT spreads these over both sockets
            with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
                assert client.noop()[0] == 250
        server.wait_for(r"exited unexpectedly.*restarting in 2\.0 s")  # backing off
        assert server.terminate() in CLEAN_EXITS
    finally:
        server.kill()


def test_sighup_reloads_certificates(tmp_path):
    """SIGHUP makes twistd smtpsrv re-read its certificates; it keeps serving."""
    import os
    import signal

    server = Twistd(tmp_path, ["-l", "smtps:tcp:0:interface=127.0.0.1", "--no-reverse-lookup"])
    try:
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_for(r"TLS configuration reloaded")
        context = unverified_client_context()
        with smtplib.SMTP_SSL("127.0.0.1", server.port, context=context, timeout=10) as client:
            assert client.noop()[0] == 250
        assert server.terminate() in CLEAN_EXITS
    finally:
        server.kill()
