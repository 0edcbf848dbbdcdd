# -*- test-case-name: tests.test_tls_memory -*-
"""
STARTTLS, implicit TLS and REQUIRETLS in the protocol, in memory.

A L{StringTransport} that provides C{ITLSTransport} records the context
C{startTLS} receives; the test then plays the end of the handshake by
calling C{handshakeCompleted()} itself. No crypto runs here (that is
C{tests/test_tls_dialogue.py}); what is checked is the dialogue: advertisement, the
error replies, RFC 3207's "forget everything" rule, the CVE-2011-0411
plaintext-injection defence, C{needs_upgrade}, the C{on_secure} hook, the
handshake timer and REQUIRETLS (RFC 8689).
"""

from __future__ import annotations

import base64
from typing import Any, List, Optional

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from tests._certs import common_name, make_ca
from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._tls import TLSConfig, TLSContextHolder
from txsmtpsrv.testing import (ImplicitTLSStringTransport, TestClient, TLSStringTransport, make_server,
                               parse_replies)

PEER = IPv4Address("TCP", "192.0.2.10", 40000)
HOST = IPv4Address("TCP", "192.0.2.1", 25)

_CA = make_ca("Memory Test CA")
_LEAF = _CA.issue("mx.test")
#: A real certificate, so that building the server's TLS holder does not
#: generate (and warn about) a development certificate in every test.
TLS = TLSConfig(key=_LEAF.key_pem, cert=_LEAF.cert_pem, handshake_timeout=5.0)


class Client(TestClient):
    """TestClient on a pretend-TLS transport; here C{ehlo} and C{starttls} also assert success."""

    def __init__(self, server: Any, transport_class: type = TLSStringTransport) -> None:
        tls = "implicit" if transport_class is ImplicitTLSStringTransport else "starttls"
        super().__init__(server, peer=PEER, host=("192.0.2.1", 25), tls=tls, handshake=False)

    def ehlo(self, name: str = "client.test") -> Reply:
        reply = super().ehlo(name)
        assert reply.code == 250, reply
        return reply

    def starttls(self, handshake: bool = True) -> Reply:
        reply = super().starttls(handshake)
        assert (reply.code, reply.enhanced) == (220, "2.0.0"), reply
        return reply


def keywords(reply: Reply) -> List[str]:
    """The extension keywords of an EHLO reply (first word of each line after the first)."""
    return [line.split(" ", 1)[0].upper() for line in reply.lines[1:]]


def code(reply: Reply) -> tuple[int, Optional[str]]:
    """The code and enhanced status code of a reply."""
    return reply.code, reply.enhanced


class Recorder:
    """Hooks that remember what they were called with."""

    def __init__(self) -> None:
        self.mail: List[str] = []
        self.rcpt: List[Any] = []
        self.secure: List[Any] = []

    def on_mail_from(self, session: Any, address: Any) -> None:
        self.mail.append(address.address)

    def on_rcpt_to(self, session: Any, address: Any) -> None:
        self.rcpt.append((address.address, session.envelope.requiretls))

    def on_secure(self, session: Any) -> None:
        self.secure.append((session.secure, session.host_name_appears_as))


class AuthRecorder(Recorder):
    """Recorder with an auth hook that accepts alice."""

    def on_auth(self, session: Any, credentials: Any) -> Any:
        return credentials.username if credentials.username == "alice" else None


def plain(user: str = "alice", password: str = "pw") -> str:
    """A PLAIN initial response."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def server(hooks: Any = None, **options: Any) -> Any:
    """A server on a fake clock (C{srv.clock}) with the test certificate."""
    options.setdefault("tls", TLS)
    srv, clock = make_server(hooks, **options)
    srv.clock = clock
    return srv


# --------------------------------------------------------------------------
# Advertisement


def test_starttls_advertised_in_plaintext():
    """A TLS-capable transport gets STARTTLS in EHLO, and no REQUIRETLS yet."""
    c = Client(server())
    kw = keywords(c.ehlo())
    assert "STARTTLS" in kw
    assert "REQUIRETLS" not in kw


def test_starttls_not_advertised_when_hidden():
    """hide_starttls removes STARTTLS from EHLO and answers it with 502 5.5.1."""
    c = Client(server(hide_starttls=True))
    assert "STARTTLS" not in keywords(c.ehlo())
    assert code(c.command("STARTTLS")) == (502, "5.5.1")
    assert c.transport.tls_contexts == []
    assert c.command("NOOP").code == 250


def test_starttls_not_advertised_without_tls_transport():
    """A transport without startTLS (plain StringTransport) gets no STARTTLS and 454 4.7.0."""
    c = TestClient(server())
    assert not ITLSTransport.providedBy(c.transport)
    assert "STARTTLS" not in keywords(c.command("EHLO client.test"))
    assert code(c.command("STARTTLS")) == (454, "4.7.0")
    assert c.command("NOOP").code == 250


def test_starttls_disabled_command():
    """disabled_commands=STARTTLS hides it and answers 502 5.5.1."""
    c = Client(server(disabled_commands={"STARTTLS"}))
    assert "STARTTLS" not in keywords(c.ehlo())
    assert code(c.command("STARTTLS")) == (502, "5.5.1")
    assert c.transport.tls_contexts == []


def test_not_advertised_inside_tls():
    """After the handshake EHLO offers REQUIRETLS but not STARTTLS; STARTTLS is 503 5.5.1."""
    c = Client(server())
    c.ehlo()
    c.starttls()
    kw = keywords(c.ehlo())
    assert "STARTTLS" not in kw
    assert "REQUIRETLS" in kw
    assert code(c.command("STARTTLS")) == (503, "5.5.1")
    assert len(c.transport.tls_contexts) == 1


def test_not_advertised_under_implicit_tls():
    """Under implicit TLS (an ISSLTransport from the start) STARTTLS is neither offered nor accepted."""
    c = Client(server(), ImplicitTLSStringTransport)
    c.protocol.handshakeCompleted()
    assert "STARTTLS" not in keywords(c.ehlo())
    assert code(c.command("STARTTLS")) == (503, "5.5.1")


def test_auth_offered_only_after_tls():
    """With an auth hook AUTH is offered only inside TLS (allow_insecure_auth off)."""
    c = Client(server(AuthRecorder()))
    assert not any(k == "AUTH" for k in keywords(c.ehlo()))
    c.starttls()
    reply = c.ehlo()
    assert "AUTH PLAIN LOGIN" in reply.lines


# --------------------------------------------------------------------------
# The STARTTLS command


def test_starttls_with_argument():
    """STARTTLS takes no argument: 501 5.5.4, nothing started."""
    c = Client(server())
    c.ehlo()
    assert code(c.command("STARTTLS now")) == (501, "5.5.4")
    assert c.transport.tls_contexts == []


def test_starttls_reply_goes_out_before_the_switch():
    """220 2.0.0 is written in plaintext before startTLS, which gets the server's reloadable holder."""
    srv = server()
    c = Client(srv)
    c.ehlo()
    c.send("STARTTLS\r\n")
    assert c.transport.written_before_tls == b"220 2.0.0 Ready to start TLS\r\n"
    [ctx] = c.transport.tls_contexts
    assert ctx is srv.tls
    assert isinstance(ctx, TLSContextHolder)


def test_pipelined_ehlo_starttls_written_together():
    """EHLO and STARTTLS in one read: both replies go out, in order, before the switch."""
    c = Client(server())
    c.send("EHLO client.test\r\nSTARTTLS\r\n")
    replies, rest = parse_replies(c.transport.written_before_tls)
    assert [r.code for r in replies] == [250, 220]
    assert rest == b""


def test_starttls_without_ehlo():
    """STARTTLS works without a prior EHLO (RFC 3207 does not require one)."""
    c = Client(server())
    c.starttls()
    assert c.session.secure


def test_starttls_with_broken_configuration():
    """Certificates that cannot be loaded give 454 4.7.0 and the session goes on in plaintext."""
    c = Client(server(tls=TLSConfig(key="/nonexistent/key.pem", cert="/nonexistent/cert.pem")))
    c.ehlo()
    with capturedLogs() as events:
        assert code(c.command("STARTTLS")) == (454, "4.7.0")
    assert any(e.get("log_level") == LogLevel.critical or e.get("log_failure") for e in events)
    assert c.transport.tls_contexts == []
    assert c.command("NOOP").code == 250


def test_secure_and_transmission_type():
    """session.secure turns True at handshakeCompleted; with-type ESMTPS, then ESMTPSA after AUTH."""
    c = Client(server(AuthRecorder()))
    c.ehlo()
    assert c.session.transmission_type == "ESMTP"
    c.starttls(handshake=False)
    assert not c.session.secure
    c.protocol.handshakeCompleted()
    assert c.session.secure
    c.ehlo()
    assert c.session.transmission_type == "ESMTPS"
    assert code(c.command("AUTH PLAIN " + plain())) == (235, "2.7.0")
    assert c.session.transmission_type == "ESMTPSA"


# --------------------------------------------------------------------------
# RFC 3207 4.2: forget what was learnt in plaintext


def test_forgets_helo():
    """After STARTTLS the HELO/EHLO is forgotten: MAIL before a new EHLO is 503 5.5.1."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo("plain.test")
    c.starttls()
    assert c.session.opening_command == ""
    assert c.session.host_name_appears_as == ""
    assert code(c.command("MAIL FROM:<a@b.test>")) == (503, "5.5.1")
    assert hooks.mail == []
    c.ehlo("secure.test")
    assert c.session.host_name_appears_as == "secure.test"
    assert c.command("MAIL FROM:<a@b.test>").code == 250


def test_forgets_transaction():
    """An open transaction (MAIL, RCPT) does not survive STARTTLS."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo()
    assert c.command("MAIL FROM:<a@b.test>").code == 250
    assert c.command("RCPT TO:<r@b.test>").code == 250
    c.starttls()
    assert c.session.envelope.mail_from is None
    assert c.session.envelope.rcpt_to == []
    c.ehlo()
    assert code(c.command("RCPT TO:<r@b.test>")) == (503, "5.5.1")
    assert code(c.command("DATA")) == (503, "5.5.1")


def test_forgets_authentication():
    """A plaintext AUTH (allow_insecure_auth) is forgotten: MAIL needs AUTH again inside TLS."""
    hooks = AuthRecorder()
    c = Client(server(hooks, allow_insecure_auth=True))
    c.ehlo()
    assert code(c.command("AUTH PLAIN " + plain())) == (235, "2.7.0")
    assert c.session.user == "alice"
    c.starttls()
    assert c.session.user is None
    c.ehlo()
    assert code(c.command("MAIL FROM:<a@b.test>")) == (530, "5.7.0")
    assert code(c.command("AUTH PLAIN " + plain())) == (235, "2.7.0")
    assert c.command("MAIL FROM:<a@b.test>").code == 250


def test_starttls_during_sasl_exchange_is_a_response():
    """A STARTTLS line during an AUTH exchange is a SASL response, not a command."""
    c = Client(server(AuthRecorder(), allow_insecure_auth=True))
    c.ehlo()
    assert c.command("AUTH PLAIN").code == 334
    reply = c.command("STARTTLS")
    assert reply.code in (501, 535)
    assert c.transport.tls_contexts == []


# --------------------------------------------------------------------------
# CVE-2011-0411: plaintext pipelined after STARTTLS


def test_injection_one_segment():
    """
    STARTTLS plus MAIL in one read: MAIL is never executed (CVE-2011-0411).

    In 2011 Postfix, qmail and others ran commands that arrived in the same
    TCP segment as STARTTLS after switching to TLS, so a man in the middle
    could inject plaintext commands into the encrypted session.
    """
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo()
    with capturedLogs() as events:
        c.send("STARTTLS\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<r@y.test>\r\n")
    replies, _ = parse_replies(c.transport.written_before_tls)
    assert [r.code for r in replies] == [220]
    assert c.transport.value() == c.transport.written_before_tls  # nothing answered after the switch
    c.transport.clear()
    c.protocol.handshakeCompleted()
    assert hooks.mail == [] and hooks.rcpt == []
    assert any("discarded" in e.get("log_format", "") for e in events)
    # The first command inside TLS behaves as if nothing had been sent.
    assert code(c.command("RCPT TO:<r@y.test>")) == (503, "5.5.1")
    assert code(c.command("MAIL FROM:<x@y.test>")) == (503, "5.5.1")  # EHLO forgotten, MAIL not open
    c.ehlo()
    assert c.command("MAIL FROM:<x@y.test>").code == 250
    assert hooks.mail == ["x@y.test"]


def test_injection_partial_line():
    """An incomplete plaintext line after STARTTLS is not glued onto the first TLS command."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo()
    c.send("STARTTLS\r\nMAIL FROM:<x@y.te")
    c.protocol.handshakeCompleted()
    c.transport.clear()
    assert c.command("EHLO client.test").code == 250
    assert code(c.command("NOOP")) == (250, "2.0.0")
    assert hooks.mail == []


def test_injection_while_paused():
    """STARTTLS run later from the buffer (an async hook paused reading) still drops what followed."""
    gate: Deferred[None] = Deferred()

    class SlowHelo(Recorder):
        def on_helo(self, session: Any, hostname: str) -> Any:
            return gate

    hooks = SlowHelo()
    c = Client(server(hooks))
    c.send("EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<x@y.test>\r\n")
    c.send("RCPT TO:<late@y.test>\r\n")  # another read while paused
    assert c.transport.tls_contexts == []
    gate.callback(None)
    replies, _ = parse_replies(c.transport.written_before_tls)
    assert [r.code for r in replies] == [250, 220]
    c.protocol.handshakeCompleted()
    c.transport.clear()
    assert hooks.mail == [] and hooks.rcpt == []
    assert code(c.command("MAIL FROM:<x@y.test>")) == (503, "5.5.1")


def test_injection_after_overlong_line():
    """Over-long line, STARTTLS and MAIL in one read: STARTTLS runs, MAIL does not."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo()
    c.send(b"X" * 20000 + b"\r\nSTARTTLS\r\nMAIL FROM:<x@y.test>\r\n")
    replies, _ = parse_replies(c.transport.written_before_tls)
    assert [r.code for r in replies] == [500, 220]
    c.protocol.handshakeCompleted()
    assert hooks.mail == []


# --------------------------------------------------------------------------
# needs_upgrade


def test_needs_upgrade():
    """needs_upgrade: MAIL and AUTH get 530 5.7.0 in plaintext and work after STARTTLS."""
    hooks = AuthRecorder()
    c = Client(server(hooks, needs_upgrade=True, allow_insecure_auth=True))
    c.ehlo()
    assert code(c.command("MAIL FROM:<a@b.test>")) == (530, "5.7.0")
    assert code(c.command("AUTH PLAIN " + plain())) == (530, "5.7.0")
    assert hooks.mail == []
    c.starttls()
    c.ehlo()
    assert code(c.command("AUTH PLAIN " + plain())) == (235, "2.7.0")
    assert c.command("MAIL FROM:<a@b.test>").code == 250
    assert hooks.mail == ["a@b.test"]


def test_needs_upgrade_without_auth_hook():
    """needs_upgrade alone (no auth hook): only MAIL is refused before TLS."""
    c = Client(server(Recorder(), needs_upgrade=True))
    c.ehlo()
    assert code(c.command("MAIL FROM:<a@b.test>")) == (530, "5.7.0")
    assert c.command("NOOP").code == 250
    c.starttls()
    c.ehlo()
    assert c.command("MAIL FROM:<a@b.test>").code == 250


# --------------------------------------------------------------------------
# REQUIRETLS (RFC 8689)


def test_requiretls_refused_in_plaintext():
    """MAIL ... REQUIRETLS in plaintext is 530 5.7.10 and opens no transaction."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo()
    assert code(c.command("MAIL FROM:<a@b.test> REQUIRETLS")) == (530, "5.7.10")
    assert hooks.mail == []
    assert c.command("MAIL FROM:<a@b.test>").code == 250


def test_requiretls_inside_tls():
    """Inside TLS, REQUIRETLS is accepted and the envelope records it."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.starttls()
    c.ehlo()
    assert c.command("MAIL FROM:<a@b.test> REQUIRETLS").code == 250
    assert c.session.envelope.requiretls is True
    assert c.command("RCPT TO:<r@b.test>").code == 250
    assert hooks.rcpt == [("r@b.test", True)]
    assert c.command("RSET").code == 250
    assert c.command("MAIL FROM:<a@b.test>").code == 250
    assert c.session.envelope.requiretls is False


def test_requiretls_takes_no_value():
    """REQUIRETLS=yes inside TLS is 501 5.5.4."""
    c = Client(server())
    c.starttls()
    c.ehlo()
    assert code(c.command("MAIL FROM:<a@b.test> REQUIRETLS=yes")) == (501, "5.5.4")


def test_requiretls_hidden():
    """hide_requiretls: not advertised inside TLS, and the parameter is unknown (555 5.5.4)."""
    c = Client(server(hide_requiretls=True))
    c.starttls()
    assert "REQUIRETLS" not in keywords(c.ehlo())
    assert code(c.command("MAIL FROM:<a@b.test> REQUIRETLS")) == (555, "5.5.4")


# --------------------------------------------------------------------------
# on_secure


def test_on_secure_called_once_after_handshake():
    """on_secure runs at handshakeCompleted with session.secure set, not at STARTTLS."""
    hooks = Recorder()
    c = Client(server(hooks))
    c.ehlo()
    c.starttls(handshake=False)
    assert hooks.secure == []
    c.protocol.handshakeCompleted()
    assert hooks.secure == [(True, "")]


def test_on_secure_rejects():
    """An SMTPError from on_secure is sent and the connection closed."""

    class Reject:
        def on_secure(self, session: Any) -> None:
            raise SMTPError(554, "TLS client refused", "5.7.1")

    c = Client(server(Reject()))
    c.ehlo()
    c.starttls()
    [reply] = c.replies()
    assert (reply.code, reply.enhanced, reply.lines) == (554, "5.7.1", ("TLS client refused",))
    assert c.closed
    c.send("EHLO client.test\r\n")
    assert c.replies() == []


def test_on_secure_reply_error_code_rejects():
    """on_secure returning Reply(554, ...) rejects like an SMTPError, as on_connect's Reply(554) does."""

    class Refuse:
        def on_secure(self, session: Any) -> Reply:
            return Reply(554, "TLS client refused", "5.7.1")

    c = Client(server(Refuse()))
    c.starttls()
    assert [code(r) for r in c.replies()] == [(554, "5.7.1")]
    assert c.closed


def test_on_secure_async_pauses_commands():
    """While an async on_secure has not answered, commands wait; then they run in order."""
    gate: Deferred[None] = Deferred()

    class Slow:
        def on_secure(self, session: Any) -> Any:
            return gate

    c = Client(server(Slow()))
    c.starttls()
    c.send("EHLO client.test\r\nNOOP\r\n")
    assert c.replies() == []
    gate.callback(None)
    assert [r.code for r in c.replies()] == [250, 250]


def test_on_secure_async_rejects():
    """An async on_secure failing with SMTPError: reply, close, queued commands never run."""
    gate: Deferred[None] = Deferred()
    hooks = Recorder()
    hooks.on_secure = lambda session: gate  # type: ignore[method-assign]
    c = Client(server(hooks))
    c.starttls()
    c.send("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n")
    gate.errback(SMTPError(421, "go away", "4.7.0"))
    assert [code(r) for r in c.replies()] == [(421, "4.7.0")]
    assert c.closed
    assert hooks.mail == []


def test_on_secure_under_implicit_tls():
    """Implicit TLS: greeting at connect, on_secure at handshake, session.secure then."""
    hooks = Recorder()
    c = Client(server(hooks), ImplicitTLSStringTransport)
    assert c.greeting is not None and c.greeting.code == 220
    assert not c.session.secure and hooks.secure == []
    c.protocol.handshakeCompleted()
    assert hooks.secure == [(True, "")]
    c.ehlo()
    assert c.session.transmission_type == "ESMTPS"


# --------------------------------------------------------------------------
# Handshake timer


def test_starttls_handshake_timeout():
    """A client that never finishes the STARTTLS handshake is aborted after handshake_timeout."""
    srv = server(tls=TLSConfig(key=_LEAF.key_pem, cert=_LEAF.cert_pem, handshake_timeout=2.0))
    c = Client(srv)
    c.starttls(handshake=False)
    srv.clock.advance(1.9)
    assert not c.closed
    srv.clock.advance(0.2)
    assert c.transport.disconnected  # abortConnection, no reply possible mid-handshake


def test_handshake_timer_cancelled():
    """Once the handshake completes the timer is gone; only the idle timeout remains."""
    srv = server(socket_timeout=60.0)
    c = Client(srv)
    c.starttls()
    srv.clock.advance(10)
    assert not c.closed
    assert c.command("NOOP").code == 250


def test_implicit_tls_handshake_timeout():
    """Implicit TLS: the timer starts at connect; no handshake within the timeout aborts."""
    srv = server()
    c = Client(srv, ImplicitTLSStringTransport)
    srv.clock.advance(5.1)
    assert c.transport.disconnected


def test_handshake_timeout_none():
    """handshake_timeout=None leaves only the idle timeout."""
    srv = server(tls=TLSConfig(key=_LEAF.key_pem, cert=_LEAF.cert_pem, handshake_timeout=None),
                 socket_timeout=100.0)
    c = Client(srv)
    c.starttls(handshake=False)
    srv.clock.advance(99)
    assert not c.closed
    srv.clock.advance(2)
    assert c.closed


def test_connection_lost_cancels_handshake_timer():
    """A client that leaves mid-handshake leaves no timer behind."""
    srv = server()
    c = Client(srv)
    c.starttls(handshake=False)
    c.protocol.connectionLost(Failure(ConnectionLost()))
    assert srv.clock.getDelayedCalls() == []


# --------------------------------------------------------------------------
# Development certificate


def test_development_certificate_when_unconfigured():
    """Without a certificate, STARTTLS uses a development certificate and warns about it."""
    srv = server(tls=None)
    c = Client(srv)
    with capturedLogs() as events:
        c.starttls()
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert any("development" in e["log_format"] for e in warnings)
    cert = SSL.Connection(srv.tls.getContext(), None).get_certificate(as_cryptography=True)
    assert common_name(cert) == "mx.test"  # made for the server's name
    assert cert.issuer == cert.subject  # self-signed


@pytest.mark.parametrize("hide_esc", [False, True])
def test_starttls_reply_without_enhanced_codes(hide_esc):
    """With ENHANCEDSTATUSCODES hidden the 220 has no enhanced code."""
    c = Client(server(hide_enhancedstatuscodes=hide_esc))
    c.send("STARTTLS\r\n")
    expected = b"220 Ready to start TLS\r\n" if hide_esc else b"220 2.0.0 Ready to start TLS\r\n"
    assert c.transport.written_before_tls == expected


def test_secured_option_starts_sessions_secure():
    """secured=True (TLS terminated in front of us): AUTH offered, STARTTLS not, ESMTPSA after login."""
    import base64

    from txsmtpsrv.testing import TestClient as _Client
    from txsmtpsrv.testing import make_server as _make

    class H:
        def on_auth(self, session, credentials):
            return credentials.username

    server, _ = _make(H(), secured=True)
    client = _Client(server)
    assert client.protocol.session.secure
    ehlo = client.command("EHLO c.test").lines
    assert any(line.startswith("AUTH ") for line in ehlo) and "STARTTLS" not in ehlo
    assert client.command("AUTH PLAIN " + base64.b64encode(b"\0bob\0pw").decode()).code == 235
    assert client.protocol.session.transmission_type == "ESMTPSA"
