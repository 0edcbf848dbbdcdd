# -*- test-case-name: tests.test_tlslayer_loopback -*-
"""
The lean STARTTLS layer (L{txsmtpsrv._tlslayer}) over loopback with the real
reactor: real clients, a 10 MiB message through a pausing reader, nothing
kept after the connections, only plain TCP taking the layer, failures
reported as Twisted's layer reports them; and the existing loopback STARTTLS,
client-certificate and half-close tests again on Twisted's layer.
"""

from __future__ import annotations

import hashlib
import smtplib
import socket
import time
from typing import Any, Callable, List, Tuple

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests import test_halfclose, test_tls_certificates, test_tls_dialogue
from tests._tlswire import IO_TIMEOUT
from tests.test_tlsimplicit import compare_failed_handshakes
from txsmtpsrv import SMTPServer, _tlslayer
from txsmtpsrv._testca import test_ca
from txsmtpsrv._sharedports import listen_endpoint


# --------------------------------------------------------------------------------------
# Over loopback, with the real reactor


class _Streaming:
    """A data hook that reads the body with pauses (resumed by the reactor) and hashes it as it comes."""

    def __init__(self) -> None:
        self.messages: List[Tuple[int, str]] = []
        self.pauses = 0

    def on_data(self, session: Any, stream: Any) -> Any:
        hooks = self
        done: defer.Deferred[None] = defer.Deferred()

        class Reader:
            def makeConnection(self, producer: Any) -> None:
                self.producer = producer
                self.digest = hashlib.sha256()
                self.size = 0

            def dataReceived(self, data: bytes) -> None:
                self.digest.update(data)
                self.size += len(data)
                if self.size // 65536 > (self.size - len(data)) // 65536:  # every 64 KiB: a pause
                    hooks.pauses += 1
                    self.producer.pauseProducing()
                    reactor.callLater(0.001, self.producer.resumeProducing)

            def connectionLost(self, reason: Failure) -> None:
                hooks.messages.append((self.size, self.digest.hexdigest()))
                done.callback(None)

        stream.deliver_body(Reader())
        return done


class LoopbackTests(unittest.TestCase):
    timeout = 120

    def serve(self, hooks: Any, endpoint: str = "tcp:0:interface=127.0.0.1", **options: Any) -> "defer.Deferred[int]":
        started = self.started = []
        original = self.original = getattr(self, "original", _tlslayer.start_tls)

        def counting(*args: Any) -> Any:
            layer = original(*args)
            started.append(layer)
            return layer
        self.patch(_tlslayer, "start_tls", counting)
        options.setdefault("name", "mx.test")
        options.setdefault("tls", test_ca().server_config())
        server = self.smtp_server = SMTPServer(hooks, disable_reverse_lookup=True, **options)
        self.addCleanup(server.close)
        description = listen_endpoint(reactor, endpoint, lambda: server.tls)
        return server.listen(description).addCallback(lambda port: port.getHost().port)

    def thread(self, f: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        return deferToThread(f, *args).addTimeout(60, reactor)

    @defer.inlineCallbacks
    def test_ten_mib_with_a_pausing_reader(self) -> None:
        """smtplib, STARTTLS, a 10 MiB message in 16 KiB records, a reader that pauses every 64 KiB: all of it, intact."""
        hooks = _Streaming()
        port = yield self.serve(hooks)
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_0123456789\r\n"
        body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line))

        def client() -> Any:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.starttls(context=test_ca().client_context())
                s.ehlo("client.test")
                return s.sendmail("a@example.test", ["b@example.test"], body)

        refused = yield self.thread(client)
        self.assertEqual(refused, {})
        self.assertEqual(hooks.messages, [(len(body), hashlib.sha256(body).hexdigest())])
        self.assertGreater(hooks.pauses, 100)
        self.assertEqual(len(self.started), 1)

    @defer.inlineCallbacks
    def test_nothing_kept_after_the_connections(self) -> None:
        """Twenty STARTTLS sessions come and go: no layer (nor what it holds) outlives them."""
        import gc

        from twisted.logger import globalLogBeginner, globalLogPublisher
        # Before logging begins (pytest), Twisted keeps every event, and so
        # every connection (an event's log_source), in a history buffer.
        history = getattr(globalLogBeginner, "_temporaryObserver", None)
        if history is not None:
            globalLogPublisher.removeObserver(history)
            self.addCleanup(globalLogPublisher.addObserver, history)
        port = yield self.serve(_Streaming())

        def client() -> None:
            for _ in range(20):
                with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                    s.starttls(context=test_ca().client_context())
                    s.ehlo("client.test")
                    s.noop()

        yield self.thread(client)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.started), 20)
        ours = {id(layer) for layer in self.started}
        del self.started[:]
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, _tlslayer.TLSLayer) and id(o) in ours]
        self.assertEqual(alive, [])

    @defer.inlineCallbacks
    def test_only_plain_tcp_takes_the_layer(self) -> None:
        """STARTTLS behind the PROXY wrapper keeps Twisted's layer; plain TCP takes ours."""
        for endpoint, expected in (("smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1", 0),
                                   ("tcp:0:interface=127.0.0.1", 1)):
            port = yield self.serve(_Streaming(), endpoint)

            def client(proxy: bool = expected == 0) -> int:
                with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
                    if proxy:
                        raw.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
                    s = smtplib.SMTP()
                    s._host = "localhost"
                    s.sock = raw
                    s.file = None
                    s.getreply()
                    s.ehlo("client.test")
                    s.starttls(context=test_ca().client_context())
                    s.ehlo("client.test")
                    code = s.noop()[0]
                    s.quit()
                    return code

            self.assertEqual((yield self.thread(client)), 250)
            self.assertEqual(len(self.started), expected, endpoint)

    @defer.inlineCallbacks
    def test_failures_reported_as_by_twisted(self) -> Any:
        """
        A failed, a stalled and an abandoned handshake: the "tls" observer
        event, the client's view and the on_close hook are the same on both
        layers.
        """
        def starttls(sock: socket.socket) -> None:
            sock.recv(1000)
            sock.sendall(b"EHLO client.test\r\n")
            time.sleep(0.05)
            sock.recv(1000)
            sock.sendall(b"STARTTLS\r\n")
            sock.recv(1000)

        yield compare_failed_handshakes(
            self, lambda hooks, tls: self.serve(hooks, tls=tls).addCallback(lambda port: (self.smtp_server, port)),
            starttls, b"MAIL FROM:<x@y.test>\r\n")
        self.assertEqual(len(self.started), 0)  # the last round ran on Twisted's layer


# --------------------------------------------------------------------------------------
# The existing loopback STARTTLS tests run on this layer (the default); the
# same tests again on Twisted's layer, which the PROXY wrapper still uses.


class TwistedLayerStartTLSTests(test_tls_dialogue.StartTLSTests):
    """tests/test_tls_dialogue.py's STARTTLS tests with C{ENABLED = False}."""

    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)


class TwistedLayerClientCertificateTests(test_tls_certificates.ClientCertificateTests):
    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)


class TwistedLayerHalfCloseTests(test_halfclose.TLSTests):
    """tests/test_halfclose.py's TLS half-close tests with C{ENABLED = False}."""

    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)
