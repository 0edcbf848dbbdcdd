# -*- test-case-name: tests.test_tap_smtps -*-
"""
`twistd smtpsrv --listen smtps:...`: implicit TLS with the server's own
certificates (here the development certificate), delivering to the Maildir.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest
from twisted.python import usage

from tests.test_twistd import CLEAN_EXITS, Twistd, maildir_messages
from txsmtpsrv._tap import Options


def test_smtps_listener_delivers_over_implicit_tls(tmp_path):
    """A client speaking TLS from the first byte (SMTPS) delivers into the Maildir."""
    server = Twistd(tmp_path, ["-l", "smtps:tcp:0:interface=127.0.0.1", "--no-reverse-lookup"])
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the development certificate
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


def test_smtps_with_workers_is_a_usage_error():
    """--workers shares plain TCP sockets only: an smtps: listener is refused up front."""
    with pytest.raises(usage.UsageError, match="smtps"):
        Options().parseOptions(["--workers", "2", "-l", "smtps:tcp:465"])
