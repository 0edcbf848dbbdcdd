"""
Tests for PIPELINING (RFC 2920) in L{txsmtpsrv._protocol}: replies in
command order while hooks are slow, and one transport write per read.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from txsmtpsrv import SMTPError
from txsmtpsrv._tls import TLSConfig
from txsmtpsrv.testing import TestClient, make_server, parse_replies
from tests._certs import make_ca
from tests._memory import count_writes



class Slow:
    """Hooks whose every answer is a Deferred the test fires; calls are recorded."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.pending: List[Deferred] = []

    def _later(self, name: str, arg: Any) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((name, arg))
        self.pending.append(d)
        return d

    def on_mail_from(self, session, address):
        return self._later("mail", address.address)

    def on_rcpt_to(self, session, address):
        return self._later("rcpt", address.address)

    def on_data(self, session, stream):
        stream.content().addCallback(lambda body: self.calls.append(("body", body)))
        return self._later("data", None)


def greeted(hooks: Any = None, **options: Any) -> TestClient:
    """A client that has sent EHLO."""
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    return client


def test_pipelining_advertised():
    """EHLO advertises PIPELINING."""
    server, _ = make_server()
    assert "PIPELINING" in TestClient(server).command("EHLO c.test").lines


def test_replies_in_command_order_with_slow_hooks():
    """With slow hooks, replies come in command order and nothing after a pending command is answered."""
    hooks = Slow()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b1@y.test>\r\nNOOP\r\nRCPT TO:<b2@y.test>\r\nDATA\r\n"
                b"hello\r\n.\r\nNOOP\r\n")
    assert client.read() == b""
    assert hooks.calls == [("mail", "a@x.test")]
    hooks.pending.pop(0).callback(None)
    assert [(r.code, r.enhanced) for r in client.replies()] == [(250, "2.1.0")]
    assert hooks.calls[-1] == ("rcpt", "b1@y.test")
    hooks.pending.pop(0).errback(SMTPError(550, "No such user", "5.1.1"))
    # The NOOP after it is answered; the next RCPT waits again.
    assert [(r.code, r.enhanced) for r in client.replies()] == [(550, "5.1.1"), (250, "2.0.0")]
    assert hooks.calls[-1] == ("rcpt", "b2@y.test")
    hooks.pending.pop(0).callback(None)
    assert [r.code for r in client.replies()] == [250, 354]
    assert hooks.calls[-2:] == [("data", None), ("body", b"hello\r\n")]
    hooks.pending.pop(0).callback(None)
    assert [(r.code, r.enhanced) for r in client.replies()] == [(250, "2.0.0"), (250, "2.0.0")]


def test_next_hook_not_called_before_previous_answers():
    """A pipelined RCPT's hook is not even called while MAIL's hook is pending."""
    hooks = Slow()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
    assert [c[0] for c in hooks.calls] == ["mail"]
    hooks.pending.pop(0).callback(None)
    assert [c[0] for c in hooks.calls] == ["mail", "rcpt"]


def test_one_write_per_read_sync():
    """All replies produced from one read go out in one transport write."""
    server, _ = make_server()
    client = TestClient(server)
    writes = count_writes(client)
    replies = client.sendmail("a@x.test", ["b@y.test", "c@y.test"], b"Subject: x\r\n\r\nhi\r\n")
    assert [r.code for r in replies] == [250, 250, 250, 250, 354, 250]
    assert len(writes) == 1


def test_one_write_for_many_errors():
    """A read full of bad commands is answered in one write."""
    server, _ = make_server(max_unrecognized_commands=0)
    client = TestClient(server)
    writes = count_writes(client)
    client.send(b"FOO\r\nBAR\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nNOOP\r\nHELP\r\n")
    assert [r.code for r in client.replies()] == [500, 500, 503, 503, 250, 214]
    assert len(writes) == 1


def test_one_write_when_a_hook_fires():
    """When a slow hook fires, its reply and the replies to the commands queued behind it share one write."""
    hooks = Slow()
    client = greeted(hooks)
    writes = count_writes(client)
    client.send(b"MAIL FROM:<a@x.test>\r\nNOOP\r\nNOOP\r\nRSET\r\n")
    assert writes == []
    hooks.pending.pop(0).callback(None)
    assert len(writes) == 1
    assert [r.code for r in client.replies()] == [250, 250, 250, 250]


def test_one_write_for_data_reply_and_following_commands():
    """The DATA verdict and the replies to commands pipelined after the dot go out in one write."""
    hooks = Slow()
    client = greeted(hooks)
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    hooks.pending.pop(0).callback(None)
    client.send(b"RCPT TO:<b@y.test>\r\n")
    hooks.pending.pop(0).callback(None)
    client.replies()
    writes = count_writes(client)
    client.send(b"DATA\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
    assert len(writes) == 1  # the 354
    hooks.pending.pop(0).callback(None)
    assert len(writes) == 2
    assert [r.code for r in client.replies()] == [354, 250, 250, 221]
    assert client.closed


def test_commands_sent_in_pieces():
    """Commands split across reads at any byte are still answered in order."""
    server, _ = make_server()
    client = TestClient(server)
    data = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n"
    for i in range(len(data)):
        client.send(data[i:i + 1])
    assert [r.code for r in client.replies()] == [250, 250, 250, 354, 250, 250]


def test_greeting_then_early_commands_in_order():
    """Commands sent before a slow on_connect answers are answered after the greeting, in one write."""
    gate: List[Deferred] = []

    class H:
        def on_connect(self, session):
            gate.append(Deferred())
            return gate[-1]

    server, _ = make_server(H())
    client = TestClient(server, greeting=False)
    writes = count_writes(client)
    client.send(b"EHLO c.test\r\nNOOP\r\n")
    gate[0].callback(None)
    assert len(writes) == 1
    assert [r.code for r in client.replies()] == [220, 250, 250]


@implementer(ITLSTransport)
class _TLSTransport(StringTransport):
    """A StringTransport that can start TLS: it records when, and what was written before."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.written_before_tls: bytes | None = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.written_before_tls = self.value()
        directlyProvides(self, ITLSTransport, ISSLTransport)


def test_starttls_discards_pipelined_commands():
    """Commands pipelined after STARTTLS are discarded, not run after the handshake (CVE-2011-0411)."""
    leaf = make_ca("Pipelining Test CA").issue("mx.test")
    mail: List[str] = []

    class Hooks:
        def on_mail_from(self, session, address):
            mail.append(address.address)

    server, _ = make_server(Hooks(), tls=TLSConfig(key=leaf.key_pem, cert=leaf.cert_pem))
    peer = IPv4Address("TCP", "192.0.2.10", 40000)
    transport = _TLSTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 25), peerAddress=peer)
    proto = server.buildProtocol(peer)
    proto.makeConnection(transport)
    proto.dataReceived(b"EHLO c.test\r\n")
    transport.clear()
    # A man in the middle appends plaintext commands to the client's STARTTLS.
    proto.dataReceived(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n")
    replies, rest = parse_replies(transport.value())
    assert [(r.code, r.enhanced) for r in replies] == [(220, "2.0.0")] and rest == b""
    assert transport.written_before_tls == transport.value()  # the 220 went out before TLS started
    assert mail == []
    proto.handshakeCompleted()
    transport.clear()
    # Inside TLS nothing of the injected transaction exists: RCPT needs a MAIL first.
    proto.dataReceived(b"EHLO c.test\r\nRCPT TO:<victim@y.test>\r\n")
    replies, _ = parse_replies(transport.value())
    assert [r.code for r in replies] == [250, 503]
    assert mail == []
