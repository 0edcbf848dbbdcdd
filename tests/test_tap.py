# -*- test-case-name: tests.test_tap -*-
"""
Tests for L{txsmtpsrv._tap}: the C{twistd smtpsrv} options and service.

In memory: options are parsed directly, services run on a
C{MemoryReactorClock}, workers on a fake process reactor. The real thing
(twistd in a subprocess) is in C{test_twistd.py}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, Dict, List

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceMaker
from twisted.cred.credentials import UsernamePassword
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, eventAsJSON, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure

from txsmtpsrv import Hooks, SMTPServer
from txsmtpsrv._delivery import MaildirDelivery, MboxDelivery
from txsmtpsrv._tap import (
    DEFAULT_LISTEN,
    LayeredHooks,
    Options,
    SMTPService,
    _endpoint_arguments,
    _ParentWatch,
    _shareable_address,
    _SharedPort,
    _WorkerPool,
    _WorkerProtocol,
    _worker_options,
    makeService,
)
from txsmtpsrv.testing import FakeResolver, TestClient

from tests._certs import make_ca, write_pem


@pytest.fixture(autouse=True)
def _scratch_directory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --maildir, parsing makes ./Maildir: in the test's directory, never in the checkout."""
    monkeypatch.chdir(tmp_path)


def parse(*argv: str) -> Options:
    """Parse a C{twistd smtpsrv} command line."""
    options = Options()
    options.parseOptions(list(argv))
    return options


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must have fired; failures are raised."""
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


# ---------------------------------------------------------------------------
# Options


def test_defaults(tmp_path, monkeypatch):
    """No options: one loopback listener on 2525, ./Maildir (absolute), one process, 1000 clients."""
    monkeypatch.chdir(tmp_path)
    options = parse()
    assert options["listen"] == [DEFAULT_LISTEN] == ["tcp:2525:interface=127.0.0.1"]
    assert options["maildir"] == str(tmp_path / "Maildir")
    assert options["mbox"] is None
    assert options["workers"] == 1
    assert options["max-clients"] == 1000
    assert not options["lmtp"]
    assert options.credentialCheckers() == []


def test_listen_is_repeatable():
    """--listen and -l add endpoints in order and replace the default."""
    options = parse("-l", "tcp:25", "--listen", "unix:/tmp/x.sock", "--listen=tcp6:25")
    assert options["listen"] == ["tcp:25", "unix:/tmp/x.sock", "tcp6:25"]


def test_values_are_converted(tmp_path, monkeypatch):
    """Numbers become ints/floats and paths absolute."""
    monkeypatch.chdir(tmp_path)
    leaf = make_ca().issue("mx.test")
    write_pem(str(tmp_path), "k.pem", leaf.key_pem)
    write_pem(str(tmp_path), "c.pem", leaf.cert_pem)
    options = parse("--size", "1000", "--max-clients", "5", "--socket-timeout", "1.5",
                    "--close-timeout", "2", "--workers", "3", "--mbox", "box",
                    "--tls-key", "k.pem", "--tls-cert", "c.pem")
    assert (options["size"], options["max-clients"], options["workers"]) == (1000, 5, 3)
    assert (options["socket-timeout"], options["close-timeout"]) == (1.5, 2.0)
    assert options["mbox"] == str(tmp_path / "box")
    assert options["maildir"] is None
    assert options["tls-key"] == str(tmp_path / "k.pem")
    assert options["tls-cert"] == str(tmp_path / "c.pem")


@pytest.mark.parametrize("argv", [
    ["--workers", "0"],
    ["--size", "-1"],
    ["--max-clients", "0"],
    ["--socket-timeout", "0"],
    ["--close-timeout", "x"],
    ["--maildir", "a", "--mbox", "b"],
    ["--workers", "2", "-l", "unix:/tmp/x.sock:mode=9x"],
    ["--workers", "2", "-l", "tcp:notaport"],
    ["--workers", "2", "--adopt", "3:INET"],
    ["--adopt", "x:INET"],
    ["--adopt", "3:APPLETALK"],
    ["--hooks", "no_such_module_txsmtpsrv:Hooks"],
    ["--auth", "no-such-checker:x"],
    ["--xclient-trusted", "10.0.0.0/33"],
    ["--xclient-trusted", "127.0.0.1,not-a-network"],
    ["--xclient-trusted", ","],
])
def test_bad_command_lines(argv):
    """Invalid values are usage errors, reported before anything starts."""
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_help_documents_every_option():
    """--help lists every option, including those the task names, each with some text."""
    options = Options()
    text = str(options)
    names = {name.rstrip("=") for name in options.longOpt}
    required = {"listen", "maildir", "mbox", "hooks", "name", "banner", "size", "max-clients",
                "socket-timeout", "close-timeout", "lmtp", "tls-key", "tls-cert", "workers", "auth",
                "help-auth", "adopt", "worker"}
    assert required <= names
    for name in names:
        assert f"--{name}" in text, name
        assert options.docs.get(name), f"--{name} has no help text"
    assert "-l, --listen=" in text
    assert "tcp:2525:interface=127.0.0.1" in text
    assert "./Maildir" in text


def test_plugin_is_found():
    """twistd finds the smtpsrv plugin and it points at this module."""
    import twisted.plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    maker = makers["smtpsrv"]
    assert maker.options is Options
    assert maker.makeService is makeService
    assert maker.description == "An SMTP/LMTP mail receiver."


def test_endpoint_argument_splitting():
    """Endpoint strings split like Twisted's: colons, key=value and backslash escapes."""
    assert _endpoint_arguments("tcp:25:interface=\\:\\:1") == (["tcp", "25"], {"interface": "::1"})
    assert _endpoint_arguments("tcp:25:127.0.0.1:100") == (["tcp", "25", "127.0.0.1", "100"], {})


@pytest.mark.parametrize("description, expected", [
    ("tcp:25", (socket.AF_INET, "0.0.0.0", 25, 50)),
    ("tcp:25:interface=127.0.0.1:backlog=7", (socket.AF_INET, "127.0.0.1", 25, 7)),
    ("tcp:25:127.0.0.1:9", (socket.AF_INET, "127.0.0.1", 25, 9)),
    ("tcp:0:interface=\\:\\:1", (socket.AF_INET6, "::1", 0, 50)),
    ("tcp6:25", (socket.AF_INET6, "::", 25, 50)),
    ("tcp6:25:9:\\:\\:1", (socket.AF_INET6, "::1", 25, 9)),
])
def test_shareable_addresses(description, expected):
    """tcp: and tcp6: strings give the address --workers binds (tcp6 takes backlog before interface)."""
    assert _shareable_address(description) == expected


# ---------------------------------------------------------------------------
# Hooks


def write_module(directory, name: str, source: str) -> None:
    """Write a Python module the test then imports by name."""
    (directory / f"{name}.py").write_text(source)


POLICY = '''
from txsmtpsrv import Hooks, SMTPError

class Policy(Hooks):
    instances = 0

    def __init__(self):
        Policy.instances += 1

    def on_rcpt_to(self, session, address):
        if address.local_part == "blocked":
            raise SMTPError(550, "No such user", "5.1.1")

policy = Policy

def on_helo(session, hostname):
    pass
'''


@pytest.fixture
def policy_module(tmp_path, monkeypatch):
    """A hooks module importable as 'txsmtpsrv_test_policy'."""
    name = "txsmtpsrv_test_policy"
    write_module(tmp_path, name, POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("suffix", [":Policy", ".Policy", ":policy"])
def test_hooks_class_is_loaded_and_instantiated(policy_module, suffix, tmp_path):
    """A class named with ':' or '.' is instantiated by makeService; its hooks come first."""
    options = parse("--hooks", policy_module + suffix, "--maildir", str(tmp_path / "md"))
    cls = sys.modules[policy_module].Policy
    assert options.hooksObject is cls
    service = makeService(options, reactor=MemoryReactorClock())
    hooks = service.server.hooks
    assert isinstance(hooks, LayeredHooks)
    assert isinstance(hooks.layers[0], cls) and cls.instances == 1
    resolved = service.server._hooks
    assert resolved.on_rcpt_to.__func__ is cls.on_rcpt_to
    assert isinstance(resolved.on_data.__self__, MaildirDelivery)
    assert resolved.on_mail_from is None  # inherited do-nothing hooks don't count


def test_hooks_module_object(policy_module):
    """A module works as a hooks object: its on_* functions are the hooks."""
    options = parse("--hooks", policy_module)
    service = makeService(options, reactor=MemoryReactorClock())
    assert service.server._hooks.on_helo is sys.modules[policy_module].on_helo


def test_user_on_data_replaces_delivery(tmp_path):
    """A hooks object with on_data takes over delivery; one without leaves it to the Maildir."""
    class Mine:
        def on_data(self, session, stream):
            pass

    delivery = MaildirDelivery(str(tmp_path))
    assert LayeredHooks(Mine(), delivery).on_data.__self__.__class__ is Mine
    assert LayeredHooks(Hooks(), delivery).on_data.__self__ is delivery
    with pytest.raises(AttributeError):
        LayeredHooks(Hooks(), delivery).on_connect  # noqa: B018
    with pytest.raises(AttributeError):
        LayeredHooks(delivery).layers_  # noqa: B018


def test_on_close_goes_to_every_layer():
    """Each layer's on_close runs, and one failing doesn't stop the others."""
    calls = []

    class A:
        def on_close(self, session):
            calls.append("a")
            raise RuntimeError("boom")

    class B:
        def on_close(self, session):
            calls.append("b")

    with capturedLogs() as events:
        result(LayeredHooks(A(), B()).on_close("session"))
    assert calls == ["a", "b"]
    assert any("on_close hook failed" in formatEvent(e) for e in events)


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


def test_stop_service_waits_for_transaction_in_progress(tmp_path, monkeypatch):
    """Stopping lets an accepted transaction finish (its 250 goes out), then closes with 421."""
    from txsmtpsrv import _diskio

    # A memory reactor runs no delivery threads' answers: do the file work inline.
    monkeypatch.setattr(_diskio, "DEFAULT_THREADS", 0)
    reactor = MemoryReactorClock()
    service = makeService(parse("--maildir", str(tmp_path), "--name", "mx.test"), reactor=reactor)
    service.server.resolver = FakeResolver()  # no real DNS in tests
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
    client.send(b"second half\r\n.\r\n")
    replies = client.replies()
    assert [r.code for r in replies] == [250, 421]
    client.disconnect()
    assert result(stopped) is None
    [name] = os.listdir(tmp_path / "new")
    assert (tmp_path / "new" / name).read_bytes().endswith(b"first half\nsecond half\n")


# ---------------------------------------------------------------------------
# Workers


def test_shared_port_binds_one_port_per_process():
    """--workers binds N sockets on one port (SO_REUSEPORT), so the kernel spreads connections."""
    port = _SharedPort.bind("tcp:0:interface=127.0.0.1", 3)
    try:
        assert len(port.sockets) == 3
        numbers = {s.getsockname() for s in port.sockets}
        assert len(numbers) == 1 and next(iter(numbers))[1] != 0
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in port.sockets)
        assert port.socket_for(0) is port.sockets[0] and port.socket_for(2) is port.sockets[2]
    finally:
        port.close()
    assert all(s.fileno() == -1 for s in port.sockets)


def test_shared_port_bind_error_is_usage_error():
    """A port already taken by an ordinary listener is reported as a usage error."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(usage.UsageError):
            _SharedPort.bind(f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1", 2)
    finally:
        taken.close()


def test_make_service_with_workers(tmp_path):
    """The parent adopts its own socket and gets a pool that starts N-1 workers with the same options."""
    reactor = MemoryReactorClock()
    users = tmp_path / "users.txt"
    users.write_text("alice:secret\n")
    options = parse("--workers", "3", "-l", "tcp:0:interface=127.0.0.1", "--maildir", str(tmp_path),
                    "--name", "mx.test", "--lmtp", "--auth", f"file:{users}", "--size", "10",
                    "--no-reverse-lookup")
    service = makeService(options, reactor=reactor)
    [pool] = [s for s in service if isinstance(s, _WorkerPool)]
    try:
        assert pool.count == 2
        argv = pool.worker_argv()
        assert argv[:3] == [sys.executable, "-m", "twisted"]
        assert "--log-format=json" in argv
        i = argv.index("smtpsrv")
        assert argv[i + 1 : i + 3] == ["--worker", "--adopt=3:INET"]
        assert f"--maildir={tmp_path}" in argv and "--name=mx.test" in argv and "--size=10" in argv
        assert f"--auth=file:{users}" in argv and "--lmtp" in argv and "--no-reverse-lookup" in argv
        assert not any(a.startswith("--workers") or a.startswith("--listen") for a in argv)
        worker_options = Options()
        worker_options.parseOptions(argv[i + 1 :])  # what the worker will parse is valid
        assert worker_options["adopt"] == [(3, socket.AF_INET)]
        service.privilegedStartService()
        [(fd, family, factory)] = [(p[0], p[1], p[2]) for p in reactor.adoptedPorts]
        assert family == socket.AF_INET and factory is service.server
    finally:
        for port in pool.ports:
            port.close()


class FakeProcessTransport:
    """What spawnProcess returns, recording signals."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: List[str] = []
        self.gone = False

    def signalProcess(self, signal: str) -> None:
        if self.gone:
            raise ierror.ProcessExitedAlready()
        self.signals.append(signal)


class ProcessReactor(Clock):
    """A clock that records spawnProcess calls and runs callWhenRunning at once."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: List[Dict[str, Any]] = []
        self.stopped = False

    def callWhenRunning(self, f, *args):
        f(*args)

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        transport = FakeProcessTransport(1000 + len(self.spawned))
        self.spawned.append(dict(protocol=protocol, executable=executable, args=args, env=env,
                                 childFDs=childFDs, transport=transport))
        protocol.makeConnection(transport)
        return transport


def end(process: Dict[str, Any], code: int = 0) -> None:
    """The fake worker process exits."""
    process["transport"].gone = True
    process["protocol"].processEnded(Failure(ierror.ProcessDone(code) if code == 0 else ierror.ProcessTerminated(code)))


@pytest.fixture
def pool():
    """A worker pool of two on a fake reactor, with one real shared port."""
    reactor = ProcessReactor()
    port = _SharedPort.bind("tcp:0:interface=127.0.0.1", 3)
    pool = _WorkerPool(reactor, [port], 2, [sys.executable, "-m", "twisted", "smtpsrv", "--name=x"],
                       {"X": "1"}, stop_timeout=5)
    yield reactor, pool
    port.close()


def test_pool_spawns_workers_with_their_sockets(pool):
    """Each worker gets fd 3 = its own socket, a pipe on stdin and pipes for its output."""
    reactor, pool = pool
    pool.startService()
    assert len(reactor.spawned) == 2
    for index, process in enumerate(reactor.spawned, 1):
        assert process["childFDs"] == {0: "w", 1: "r", 2: "r", 3: pool.ports[0].sockets[index].fileno()}
        assert process["args"] == [sys.executable, "-m", "twisted", "smtpsrv", "--worker", "--adopt=3:INET",
                                   "--name=x"]
        assert process["env"] == {"X": "1"}


def test_pool_restarts_a_dead_worker(pool):
    """A worker that exits while running is started again after restart_delay, on the same socket."""
    reactor, pool = pool
    pool.startService()
    first = reactor.spawned[0]
    with capturedLogs() as events:
        end(first, 1)
    assert any(e["log_level"] == LogLevel.error for e in events)
    assert len(reactor.spawned) == 2
    reactor.advance(pool.restart_delay)
    assert len(reactor.spawned) == 3
    assert reactor.spawned[2]["childFDs"] == first["childFDs"]


def test_pool_backs_off_and_serves_a_dead_workers_socket(pool):
    """A worker that keeps dying is restarted ever more slowly; meanwhile the parent serves its socket."""
    reactor, pool = pool
    adopted: List[Any] = []

    class Listening:
        def __init__(self, fd):
            self.fd, self.stopped = fd, False

        def stopListening(self):
            self.stopped = True

    def adopt(fd, family, factory):
        adopted.append(Listening(fd))
        return adopted[-1]

    reactor.adoptStreamPort = adopt
    pool._factory = object()
    pool.startService()
    delays = []
    with capturedLogs():
        for _ in range(5):
            worker = reactor.spawned[-2] if len(reactor.spawned) == 2 else reactor.spawned[-1]
            end(worker, 1)
            assert adopted[-1].fd == worker["childFDs"][3] and not adopted[-1].stopped
            [call] = [c for c in reactor.getDelayedCalls() if c.active()]
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(delays[-1])
            assert adopted[-1].stopped  # the worker is back: the parent lets go
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    # A worker that ran a good while before dying starts the back-off again.
    reactor.advance(pool.healthy_after)
    with capturedLogs():
        end(reactor.spawned[-1], 1)
    [call] = [c for c in reactor.getDelayedCalls() if c.active()]
    assert call.getTime() - reactor.seconds() == pool.restart_delay


def test_pool_stop_terminates_and_waits(pool):
    """Stopping sends SIGTERM, closes the parent's sockets and fires once every worker ended."""
    reactor, pool = pool
    pool.startService()
    a, b = reactor.spawned
    end(a, 1)  # one died just before: its restart must not happen
    d = pool.stopService()
    assert all(s.fileno() == -1 for s in pool.ports[0].sockets)
    assert b["transport"].signals == ["TERM"]
    assert not d.called
    end(b)
    assert result(d) is None
    reactor.advance(60)
    assert len(reactor.spawned) == 2 and reactor.getDelayedCalls() == []


def test_pool_kills_workers_that_do_not_stop(pool):
    """A worker still running stop_timeout seconds after SIGTERM gets SIGKILL."""
    reactor, pool = pool
    pool.startService()
    d = pool.stopService()
    reactor.advance(pool.stop_timeout)
    assert [p["transport"].signals for p in reactor.spawned] == [["TERM", "KILL"], ["TERM", "KILL"]]
    for process in reactor.spawned:
        end(process, 9)
    result(d)


def test_worker_logs_are_relayed():
    """JSON events from a worker are re-emitted with its pid; other output becomes warnings."""
    protocol = _WorkerProtocol(None, 1)  # type: ignore[arg-type]
    protocol.makeConnection(FakeProcessTransport(4242))
    event = {"log_format": "stored {n}", "n": 3, "log_level": LogLevel.info, "log_namespace": "x.y",
             "log_time": 1.0}
    line = ("\x1e" + eventAsJSON(event) + "\n").encode()
    with capturedLogs() as events:
        protocol.childDataReceived(1, line[:10])
        assert events == []
        protocol.childDataReceived(1, line[10:] + b"not json\n")
        protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
    relayed, plain, err = events
    assert relayed["worker_pid"] == 4242 and formatEvent(relayed) == "stored 3"
    assert relayed["log_system"] == "x.y#info worker 4242"
    assert formatEvent(plain) == "worker 4242: not json"
    assert formatEvent(err) == "worker 4242: Traceback (most recent call last):"
    assert json.loads(eventAsJSON(relayed))["worker_pid"] == 4242


class StoppableReactor:
    """Records addReader/removeReader and stop()."""

    def __init__(self) -> None:
        self.readers: List[Any] = []
        self.stops = 0

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        if reader in self.readers:
            self.readers.remove(reader)

    def stop(self):
        self.stops += 1


def test_parent_watch_stops_worker_when_pipe_closes():
    """A worker stops its reactor when its parent's pipe reaches end of file, not before."""
    r, w = os.pipe()
    reactor = StoppableReactor()
    watch = _ParentWatch(reactor, r)
    try:
        watch.startService()
        assert reactor.readers == [watch] and watch.fileno() == r
        assert watch.doRead() is None  # nothing to read yet
        os.write(w, b"x")
        assert watch.doRead() is None
        os.close(w)
        assert watch.doRead() is CONNECTION_DONE
        reactor.removeReader(watch)
        watch.connectionLost(Failure(CONNECTION_DONE))
        assert reactor.stops == 1
        watch.stopService()
    finally:
        os.close(r)
