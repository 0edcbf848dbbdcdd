# -*- test-case-name: tests.test_accepted -*-
"""
What a new connection is called (L{txsmtpsrv._accepted}): its session id,
its local address and Nagle's algorithm off, with the system calls shared
per listening socket where that gives the same answer.

Why it matters: an id that repeats (a forked process, threads) mixes two
sessions in the log; a local address from the cache that is not this
connection's own (a wildcard listener, a transparent one) misleads every
hook that reads C{session.local_address}; a connection without
C{TCP_NODELAY} stalls replies by the client's delayed ACK (40 ms).

First the parts with fakes, then a real L{SMTPServer} over loopback
(127.0.0.0/8, C{::1} where the machine has it).
"""

from __future__ import annotations

import os
import re
import select
import smtplib
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.tcp import Server
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import Hooks, SMTPServer
from txsmtpsrv import _accepted
from txsmtpsrv._accepted import _LISTENERS, _bound_to_one, accepted, session_id

from tests.test_nodelay import PROXIED, greeted, tcp_socket

_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY)
_IP_TRANSPARENT = (socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19))
_IPV6_TRANSPARENT = (socket.IPPROTO_IPV6, getattr(socket, "IPV6_TRANSPARENT", 75))


# -- session ids ------------------------------------------------------------------------------


def test_ids_are_16_lowercase_hex_digits_and_distinct() -> None:
    ids = [session_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)


def test_ids_from_several_threads_are_distinct() -> None:
    """TestClient makes sessions in the caller's thread while ThreadedServer's reactor thread makes its own."""
    per_thread, threads = 5_000, 4
    out: List[List[str]] = [[] for _ in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch as often as the interpreter lets it
    try:
        workers = [threading.Thread(target=lambda o=o: o.extend(session_id() for _ in range(per_thread)))
                   for o in out]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert not any(w.is_alive() for w in workers)
    finally:
        sys.setswitchinterval(interval)
    ids = [i for o in out for i in o]
    assert len(ids) == per_thread * threads
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """A child (C{os.fork}, C{multiprocessing}'s fork) takes ids from a block of its own."""
    _accepted._new_block_after_fork()
    session_id()  # the parent now has a block with ids left in it, which the child inherits
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, " ".join(session_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        parent = [session_id() for _ in range(8)]
        data = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        for _ in range(200):  # 10 s at most
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:  # pragma: no cover
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    child = data.decode().split()
    assert len(child) == 8, data
    assert not set(child) & set(parent), (child, parent)


# -- the listener's share, with fakes ---------------------------------------------------------


class FakeListening:
    """A listening socket as L{accepted} asks it: options set and read, nothing else."""

    def __init__(self, options: Optional[Dict[Tuple[int, int], int]] = None, refuse: bool = False,
                 real: Optional[socket.socket] = None) -> None:
        self.options = dict(options or {})
        self.refuse = refuse
        self.real = real  # where set options really go (the kernel copies them), if anywhere

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.refuse:
            raise OSError(22, "Invalid argument")
        self.options[(level, option)] = value
        if self.real is not None:
            self.real.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self.options.get((level, option), 0)


class FakePort:
    """A C{tcp.Port} as far as L{accepted} looks: its socket, its address, its backlog."""

    def __init__(self, listening: Any, host: Any, backlog: Any = 50) -> None:
        self.socket = listening
        self.host = host
        self.backlog = backlog
        self._realPortNumber = host.port

    def getHost(self) -> Any:
        return self.host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::ffff:0.0.0.0", "0:0:0:0:0:ffff:0:0"])
def test_a_wildcard_listener_is_not_shared(host: str) -> None:
    """C{::} takes IPv4 too (v4-mapped), C{::ffff:0.0.0.0} is IPv4's wildcard on an IPv6 socket."""
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 25)
    assert _bound_to_one(FakePort(FakeListening(), address), FakeListening()) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.1", "::1", "2001:db8::1", "::ffff:127.0.0.1",
                                  "fe80::1%eth0"])
def test_a_listener_bound_to_one_address_is_shared(host: str) -> None:
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 25)
    assert _bound_to_one(FakePort(FakeListening(), address), FakeListening()) == (host, 25)


@pytest.mark.parametrize("option", [_IP_TRANSPARENT, _IPV6_TRANSPARENT], ids=["IP", "IPV6"])
def test_a_transparent_listener_is_not_shared(option: Tuple[int, int]) -> None:
    """Under TPROXY a connection keeps the address it was sent to, whatever the listener is bound to."""
    listening = FakeListening({option: 1})
    assert _bound_to_one(FakePort(listening, IPv4Address("TCP", "127.0.0.1", 25)), listening) is None


class Loopback:
    """Real accepted sockets from a real listening socket that never has TCP_NODELAY itself."""

    def __init__(self) -> None:
        self.listening = socket.socket()
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(16)
        self.sockets: List[socket.socket] = [self.listening]

    def accept(self, port: Any, number: int) -> Tuple[Server, socket.socket]:
        """A Twisted C{tcp.Server} for a new connection, as C{port} would have made it."""
        client = socket.create_connection(self.listening.getsockname(), timeout=10)
        sock, addr = self.listening.accept()
        sock.setblocking(False)
        self.sockets += [client, sock]
        return Server(sock, None, addr, port, number, MemoryReactor()), sock

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.fixture
def loopback() -> Any:
    lo = Loopback()
    yield lo
    lo.close()


@pytest.mark.parametrize("refuse", [False, True], ids=["not-copied", "refused"])
def test_where_connections_do_not_get_it_from_the_listener_each_gets_it_set(loopback: Loopback,
                                                                            refuse: bool) -> None:
    """
    A system that does not copy TCP_NODELAY to accepted sockets (the fake
    listening socket keeps the option to itself), or a listening socket that
    refuses it: every connection, the first and any later one, has it on.
    """
    listening = FakeListening(refuse=refuse)
    port = FakePort(listening, IPv4Address("TCP", *loopback.listening.getsockname()), backlog=1)
    for number in range(6):
        transport, sock = loopback.accept(port, number)
        assert accepted(transport) == sock.getsockname()
        assert sock.getsockopt(*_NODELAY), number
    assert _LISTENERS[listening].nodelay is False


def test_where_connections_get_it_from_the_listener_it_is_set_once(loopback: Loopback) -> None:
    listening = FakeListening(real=loopback.listening)
    port = FakePort(listening, IPv4Address("TCP", *loopback.listening.getsockname()))
    for number in range(4):
        transport, sock = loopback.accept(port, number)
        assert accepted(transport) == sock.getsockname()
        assert sock.getsockopt(*_NODELAY), number
    assert listening.options[_NODELAY] == 1
    assert _LISTENERS[listening].nodelay is True


def test_a_transparent_listener_gives_each_connection_its_own_address(loopback: Loopback) -> None:
    """The listener says 192.0.2.1 (what it is bound to); each connection says where it was sent."""
    listening = FakeListening({_IP_TRANSPARENT: 1}, real=loopback.listening)
    port = FakePort(listening, IPv4Address("TCP", "192.0.2.1", loopback.listening.getsockname()[1]))
    for number in range(3):
        transport, sock = loopback.accept(port, number)
        assert accepted(transport) == sock.getsockname()
    assert _LISTENERS[listening].local is None


def test_reply_writer_decides_by_the_proxys_own_address_whatever_peer_it_is_given(monkeypatch: Any) -> None:
    """connectionMade hands over getPeer(): behind our PROXY wrapper that is the client the header named."""
    from txsmtpsrv import _sendnow
    from txsmtpsrv._proxy import ProxyProtocolWrapper, ProxyWrappingFactory
    from txsmtpsrv._reactor import SMTPEPollReactor
    from tests._memory import FakeSocket
    from tests.test_held_replies import FakeTCP

    monkeypatch.setattr(_sendnow, "eligible", lambda transport: FakeSocket())
    holding = SMTPEPollReactor.__new__(SMTPEPollReactor)
    local, elsewhere = IPv4Address("TCP", "127.0.0.1", 5000), IPv4Address("TCP", "192.0.2.9", 5000)
    wrapper = ProxyProtocolWrapper(ProxyWrappingFactory(None, trusted="0.0.0.0/0"))  # type: ignore[arg-type]
    wrapper.transport = FakeTCP(elsewhere, holding)
    assert type(_sendnow.reply_writer(wrapper, local)) is _sendnow.ReplyWriter
    wrapper.transport = FakeTCP(local, holding)
    assert type(_sendnow.reply_writer(wrapper, elsewhere)) is _sendnow.HeldReplyWriter
    # Not behind the wrapper: the peer given is the transport's own, and is not asked again.
    assert type(_sendnow.reply_writer(FakeTCP(elsewhere, holding), local)) is _sendnow.HeldReplyWriter


# -- a real server over loopback --------------------------------------------------------------


def _bindable(family: int, host: str) -> bool:
    if not socket.has_ipv6 and family == socket.AF_INET6:
        return False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


HAS_IPV6_LOOPBACK = _bindable(socket.AF_INET6, "::1")
HAS_V4_MAPPED = _bindable(socket.AF_INET6, "::ffff:0.0.0.0")


class Seen:
    """One server-side connection: what its Session says and what its socket says."""

    def __init__(self, protocol: Any) -> None:
        sock = tcp_socket(protocol.transport)
        self.session = (protocol.session.local_address, protocol.session.local_port)
        self.sockname = tuple(sock.getsockname()[:2])
        self.peer_port = sock.getpeername()[1]
        self.nodelay = sock.getsockopt(*_NODELAY)


class LoopbackTests(unittest.TestCase):
    timeout = 60

    def serve(self, endpoint: Any = "tcp:0:interface=127.0.0.1") -> "defer.Deferred[Any]":
        self.server = SMTPServer(Hooks(), name="mx.test", disable_reverse_lookup=True, close_timeout=2)
        self.addCleanup(self.server.close)
        return self.server.listen(endpoint)

    @defer.inlineCallbacks
    def connect(self, *targets: Tuple[str, int], header: bytes = b"") -> Any:
        """
        Connect to each target in turn (each after the last one's greeting),
        keep them all open, and return what the server saw of each, in order.
        """
        clients: List[socket.socket] = []
        self.addCleanup(lambda: [c.close() for c in clients])
        for target in targets:
            def open_one(target: Tuple[str, int] = target) -> socket.socket:
                s = socket.create_connection(target, timeout=10)
                clients.append(s)
                s.sendall(header)
                return greeted(s)
            yield deferToThread(open_one).addTimeout(30, reactor)
        seen = {s.peer_port: s for s in map(Seen, list(self.server._connections))}
        return [seen[c.getsockname()[1]] for c in clients]  # (a KeyError: the server lost one)

    def assert_own_addresses(self, seen: List[Seen]) -> None:
        for s in seen:
            self.assertEqual(s.session, s.sockname)
            self.assertTrue(s.nodelay)

    @defer.inlineCallbacks
    def test_one_address(self) -> None:
        port = yield self.serve()
        listening = port.socket
        seen = yield self.connect(*[("127.0.0.1", port.getHost().port)] * 4)
        self.assert_own_addresses(seen)
        self.assertEqual(_LISTENERS[listening].local, ("127.0.0.1", port.getHost().port))  # shared
        self.assertTrue(listening.getsockopt(*_NODELAY))

    @defer.inlineCallbacks
    def test_wildcard(self) -> None:
        port = yield self.serve("tcp:0:interface=0.0.0.0")
        number = port.getHost().port
        seen = yield self.connect(("127.0.0.1", number), ("127.0.0.2", number), ("127.0.0.3", number))
        self.assert_own_addresses(seen)
        self.assertEqual([s.session[0] for s in seen], ["127.0.0.1", "127.0.0.2", "127.0.0.3"])

    @defer.inlineCallbacks
    def test_v4_mapped_wildcard(self) -> None:
        """An IPv6 socket bound to C{::ffff:0.0.0.0} takes every IPv4 address, as 0.0.0.0 does."""
        if not HAS_V4_MAPPED:
            raise unittest.SkipTest("no IPv6 socket may bind ::ffff:0.0.0.0 here")
        port = yield self.serve(r"tcp6:0:interface=\:\:ffff\:0.0.0.0")
        number = port.getHost().port
        seen = yield self.connect(("127.0.0.1", number), ("127.0.0.2", number))
        self.assert_own_addresses(seen)
        self.assertEqual([s.session[0] for s in seen], ["::ffff:127.0.0.1", "::ffff:127.0.0.2"])

    @defer.inlineCallbacks
    def test_ipv6_loopback(self) -> None:
        if not HAS_IPV6_LOOPBACK:
            raise unittest.SkipTest("no IPv6 loopback here")
        port = yield self.serve(r"tcp6:0:interface=\:\:1")
        seen = yield self.connect(*[("::1", port.getHost().port)] * 3)
        self.assert_own_addresses(seen)
        self.assertEqual([s.session for s in seen], [("::1", port.getHost().port)] * 3)

    @defer.inlineCallbacks
    def test_dual_stack_wildcard(self) -> None:
        """C{::} takes IPv4 clients as v4-mapped addresses: each its own."""
        if not (HAS_IPV6_LOOPBACK and HAS_V4_MAPPED):
            raise unittest.SkipTest("no dual-stack IPv6 loopback here")
        port = yield self.serve(r"tcp6:0:interface=\:\:")
        number = port.getHost().port
        seen = yield self.connect(("::1", number), ("127.0.0.2", number), ("::1", number))
        self.assert_own_addresses(seen)
        self.assertEqual([s.session[0] for s in seen], ["::1", "::ffff:127.0.0.2", "::1"])

    @defer.inlineCallbacks
    def test_listening_again_on_port_0(self) -> None:
        """C{stopListening()}, C{startListening()}: a new socket on a new port, and its own entry."""
        port = yield self.serve()
        first = port.getHost().port
        seen = yield self.connect(*[("127.0.0.1", first)] * 2)
        self.assert_own_addresses(seen)
        self.assertEqual([s.session[1] for s in seen], [first] * 2)
        yield port.stopListening()
        port.startListening()
        self.addCleanup(port.stopListening)
        second = port.getHost().port
        self.assertNotEqual(second, first)
        seen = yield self.connect(*[("127.0.0.1", second)] * 2)
        self.assert_own_addresses(seen)
        self.assertEqual([s.session[1] for s in seen], [second] * 2)

    @defer.inlineCallbacks
    def test_behind_the_proxy_wrapper(self) -> None:
        """The local address is the one the PROXY header names (the client's destination at the proxy)."""
        port = yield self.serve(PROXIED)
        number = port.getHost().port
        seen = yield self.connect(("127.0.0.1", number), header=b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
        seen += yield self.connect(("127.0.0.1", number), header=b"PROXY TCP4 192.0.2.8 198.51.100.3 40001 587\r\n")
        self.assertEqual([s.session for s in seen], [("192.0.2.1", 25), ("198.51.100.3", 587)])
        self.assertTrue(all(s.nodelay for s in seen))

    @defer.inlineCallbacks
    def test_connections_queued_before_the_listener_had_it(self) -> None:
        """
        Connections the kernel accepted before the listening socket had
        TCP_NODELAY (a backlog at start) do not have it: they get it set,
        and do not stop later connections from sharing the listener's.
        """
        raw = socket.socket()
        self.addCleanup(raw.close)
        raw.bind(("127.0.0.1", 0))
        raw.listen(16)
        raw.setblocking(False)
        target = raw.getsockname()
        early = [socket.create_connection(target, timeout=10) for _ in range(3)]  # queued, not accepted yet
        calls: List[Any] = []
        real_no_delay = _accepted.no_delay

        def counting(transport: Any) -> None:
            calls.append(transport)
            real_no_delay(transport)

        self.patch(_accepted, "no_delay", counting)
        # (the endpoint closes the descriptor it adopts: it gets a copy of raw's)
        port = yield self.serve(AdoptedStreamServerEndpoint(reactor, os.dup(raw.fileno()), socket.AF_INET))
        self.addCleanup(lambda: [c.close() for c in early])  # (before the server's close, which waits for them)
        for _ in range(200):  # the three queued connections are accepted at the next pass
            if len(self.server._connections) == 3:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        seen = yield self.connect(target, target)  # after: these two have it from the listener
        self.assertEqual(len(self.server._connections), 5)
        for p in self.server._connections:
            self.assertTrue(tcp_socket(p.transport).getsockopt(*_NODELAY))
        self.assertIs(_LISTENERS[port.socket].nodelay, True)
        last = [p for p in self.server._connections if tcp_socket(p.transport).getpeername()[1] == seen[-1].peer_port]
        self.assertNotIn(last[0].transport, calls)

    @defer.inlineCallbacks
    def test_smtplib(self) -> None:
        """A whole dialogue over the shared path, as a client library runs it."""
        port = yield self.serve()
        number = port.getHost().port

        def talk() -> int:
            with smtplib.SMTP("127.0.0.1", number, timeout=10) as s:
                return s.ehlo("client.test")[0]

        for _ in range(3):
            code = yield deferToThread(talk).addTimeout(30, reactor)
            self.assertEqual(code, 250)
