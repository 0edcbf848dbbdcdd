"""A user's tests of mailer.py with the txsmtpsrv fixtures (copied to test_mail.py and run by pytest)."""

import asyncio
import smtplib

import pytest

from mailer import send_welcome, send_welcome_async
from txsmtpsrv import SMTPError
from txsmtpsrv.testing import MessagesNotReceived


def test_smtplib_sender(smtp_server):
    send_welcome("new@example.test", host=smtp_server.host, port=smtp_server.port)
    [message] = smtp_server.messages  # accepted before smtplib returned: no waiting needed
    assert message.mail_from == "noreply@example.test"
    assert message.rcpt_to == ("new@example.test",)
    assert message.message["Subject"] == "Welcome"
    assert message.message.get_content() == "Hello and welcome!\n"
    assert b"\r\nSubject: Welcome\r\n" in message.body
    assert message.secure is False and message.user is None
    assert message.helo and message.peer[0] == "127.0.0.1"


def test_each_test_gets_a_fresh_server(smtp_server):
    assert smtp_server.messages == []


def test_aiosmtplib_sender(smtp_server):
    asyncio.run(send_welcome_async("a@example.test", host=smtp_server.host, port=smtp_server.port))
    [message] = smtp_server.wait_for(1, timeout=5)
    assert message.message["To"] == "a@example.test"


def test_starttls_verified_with_the_throwaway_ca(smtp_starttls_server):
    send_welcome("t@example.test", host="localhost", port=smtp_starttls_server.port, starttls=True,
                 context=smtp_starttls_server.client_context())
    [message] = smtp_starttls_server.messages
    assert message.secure and message.tls.version.startswith("TLSv1.")


def test_starttls_unverified_certificate_fails(smtp_starttls_server):
    import ssl

    with pytest.raises(ssl.SSLCertVerificationError):
        send_welcome("t@example.test", host="localhost", port=smtp_starttls_server.port, starttls=True,
                     context=ssl.create_default_context())
    assert smtp_starttls_server.messages == []


def test_aiosmtplib_starttls_with_ca_file(smtp_starttls_server, smtp_ca):
    assert smtp_starttls_server.ca_file == smtp_ca.path
    asyncio.run(send_welcome_async("s@example.test", host="127.0.0.1", port=smtp_starttls_server.port,
                                   start_tls=True, cert_bundle=smtp_ca.path))
    assert smtp_starttls_server.wait_for(1)[0].secure


def test_implicit_tls(smtps_server):
    with smtplib.SMTP_SSL(smtps_server.host, smtps_server.port, context=smtps_server.client_context()) as s:
        s.sendmail("a@example.test", ["b@example.test"], b"Subject: tls\r\n\r\nx\r\n")
    assert smtps_server.messages[0].secure


def test_size_limit(smtp_server_factory):
    server = smtp_server_factory(size=200)
    with pytest.raises(smtplib.SMTPSenderRefused) as e:  # SIZE declared on MAIL
        with smtplib.SMTP(*server.address) as s:
            s.sendmail("a@example.test", ["b@example.test"], b"x" * 500)
    assert e.value.smtp_code == 552
    assert server.messages == []


def test_lmtp(smtp_server_factory):
    server = smtp_server_factory(lmtp=True)
    with smtplib.LMTP(server.host, server.port) as s:
        s.sendmail("a@example.test", ["box@example.test"], b"Subject: lmtp\r\n\r\nx\r\n")
    [message] = server.messages
    assert message.lmtp and message.rcpt_to == ("box@example.test",)


class Policy:
    def on_rcpt_to(self, session, address):
        if address.domain != "example.test":
            raise SMTPError(550, "No such domain here", "5.1.2")

    def on_auth(self, session, credentials):
        return credentials.username if credentials.validate_password("secret") else None


def test_hooks_and_auth(smtp_server_factory):
    server = smtp_server_factory(Policy(), allow_insecure_auth=True)
    with smtplib.SMTP(*server.address) as s:
        s.login("alice", "secret")
        refused = s.sendmail("a@example.test", ["ok@example.test", "no@elsewhere.test"], b"Subject: x\r\n\r\ny\r\n")
    assert refused == {"no@elsewhere.test": (550, b"5.1.2 No such domain here")}
    [message] = server.messages
    assert message.user == "alice" and message.rcpt_to == ("ok@example.test",)


def test_wait_for_says_what_arrived(smtp_server):
    send_welcome("one@example.test", host=smtp_server.host, port=smtp_server.port)
    with pytest.raises(MessagesNotReceived) as e:
        smtp_server.wait_for(2, timeout=0.2)
    assert "expected 2 message(s) within 0.2 s, 1 arrived" in str(e.value)
    assert "<noreply@example.test> -> <one@example.test>" in str(e.value)
    assert len(e.value.messages) == 1


def test_clear(smtp_server):
    send_welcome("one@example.test", host=smtp_server.host, port=smtp_server.port)
    smtp_server.clear()
    assert smtp_server.messages == []
    send_welcome("two@example.test", host=smtp_server.host, port=smtp_server.port)
    assert [m.rcpt_to for m in smtp_server.wait_for(1)] == [("two@example.test",)]


def test_ipv6(smtp_server_factory):
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = smtp_server_factory(host="::1")
    send_welcome("six@example.test", host="::1", port=server.port)
    assert server.messages[0].peer[0] == "::1"


def test_port_in_use_fails_start(smtp_server, smtp_server_factory):
    from twisted.internet.error import CannotListenError

    with pytest.raises(CannotListenError):
        smtp_server_factory(port=smtp_server.port)
