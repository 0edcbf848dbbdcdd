# -*- test-case-name: tests.test_tap_service -*-
"""
L{txsmtpsrv._tap.makeService} on a C{MemoryReactorClock}: how the options
wire the service (delivery, LMTP, XCLIENT, TLS files, auth checkers), bad
values as usage errors, and stopping waiting for a transaction in progress.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.cred.credentials import UsernamePassword
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage

from txsmtpsrv import SMTPServer
from txsmtpsrv._delivery import MaildirDelivery, MboxDelivery
from txsmtpsrv._cli import worker_arguments as _worker_options
from txsmtpsrv._tap import SMTPService, makeService
from txsmtpsrv.testing import FakeResolver, TestClient

from tests._certs import make_ca, write_pem
from tests._tap import _scratch_directory  # noqa: F401 (the autouse fixture)
from tests._support import result
from tests._tap import parse


# ---------------------------------------------------------------------------
# makeService


def test_make_service_wiring(tmp_path):
    """Each --listen becomes a listening service for one SMTPServer built from the options."""
    reactor = MemoryReactorClock()
    options = parse("-l", "tcp:2525:interface=127.0.0.1", "-l", "tcp:2526", "--maildir", str(tmp_path / "md"),
                    "--name", "mx.test", "--banner", "hello", "--size", "1000", "--max-clients", "7",
                    "--socket-timeout", "9", "--close-timeout", "3", "--no-reverse-lookup")
    service = makeService(options, reactor=reactor)
    assert IService.providedBy(service) and isinstance(service, SMTPService)
    server = service.server
    assert isinstance(server, SMTPServer) and server.reactor is reactor
    o = server.options
    assert (o.name, o.banner, o.size, o.max_clients, o.socket_timeout, o.close_timeout) == (
        "mx.test", "hello", 1000, 7, 9.0, 3.0)
    assert o.disable_reverse_lookup is True and o.lmtp is False
    delivery = server._hooks.on_data.__self__
    assert isinstance(delivery, MaildirDelivery)
    assert (delivery.path, delivery.hostname) == (str(tmp_path / "md"), "mx.test")
    listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
    assert len(listeners) == 2
    with capturedLogs() as events:
        service.privilegedStartService()
        service.startService()
    assert [(port, factory, interface) for port, factory, _backlog, interface in reactor.tcpServers] == [
        (2525, server, "127.0.0.1"), (2526, server, "")]
    assert sum("listening on" in formatEvent(e) for e in events) == 2
    result(service.stopService())


def test_make_service_mbox_and_default_name(tmp_path):
    """--mbox selects the mbox delivery; without --name the server's default name is used everywhere."""
    service = makeService(parse("--mbox", str(tmp_path / "box")), reactor=MemoryReactorClock())
    delivery = service.server._hooks.on_data.__self__
    assert isinstance(delivery, MboxDelivery)
    assert delivery.path == str(tmp_path / "box")
    assert delivery.hostname == service.server.options.name == socket.gethostname()


def test_make_service_bad_listen():
    """An endpoint string Twisted can't parse is a usage error."""
    with pytest.raises(usage.UsageError):
        makeService(parse("-l", "nosuchendpointtype:1"), reactor=MemoryReactorClock())


def test_lmtp_passes_through(tmp_path):
    """--lmtp makes an LMTP server, and the listening log line says so."""
    reactor = MemoryReactorClock()
    service = makeService(parse("--lmtp", "--maildir", str(tmp_path)), reactor=reactor)
    assert service.server.options.lmtp is True
    with capturedLogs() as events:
        service.privilegedStartService()
    assert any("txsmtpsrv LMTP listening on" in formatEvent(e) for e in events)
    result(service.stopService())


def test_xclient_trusted_passes_through(tmp_path):
    """--xclient-trusted turns XCLIENT/XFORWARD on for the named networks only; without it both stay off."""
    import ipaddress
    reactor = MemoryReactorClock()
    service = makeService(parse("--maildir", str(tmp_path)), reactor=reactor)
    o = service.server.options
    assert (o.use_xclient, o.use_xforward, o.xclient_trusted) == (False, False, ())
    options = parse("--maildir", str(tmp_path), "--xclient-trusted", "127.0.0.1/32, 10.0.0.0/8,::1")
    assert options["xclient-trusted"] == ("127.0.0.1/32", "10.0.0.0/8", "::1")
    o = makeService(options, reactor=reactor).server.options
    assert o.use_xclient and o.use_xforward
    assert o.xclient_trusted == tuple(ipaddress.ip_network(n) for n in ("127.0.0.1/32", "10.0.0.0/8", "::1"))
    assert "--xclient-trusted=127.0.0.1/32,10.0.0.0/8,::1" in _worker_options(options)


def test_tls_files_pass_through(tmp_path):
    """--tls-key/--tls-cert become the server's TLS configuration, loaded when the service is made."""
    leaf = make_ca().issue("mx.test")
    key = write_pem(str(tmp_path), "key.pem", leaf.key_pem)
    cert = write_pem(str(tmp_path), "cert.pem", leaf.cert_pem)
    service = makeService(parse("--tls-key", key, "--tls-cert", cert, "--maildir", str(tmp_path)),
                          reactor=MemoryReactorClock())
    config = service.server.options.tls
    assert (config.key, config.cert) == (key, cert)
    assert service.server._tls_holder is not None  # loaded at start-up, not at the first STARTTLS


def test_bad_tls_files_are_usage_errors(tmp_path):
    """A missing or unusable certificate is a usage error, found while parsing the command line."""
    (tmp_path / "junk.pem").write_text("not a key")
    for argv in (["--tls-key", str(tmp_path / "missing.pem"), "--tls-cert", str(tmp_path / "missing.pem")],
                 ["--tls-cert", str(tmp_path / "junk.pem")]):
        with pytest.raises(usage.UsageError, match="--tls-key/--tls-cert"):
            parse(*argv)


def test_auth_checkers_are_wired(tmp_path):
    """--auth file: gives the server an on_auth backed by the checker; the service keeps the checkers."""
    users = tmp_path / "users.txt"
    users.write_text("alice:secret\n")
    options = parse("--auth", f"file:{users}", "--maildir", str(tmp_path / "md"))
    [checker] = options.credentialCheckers()
    assert options["auth"] == [f"file:{users}"]
    service = makeService(options, reactor=MemoryReactorClock())
    assert service.credentialCheckers == [checker]
    authenticator = service.server._hooks.on_auth.__self__
    assert result(authenticator.portal.login(UsernamePassword(b"alice", b"secret"), None))[1] == b"alice"
    assert "PLAIN" in authenticator.mechanisms


def test_reload_without_tls_makes_no_certificate(tmp_path):
    """
    SIGHUP (say, to re-read --auth) under --hide-starttls: no development certificate
    is made, and the log does not say one is in use or that TLS was reloaded.
    """
    service = makeService(parse("--maildir", str(tmp_path / "md"), "--hide-starttls"), reactor=MemoryReactorClock())
    with capturedLogs() as events:
        service.reload()
    assert not [formatEvent(e) for e in events if "TLS" in formatEvent(e) or "certificate" in formatEvent(e)]


def test_stop_service_waits_for_transaction_in_progress(tmp_path, monkeypatch):
    """Stopping lets an accepted transaction finish (its 250 goes out), then closes with 421."""
    from txsmtpsrv import _diskio

    # A memory reactor runs no delivery threads' answers: do the file work inline.
    monkeypatch.setattr(_diskio, "DEFAULT_THREADS", 0)
    reactor = MemoryReactorClock()
    service = makeService(parse("--maildir", str(tmp_path), "--name", "mx.test"), reactor=reactor)
    service.server.resolver = FakeResolver()  # no real DNS in tests
    previous = signal.getsignal(signal.SIGHUP)
    service.privilegedStartService()
    service.startService()
    client = TestClient(service.server)
    assert client.command("EHLO c.test").code == 250
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    assert client.command("RCPT TO:<b@x.test>").code == 250
    assert client.command("DATA").code == 354
    client.send(b"Subject: x\r\n\r\nfirst half\r\n")
    stopped = service.stopService()
    assert not stopped.called
    assert signal.getsignal(signal.SIGHUP) == service._hangup  # a SIGHUP now must not kill the transaction
    client.send(b"second half\r\n.\r\n")
    replies = client.replies()
    assert [r.code for r in replies] == [250, 421]
    client.disconnect()
    assert result(stopped) is None
    assert signal.getsignal(signal.SIGHUP) == previous
    [name] = os.listdir(tmp_path / "new")
    assert (tmp_path / "new" / name).read_bytes().endswith(b"first half\nsecond half\n")
