# -*- test-case-name: tests.test_tlsimplicit -*-
"""
Implicit TLS (C{smtps:}, C{secure=True}) on the lean layer
(L{txsmtpsrv._tlsimplicit}): which connections take it, that what a client
and the hooks see is what Twisted's layer gives (the existing implicit-TLS
tests run again on Twisted's layer here), that failures are reported the
same way, and that the PROXY wrapper and UNIX sockets keep Twisted's layer.
The adversarial edges of the layer itself are pinned by
C{tests/test_tlslayer_*.py}, C{test_review14c.py}, C{test_tls_closenotify.py};
on implicit TLS by C{test_tlsgather.py} (tiny records, FIN after QUIT) and
C{test_halfclose.py} (half-close), which run on both layers.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl
import tempfile
import time
from typing import Any, Callable, Generator, List, Tuple

from cryptography import x509
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial import unittest

from tests import _tls, test_tls_certificates, test_tls_close, test_tls_dialogue
from tests._certs import common_name
from tests._tls import client_context, material, mx_config
from txsmtpsrv import SMTPServer, _tlsimplicit, _tlslayer
from txsmtpsrv._tls import TLSConfig
from txsmtpsrv._testca import test_ca
from txsmtpsrv._sharedports import listen_endpoint

IO_TIMEOUT = 10.0


class _Counting:
    """Counts the connections that start the lean layer, and keeps what each SMTP protocol saw."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.layers: List[Any] = []
        original = _tlslayer.start_tls

        def counting(*args: Any) -> Any:
            layer = original(*args)
            self.layers.append(layer)
            return layer
        case.patch(_tlslayer, "start_tls", counting)


class Secure:
    """Hooks: on_secure's TLS facts, the transport the session ran on."""

    def __init__(self) -> None:
        self.secure: List[Any] = []
        self.messages: List[bytes] = []
        self.closed = 0

    def on_secure(self, session: Any) -> None:
        self.secure.append(session.tls)

    def on_data(self, session: Any, stream: Any) -> Any:
        return stream.content().addCallback(self.messages.append)

    def on_close(self, session: Any) -> None:
        self.closed += 1


def smtp_ssl(port: int, context: ssl.SSLContext, sni: str = "localhost") -> Tuple[Any, ...]:
    """smtplib's SMTP_SSL: greeting, EHLO, a message, QUIT; the certificate's CN and the TLS version."""
    s = smtplib.SMTP_SSL(context=context, timeout=IO_TIMEOUT)
    s._host = sni  # type: ignore[attr-defined]  # the SNI name
    try:
        greeting = s.connect("127.0.0.1", port)
        cn = common_name(x509.load_der_x509_certificate(s.sock.getpeercert(binary_form=True)))
        version = s.sock.version()
        s.ehlo("client.test")
        refused = s.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n")
        code = s.quit()[0]
        return greeting[0], cn, version, refused, code
    finally:
        s.close()


def smtp_over_tls(raw: socket.socket) -> Tuple[Any, ...]:
    """
    smtplib over C{raw}, TLS from its first byte (where SMTP_SSL cannot
    connect: a UNIX socket, a PROXY header first): the greeting's code, a
    message's refusals, QUIT's code.
    """
    s = smtplib.SMTP()
    s.sock = test_ca().client_context().wrap_socket(raw, server_hostname="localhost")
    s.file = None
    code = s.getreply()[0]
    s.ehlo("client.test")
    refused = s.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n")
    return code, refused, s.quit()[0]


#: The handshakes that fail: plaintext where the ClientHello belongs, none at all, the client gone first.
FAILED_HANDSHAKES = ("garbage", "stalled", "abandoned")


def _fail_handshake(kind: str, port: int, before: Callable[[socket.socket], None], garbage: bytes) -> str:
    """A blocking client that fails its handshake as C{kind} says; what it saw (closed itself, reset, eof, data)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        before(sock)
        if kind == "garbage":
            sock.sendall(garbage)
        elif kind == "abandoned":
            return "closed"
        try:
            data = sock.recv(1000)
        except ConnectionResetError:
            return "reset"
        return "eof" if data == b"" else f"data {data[:1]!r}"


@defer.inlineCallbacks
def compare_failed_handshakes(case: unittest.TestCase,
                              serve: Callable[[Any, TLSConfig], "defer.Deferred[Tuple[SMTPServer, int]]"],
                              before: Callable[[socket.socket], None],
                              garbage: bytes) -> Generator["defer.Deferred[Any]", Any, None]:
    """
    Each of L{FAILED_HANDSHAKES} on each layer (C{ENABLED} patched on
    C{case}) against a new server: C{serve(hooks, tls)} listens and gives
    the server and its port; the client does C{before} (STARTTLS, or
    nothing on implicit TLS) and sends C{garbage} as its handshake. The
    "tls" observer event, the client's view and on_close must be the same
    on both layers: one check, so that STARTTLS and C{smtps:} compare alike.
    """
    config = test_ca().server_config()
    outcomes = {}
    for enabled in (True, False):
        case.patch(_tlslayer, "ENABLED", enabled)
        for kind in FAILED_HANDSHAKES:
            events: List[str] = []
            closed: List[str] = []
            hooks = type("H", (), {"on_close": lambda self, s: closed.append(s.id)})()
            server, port = yield serve(hooks, TLSConfig(key=config.key, cert=config.cert, handshake_timeout=0.5))
            server.observe("tls", lambda session, why, _e=events: _e.append(why))
            with capturedLogs():
                client = yield deferToThread(_fail_handshake, kind, port, before, garbage).addTimeout(60, reactor)
                for _ in range(100):
                    if closed:
                        break
                    yield task.deferLater(reactor, 0.02, lambda: None)
            outcomes[(enabled, kind)] = (client, events, len(closed))
    for kind in FAILED_HANDSHAKES:
        case.assertEqual(outcomes[(True, kind)], outcomes[(False, kind)], kind)
    case.assertIn("wrong version number", outcomes[(True, "garbage")][1][0])


class PathTests(unittest.TestCase):
    timeout = 60

    def serve(self, endpoint: str, hooks: Any = None, **options: Any) -> "defer.Deferred[Any]":
        options.setdefault("tls", test_ca().server_config())
        server = self.server = SMTPServer(hooks or Secure(), name="mx.test", disable_reverse_lookup=True, **options)
        self.addCleanup(server.close)
        return server.listen(listen_endpoint(reactor, endpoint, lambda: server.tls))

    def test_which_endpoints(self) -> None:
        """tcp:, tcp6: and adopted: endpoints take our factory; the PROXY wrapper and unix: Twisted's wrapServerTLS."""
        holder = object()
        for description, ours in (("tcp:0", True), ("tcp6:0", True), ("unix:/tmp/x.sock", False),
                                  ("smtpproxy:trusted=127.0.0.0/8:tcp:0", False)):
            endpoint = _tlsimplicit.wrap_server_tls(holder, serverFromString(reactor, description))
            self.assertEqual(isinstance(endpoint, _tlsimplicit.ImplicitTLSEndpoint), ours, description)

    @defer.inlineCallbacks
    def test_smtps_takes_the_layer(self) -> Any:
        """smtps:tcp: a message over SMTP_SSL on our layer: greeting, certificate, on_secure's facts, QUIT."""
        counting = _Counting(self)
        hooks = Secure()
        port = yield self.serve("smtps:tcp:0:interface=127.0.0.1", hooks)
        got = yield deferToThread(smtp_ssl, port.getHost().port, test_ca().client_context())
        self.assertEqual(got[0], 220)
        self.assertEqual(got[3:], ({}, 221))
        self.assertEqual(len(counting.layers), 1)
        [info] = hooks.secure
        self.assertEqual(info.version, got[2])
        self.assertFalse(info.resumed)
        self.assertEqual(hooks.messages, [b"Subject: x\r\n\r\nbody\r\n"])

    @defer.inlineCallbacks
    def test_other_paths_keep_twisteds_layer(self) -> Any:
        """smtps: over smtpproxy:, smtps:unix: and ENABLED = False: Twisted's layer, the same dialogue."""
        counting = _Counting(self)
        directory = tempfile.mkdtemp()  # (a short path: UNIX socket names are limited)
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s")
        seen: List[bool] = []

        for endpoint in ("smtps:smtpproxy:trusted=127.0.0.0/8:timeout=5:tcp:0:interface=127.0.0.1",
                         f"smtps:unix:{path}", "smtps:tcp:0:interface=127.0.0.1"):
            if endpoint.startswith("smtps:tcp"):
                self.patch(_tlslayer, "ENABLED", False)
            hooks = Secure()
            port = yield self.serve(endpoint, hooks)
            protocols: List[Any] = []
            original = self.server.buildProtocol

            def building(addr: Any, _o: Callable[..., Any] = original) -> Any:
                p = _o(addr)
                protocols.append(p)
                return p
            self.server.buildProtocol = building  # type: ignore[method-assign]

            def client(endpoint: str = endpoint, port: Any = port) -> Tuple[Any, ...]:
                if endpoint.startswith("smtps:unix"):
                    raw = socket.socket(socket.AF_UNIX)
                    raw.connect(path)
                else:
                    raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=IO_TIMEOUT)
                    if "smtpproxy" in endpoint:
                        raw.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 465\r\n")
                raw.settimeout(IO_TIMEOUT)
                return smtp_over_tls(raw)

            self.assertEqual((yield deferToThread(client)), (220, {}, 221), endpoint)
            self.assertEqual(len(hooks.secure), 1, endpoint)
            [protocol] = protocols
            seen.append(isinstance(protocol.transport, TLSMemoryBIOProtocol))
        self.assertEqual(seen, [True, True, True])
        self.assertEqual(counting.layers, [])

    @defer.inlineCallbacks
    def test_adopted_unix_socket_falls_back_per_connection(self) -> Any:
        """
        smtps:adopted:FD:UNIX is an endpoint our factory takes (adopted:),
        but its connections are not TCP: each falls back to Twisted's layer
        in the same factory (C{_Start}), and the dialogue is the same.
        """
        counting = _Counting(self)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s")
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(path)
        listening.listen(5)
        listening.setblocking(False)
        hooks = Secure()
        endpoint = f"smtps:adopted:{listening.detach()}:UNIX"  # (the endpoint closes the descriptor it adopts)
        self.assertIsInstance(listen_endpoint(reactor, endpoint, lambda: None), _tlsimplicit.ImplicitTLSEndpoint)
        yield self.serve(endpoint, hooks)
        transports: List[Any] = []
        self.server.observe("connect", lambda session: transports.extend(
            p.transport for p in self.server._connections if p.session is session))

        def client() -> Tuple[Any, ...]:
            raw = socket.socket(socket.AF_UNIX)
            raw.settimeout(IO_TIMEOUT)
            raw.connect(path)
            return smtp_over_tls(raw)

        self.assertEqual((yield deferToThread(client)), (220, {}, 221))
        self.assertEqual(len(hooks.secure), 1)
        self.assertEqual(hooks.messages, [b"Subject: x\r\n\r\nbody\r\n"])
        [transport] = transports
        self.assertIsInstance(transport, TLSMemoryBIOProtocol)
        self.assertEqual(counting.layers, [])

    @defer.inlineCallbacks
    def test_transport_as_on_twisteds_layer(self) -> Any:
        """What the SMTP protocol sees: ISSLTransport, getHandle() the SSL.Connection, the peer and host."""
        counting = _Counting(self)
        seen: List[Any] = []
        server_connections = lambda: list(self.server._connections)  # noqa: E731

        class Looking(Secure):
            def on_secure(self, session: Any) -> None:
                [protocol] = [p for p in server_connections() if p.session is session]
                t = protocol.transport
                seen.append((ISSLTransport.providedBy(t), t.getHandle(), t.getPeer().host, t.getHost().port,
                             t.getPeerCertificate()))
        port = yield self.serve("smtps:tcp:0:interface=127.0.0.1", Looking())
        yield deferToThread(smtp_ssl, port.getHost().port, test_ca().client_context())
        [(ssl_transport, handle, peer, host, certificate)] = seen
        self.assertTrue(ssl_transport)
        self.assertIs(handle, counting.layers[0]._conn)
        self.assertEqual((peer, host), ("127.0.0.1", port.getHost().port))
        self.assertIsNone(certificate)

    @defer.inlineCallbacks
    def test_sni_and_client_certificates(self) -> Any:
        """SNI picks the certificate; a requested client certificate reaches on_secure, verified."""
        counting = _Counting(self)
        hooks = Secure()
        config = mx_config(ca=material().ca.cert_pem, request_client_cert=True)
        port = yield self.serve("smtps:tcp:0:interface=127.0.0.1", hooks, tls=config)
        got = yield deferToThread(smtp_ssl, port.getHost().port, client_context(cert="client"), "mx.test")
        self.assertEqual(got[1], "mx.test")
        [info] = hooks.secure
        self.assertEqual(info.server_name, "mx.test")
        self.assertEqual(common_name(info.peer_certificate), "client.test")
        self.assertTrue(info.peer_certificate_verified)
        self.assertEqual(len(counting.layers), 1)

    @defer.inlineCallbacks
    def test_sessions_resume_as_on_twisteds_layer(self) -> Any:
        """
        A client that keeps its session resumes it on the next connection
        (TLS 1.3 ticket, TLS 1.2 ticket), and on_secure's C{resumed} says so:
        the same on both layers.
        """
        seen = {}
        for enabled in (True, False):
            self.patch(_tlslayer, "ENABLED", enabled)
            hooks = Secure()
            port = yield self.serve("smtps:tcp:0:interface=127.0.0.1", hooks)

            def client(number: int = port.getHost().port) -> List[bool]:
                reused = []
                for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                    context = test_ca().client_context()
                    context.maximum_version = version
                    session = None
                    for _ in range(2):
                        with socket.create_connection(("127.0.0.1", number), timeout=IO_TIMEOUT) as raw:
                            with context.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                                s.recv(1000)  # the greeting (and, before it, TLS 1.3's ticket)
                                s.sendall(b"QUIT\r\n")
                                s.recv(1000)
                                reused.append(s.session_reused)
                                session = s.session
                return reused

            client_side = yield deferToThread(client)
            seen[enabled] = (client_side, [(info.version, info.resumed) for info in hooks.secure])
        expected = ([False, True, False, True],
                    [("TLSv1.3", False), ("TLSv1.3", True), ("TLSv1.2", False), ("TLSv1.2", True)])
        self.assertEqual(seen, {True: expected, False: expected})

    @defer.inlineCallbacks
    def test_failures_reported_as_by_twisted(self) -> Any:
        """
        Plaintext instead of a ClientHello, a stalled and an abandoned
        handshake: the "tls" observer event, the client's view and on_close
        are the same on both layers.
        """
        yield compare_failed_handshakes(
            self, lambda hooks, tls: self.serve("smtps:tcp:0:interface=127.0.0.1", hooks, tls=tls).addCallback(
                lambda port: (self.server, port.getHost().port)),
            lambda sock: None, b"EHLO client.test\r\n")

    @defer.inlineCallbacks
    def test_nothing_kept_after_the_connections(self) -> Any:
        """Twenty smtps: sessions come and go: no layer outlives them (cycles only, collected)."""
        import gc

        from twisted.logger import globalLogBeginner, globalLogPublisher
        history = getattr(globalLogBeginner, "_temporaryObserver", None)
        if history is not None:
            globalLogPublisher.removeObserver(history)
            self.addCleanup(globalLogPublisher.addObserver, history)
        counting = _Counting(self)
        port = yield self.serve("smtps:tcp:0:interface=127.0.0.1")

        def client() -> None:
            for _ in range(20):
                smtp_ssl(port.getHost().port, test_ca().client_context())
        yield deferToThread(client)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(counting.layers), 20)
        ours = {id(layer) for layer in counting.layers}
        del counting.layers[:]
        gc.collect()
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, _tlslayer.TLSLayer) and id(o) in ours], [])


class OverTheLimitTests(unittest.TestCase):
    """
    A client over C{max_clients} on an implicit-TLS listener: its 421 waits
    for the handshake. One that never shakes hands is dropped after the
    handshake timeout (it was kept for as long as it liked, uncounted: a
    way round C{max_clients}); one that does reads the 421. Both layers.
    """

    timeout = 60

    @defer.inlineCallbacks
    def check(self, enabled: bool) -> Any:
        self.patch(_tlslayer, "ENABLED", enabled)
        config = test_ca().server_config()
        server = SMTPServer(None, name="mx.test", disable_reverse_lookup=True, max_clients=1, socket_timeout=30,
                            tls=TLSConfig(key=config.key, cert=config.cert, handshake_timeout=1.0))
        self.addCleanup(server.close)
        port = yield server.listen(listen_endpoint(reactor, "smtps:tcp:0:interface=127.0.0.1", lambda: server.tls))
        number = port.getHost().port

        def clients() -> Tuple[str, float, int]:
            with socket.create_connection(("127.0.0.1", number), timeout=IO_TIMEOUT) as raw:
                inside = test_ca().client_context().wrap_socket(raw, server_hostname="localhost")
                assert inside.recv(100).startswith(b"220")  # the one within the limit, holding its slot
                with socket.create_connection(("127.0.0.1", number), timeout=IO_TIMEOUT) as silent:
                    start = time.monotonic()
                    try:
                        outcome = "eof" if silent.recv(100) == b"" else "data"
                    except ConnectionResetError:
                        outcome = "reset"
                    except socket.timeout:
                        outcome = "still open"
                    waited = time.monotonic() - start
                with socket.create_connection(("127.0.0.1", number), timeout=IO_TIMEOUT) as raw2:
                    late = test_ca().client_context().wrap_socket(raw2, server_hostname="localhost")
                    code = int(late.recv(100)[:3])
                return outcome, waited, code

        outcome, waited, code = yield deferToThread(clients)
        self.assertIn(outcome, ("eof", "reset"))
        self.assertLess(waited, 5.0)  # handshake_timeout is 1 s, socket_timeout 30 s
        self.assertEqual(code, 421)

    def test_lean_layer(self) -> Any:
        return self.check(True)

    def test_twisteds_layer(self) -> Any:
        return self.check(False)


# The existing implicit-TLS tests run on our layer (the default); again on Twisted's layer.


class TwistedLayerImplicitTLSTests(test_tls_dialogue.ImplicitTLSTests):
    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)


class TwistedLayerImplicitTLSCloseTests(test_tls_close.ImplicitTLSCloseTests):
    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)


class TwistedLayerRequiredClientCertificateTests(_tls._TLSTestCase):
    test_required = test_tls_certificates.ClientCertificateTests.test_required

    def setUp(self) -> None:
        self.patch(_tlslayer, "ENABLED", False)
