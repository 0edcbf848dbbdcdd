# -*- test-case-name: tests.test_reactor -*-
"""
The C{smtpsrv-epoll} reactor (L{txsmtpsrv._reactor}).

Its C{doPoll} must behave exactly as Twisted's C{EPollReactor.doPoll} with
C{log.callWithLogger}: every scenario below runs on both reactors with the
same scripted epoll events and the same fake selectables, and what each
observes is compared — the legacy log context seen inside C{doRead}/C{doWrite},
every log event, every C{connectionLost} reason, what propagates. Then the
real thing: the loopback suites (smtplib, Twisted's ESMTP client, swaks, the
direct reply writer, STARTTLS) run under C{trial --reactor=smtpsrv-epoll},
and C{twistd smtpsrv} (one process and C{--workers}) takes mail from smtplib
on it, by default and by name, and on Twisted's epoll reactor when asked.
When the daemon installs it by default (L{_reactor.install_unless_chosen}),
and when it falls back to Twisted's reactor with a warning.
"""

from __future__ import annotations

import errno
import os
import re
import select
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

if not hasattr(select, "epoll"):  # smtpsrv-epoll, and Twisted's epollreactor imported below, need it
    pytest.skip("no epoll on this system", allow_module_level=True)

from twisted.application.reactors import getReactorTypes  # noqa: E402
from twisted.internet import error, posixbase, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import globalLogPublisher
from twisted.python import context, failure, log

from tests.test_twistd import CLEAN_EXITS, TIMEOUT, maildir_messages, twistd  # noqa: F401  (twistd: a fixture)
from txsmtpsrv import _reactor
from txsmtpsrv._reactor import SMTPEPollReactor
from txsmtpsrv._workers import twist_command

ROOT = Path(__file__).resolve().parent.parent


class FakePoller:
    """Hands out scripted C{poll()} results; registrations are recorded and ignored."""

    def __init__(self, results: List[Any]) -> None:
        self.results = results
        self.calls: List[Tuple[Any, Any]] = []
        self.changes: List[Tuple[str, int]] = []

    def poll(self, timeout: Any, maxevents: Any) -> Any:
        self.calls.append((timeout, maxevents))
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    def register(self, fd: int, events: int) -> None:
        self.changes.append(("register", fd))

    def modify(self, fd: int, events: int) -> None:
        self.changes.append(("modify", fd))

    def unregister(self, fd: int) -> None:
        self.changes.append(("unregister", fd))

    def close(self) -> None:
        pass


class Selectable:
    """A file descriptor stand-in whose methods note what they saw and do what the scenario says."""

    def __init__(self, fd: int, seen: List[Any], prefix: Any = "Sel", on_read: Any = None, on_write: Any = None,
                 on_lost: Any = None, fileno: Optional[int] = None) -> None:
        self.fd = fd
        self.seen = seen
        self.prefix = prefix
        self.on_read = on_read
        self.on_write = on_write
        self.on_lost = on_lost
        self._fileno = fd if fileno is None else fileno

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        if isinstance(self.prefix, BaseException):
            raise self.prefix
        return self.prefix

    def _event(self, what: str, action: Any) -> Any:
        self.seen.append((what, self.fd, dict(context.get(log.ILogContext))))
        log.msg(f"{what} on {self.fd}")
        if isinstance(action, BaseException):
            raise action
        return action(self) if callable(action) else action

    def doRead(self) -> Any:
        return self._event("read", self.on_read)

    def doWrite(self) -> Any:
        return self._event("write", self.on_write)

    def connectionLost(self, reason: failure.Failure) -> None:
        self.seen.append(("lost", self.fd, reason.type.__name__))
        if isinstance(self.on_lost, BaseException):
            raise self.on_lost


IN, OUT, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP


def run(reactor_type: type, events: List[Any], selectables: Callable[[List[Any]], List[Tuple[Selectable, str]]],
        timeout: Any = 0.5) -> Dict[str, Any]:
    """One doPoll on a fresh reactor of C{reactor_type}; what it did, for comparison."""
    reactor = reactor_type()
    reactor._poller.close()
    seen: List[Any] = []
    logged: List[Any] = []

    def observer(event: Dict[str, Any]) -> None:
        fault = event.get("log_failure") or event.get("failure")
        logged.append((event.get("log_system"), event.get("isError"), tuple(event.get("message", ())),
                       fault.type.__name__ if fault is not None else None))

    poller = reactor._poller = FakePoller(list(events))
    reactor._selectables.clear()
    reactor._reads.clear()
    reactor._writes.clear()
    for sel, mode in selectables(seen):
        reactor._selectables[sel.fd] = sel
        (reactor._reads if mode == "r" else reactor._writes).add(sel.fd)
    globalLogPublisher.addObserver(observer)
    raised = None
    try:
        reactor.doPoll(timeout)
    except BaseException as e:  # KeyboardInterrupt included: the scenario says what must propagate
        raised = type(e).__name__
    finally:
        globalLogPublisher.removeObserver(observer)
        try:
            reactor.waker.connectionLost(None)
        except Exception:
            pass
    return {"seen": seen, "logged": logged, "raised": raised, "polls": poller.calls,
            "unregistered": [c for c in poller.changes if c[0] == "unregister"],
            "left": sorted(reactor._selectables)}


SCENARIOS: Dict[str, Tuple[List[Any], Callable[[List[Any]], List[Tuple[Selectable, str]]]]] = {
    "read": ([[(5, IN)]], lambda s: [(Selectable(5, s), "r")]),
    "write": ([[(6, OUT)]], lambda s: [(Selectable(6, s), "w")]),
    "read and write": ([[(5, IN | OUT)]], lambda s: [(Selectable(5, s), "r")]),
    "several": ([[(5, IN), (6, OUT), (7, IN)]],
                lambda s: [(Selectable(5, s, "A"), "r"), (Selectable(6, s, "B"), "w"), (Selectable(7, s, "C"), "r")]),
    "read raises": ([[(5, IN), (6, IN)]],
                    lambda s: [(Selectable(5, s, on_read=ValueError("boom")), "r"), (Selectable(6, s), "r")]),
    "read says done": ([[(5, IN)]], lambda s: [(Selectable(5, s, on_read=CONNECTION_DONE), "r")]),
    "read says done before write": ([[(5, IN | OUT)]],
                                    lambda s: [(Selectable(5, s, on_read=CONNECTION_DONE), "r")]),
    "write raises": ([[(6, OUT)]], lambda s: [(Selectable(6, s, on_write=OSError(errno.EPIPE, "pipe")), "w")]),
    "hangup while reading": ([[(5, HUP)]], lambda s: [(Selectable(5, s), "r")]),
    "hangup while writing": ([[(6, HUP)]], lambda s: [(Selectable(6, s), "w")]),
    "hangup with data left": ([[(5, HUP | IN)]], lambda s: [(Selectable(5, s), "r")]),
    "descriptor gone": ([[(5, IN)]], lambda s: [(Selectable(5, s, fileno=-1), "r")]),
    "buggy logPrefix": ([[(5, IN)]], lambda s: [(Selectable(5, s, prefix=RuntimeError("prefix")), "r")]),
    "connectionLost raises": ([[(5, IN), (6, IN)]],
                              lambda s: [(Selectable(5, s, on_read=ValueError("x"), on_lost=TypeError("lost")), "r"),
                                         (Selectable(6, s), "r")]),
    "unknown descriptor": ([[(9, IN), (5, IN)]], lambda s: [(Selectable(5, s), "r")]),
    "interrupted": ([OSError(errno.EINTR, "interrupted")], lambda s: [(Selectable(5, s), "r")]),
    "poll fails": ([OSError(errno.EBADF, "bad")], lambda s: [(Selectable(5, s), "r")]),
    "nothing": ([[]], lambda s: [(Selectable(5, s), "r")]),
    "interrupt in logPrefix": ([[(5, IN)]], lambda s: [(Selectable(5, s, prefix=KeyboardInterrupt()), "r")]),
    "interrupt in connectionLost": ([[(5, IN)]],
                                    lambda s: [(Selectable(5, s, on_read=ValueError("x"),
                                                           on_lost=KeyboardInterrupt()), "r")]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_dispatch_matches_twisted(name: str) -> None:
    """The same events give the same context, log events, losses and propagation as EPollReactor."""
    events, selectables = SCENARIOS[name]
    theirs = run(EPollReactor, events, selectables)
    ours = run(SMTPEPollReactor, events, selectables)
    assert ours == theirs
    assert theirs["seen"] or name in ("interrupted", "poll fails", "nothing", "interrupt in logPrefix")


def test_no_log_context_at_all_is_logged_like_twisteds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A context stack without ILogContext: each event's failure logged and the loop goes on, as in Twisted."""
    events, selectables = SCENARIOS["several"]
    got = []
    for reactor_type in (EPollReactor, SMTPEPollReactor):
        tracker = context.ThreadedContextTracker()
        tracker.currentContext().contexts = [{}]
        monkeypatch.setattr(context, "theContextTracker", tracker)
        monkeypatch.setattr(context, "get", tracker.getContext)
        monkeypatch.setattr(context, "call", tracker.callWithContext)
        got.append(run(reactor_type, events, selectables))
    assert got[0] == got[1]
    assert got[1]["raised"] is None and got[1]["seen"] == []
    assert [e[3] for e in got[1]["logged"]] == ["AttributeError"] * 3


def test_the_context_is_the_selectables_prefix() -> None:
    """Inside doRead the legacy log context's system is the selectable's logPrefix(), and it is popped after."""
    depth = len(context.theContextTracker.currentContext().contexts)
    got = run(SMTPEPollReactor, [[(5, IN), (6, OUT)]],
              lambda s: [(Selectable(5, s, "SMTPServerProtocol,3,127.0.0.1"), "r"), (Selectable(6, s, "W"), "w")])
    assert [(w, fd, c["system"]) for w, fd, c in got["seen"]] == [
        ("read", 5, "SMTPServerProtocol,3,127.0.0.1"), ("write", 6, "W")]
    assert [e[0] for e in got["logged"]] == ["SMTPServerProtocol,3,127.0.0.1", "W"]
    assert len(context.theContextTracker.currentContext().contexts) == depth


def test_a_raising_read_is_logged_with_its_prefix_and_loses_the_connection() -> None:
    got = run(SMTPEPollReactor, [[(5, IN)]], lambda s: [(Selectable(5, s, "P", on_read=ValueError("boom")), "r")])
    assert ("lost", 5, "ValueError") in got["seen"]
    assert ("P", 1, (), "ValueError") in got["logged"]
    assert got["left"] == [] and got["unregistered"] == [("unregister", 5)]


def test_poll_arguments() -> None:
    """None waits forever (-1); at most as many events as selectables."""
    got = run(SMTPEPollReactor, [[]], lambda s: [(Selectable(5, s), "r"), (Selectable(6, s), "w")], timeout=None)
    assert got["polls"] == [(-1, 2)]


def test_another_context_tracker_gets_twisteds_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a context tracker of someone else's, events go through log.callWithLogger as in Twisted."""
    class Tracker(context.ThreadedContextTracker):
        pass

    calls: List[Any] = []
    real = log.callWithLogger
    monkeypatch.setattr(context, "theContextTracker", Tracker())
    monkeypatch.setattr(log, "callWithLogger", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    got = run(SMTPEPollReactor, [[(5, IN)]], lambda s: [(Selectable(5, s, "P"), "r")])
    assert [c.fd for c in calls] == [5]
    assert got["seen"][0][2]["system"] == "P"


def test_plugin_and_install_names() -> None:
    """twistd finds the reactor by its plugin name; a worker pool passes that name on."""
    names = {r.shortName: r for r in getReactorTypes()}
    assert names[_reactor.SHORT_NAME].moduleName == "txsmtpsrv._reactor"
    reactor = SMTPEPollReactor()
    try:
        assert f"--reactor={_reactor.SHORT_NAME}" in twist_command(reactor)
    finally:
        reactor._poller.close()
        reactor.waker.connectionLost(None)


def test_a_refused_install_leaves_no_descriptor_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reactor made and refused closes its epoll object and its waker's pipe."""
    fds: List[int] = []

    class Changed(SMTPEPollReactor):
        def __init__(self) -> None:
            super().__init__()
            fds.extend([self._poller.fileno(), self.waker.i, self.waker.o])
            del self._selectables

    monkeypatch.setattr(_reactor, "SMTPEPollReactor", Changed)
    monkeypatch.setattr("twisted.internet.main.installReactor", lambda reactor: pytest.fail("installed"))
    with pytest.raises(RuntimeError, match="_selectables"):
        _reactor.install()
    assert len(fds) == 3
    for fd in fds:
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF


def test_install_refuses_a_twisted_without_what_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Twisted whose EPollReactor lacks the private attributes doPoll reads: a clear error, nothing installed."""
    class Changed(SMTPEPollReactor):
        def __init__(self) -> None:
            super().__init__()
            self._poller.close()
            del self._poller

    installed: List[Any] = []
    monkeypatch.setattr(_reactor, "SMTPEPollReactor", Changed)
    monkeypatch.setattr("twisted.internet.main.installReactor", installed.append)
    with pytest.raises(RuntimeError, match="_poller"):
        _reactor.install()
    assert installed == []


def _unchosen(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """No reactor installed yet (restored after the test), and L{_reactor.install} only recorded."""
    monkeypatch.delitem(sys.modules, "twisted.internet.reactor")
    calls: List[str] = []
    monkeypatch.setattr(_reactor, "install", lambda: calls.append("install"))
    return calls


def test_install_unless_chosen_installs_when_nothing_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's default: with no reactor installed and epoll here, smtpsrv-epoll is installed."""
    calls = _unchosen(monkeypatch)
    assert _reactor.install_unless_chosen() is None
    assert calls == ["install"]


def test_install_unless_chosen_keeps_an_installed_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reactor already installed (--reactor, twist, an import) is kept: nothing is installed."""
    calls = _unchosen(monkeypatch)
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", object())
    assert _reactor.install_unless_chosen() is None
    assert calls == []


def test_the_checked_twisted_is_this_one() -> None:
    """
    The Twisted code smtpsrv-epoll replaces and inlines is the code it was
    checked against. When this fails, a new Twisted changed it: read the
    change, mend SMTPEPollReactor.doPoll, then update CHECKED_TWISTED.
    """
    assert _reactor._twisted_digest() in _reactor.CHECKED_TWISTED


@pytest.mark.parametrize("digest, word", [("0123456789abcdef", "is 0123456789abcdef"), (None, "cannot be read")])
def test_install_unless_chosen_refuses_a_changed_twisted(monkeypatch: pytest.MonkeyPatch,
                                                         digest: Optional[str], word: str) -> None:
    """A Twisted whose epoll dispatch changed (or cannot be read): its own reactor, and the reason why."""
    calls = _unchosen(monkeypatch)
    monkeypatch.setattr(_reactor, "_twisted_digest", lambda: digest)
    reason = _reactor.install_unless_chosen()
    assert calls == []
    assert reason is not None and word in reason and all(d in reason for d in _reactor.CHECKED_TWISTED)
    assert "choose it explicitly with --reactor=smtpsrv-epoll" in reason


def _changed_twisted_code(*args: Any, **kw: Any) -> Any:  # what a changed Twisted might have instead
    return None


@pytest.mark.parametrize("where, name", [(EPollReactor, "doPoll"), (log, "callWithLogger"),
                                         (log, "callWithContext"), (posixbase._PollLikeMixin, "_doReadOrWrite"),
                                         (tcp.Connection, "doRead"), (tcp.Connection, "logPrefix")])
def test_the_digest_follows_the_replaced_and_inlined_code(monkeypatch: pytest.MonkeyPatch,
                                                          where: Any, name: str) -> None:
    """Other code in any part doPoll replaces or inlines is another digest."""
    before = _reactor._twisted_digest()
    monkeypatch.setattr(where, name, _changed_twisted_code)
    assert _reactor._twisted_digest() not in (before, None)


def test_the_digest_follows_the_context_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    C{twisted.python.context} is hashed whole: its module-level call/get are
    what callWithContext runs. (Compared with the digest before the change,
    not with CHECKED_TWISTED: a digest that left the module out would differ
    from that one too.)
    """
    import inspect

    before = _reactor._twisted_digest()
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource",
                        lambda obj: real(obj) + "\ncall = other" if obj is context else real(obj))
    assert _reactor._twisted_digest() not in (before, None)


@pytest.mark.parametrize("error", [OSError("could not get source code"), TypeError("built-in"), ValueError("odd")])
def test_an_unreadable_twisted_is_a_warning_not_a_crash(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """No sources (a .pyc-only install) or any other failure reading them: the reason, never an exception."""
    import inspect

    def unreadable(obj: Any) -> str:
        raise error

    calls = _unchosen(monkeypatch)
    monkeypatch.setattr(inspect, "getsource", unreadable)
    assert _reactor._twisted_digest() is None
    reason = _reactor.install_unless_chosen()
    assert reason is not None and "cannot be read" in reason
    assert calls == []


@pytest.mark.parametrize("parent, asked", [("twistd", True), ("twist", False), (None, False)])
def test_smtpsrv_options_install_only_under_twistd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   parent: Optional[str], asked: bool) -> None:
    """
    Only twistd leaves the reactor to us: C{twist} installs the one it names
    after its subcommand's options, and a program parsing L{Options} itself
    has its own.
    """
    from twisted.application.twist._options import TwistOptions
    from twisted.scripts.twistd import ServerOptions

    from txsmtpsrv._cli import Options

    calls: List[str] = []
    monkeypatch.setattr(_reactor, "install_unless_chosen", lambda: calls.append("asked"))
    options = Options()
    if parent is not None:
        options.parent = ServerOptions() if parent == "twistd" else TwistOptions()
    options.parseOptions(["--maildir", str(tmp_path / "Maildir")])
    assert calls == (["asked"] if asked else [])


def test_smtpsrv_options_without_epoll(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """
    No epoll (macOS, BSD): Twisted's default stays, nothing to warn about,
    and txsmtpsrv._reactor is not imported (Twisted's epollreactor, which it
    imports, fails to import there; a None in sys.modules makes it fail here).
    """
    from twisted.scripts.twistd import ServerOptions

    from txsmtpsrv._cli import Options

    monkeypatch.delattr(select, "epoll")
    monkeypatch.setitem(sys.modules, "txsmtpsrv._reactor", None)  # any import of it raises ImportError
    options = Options()
    options.parent = ServerOptions()
    options.parseOptions(["--maildir", str(tmp_path / "Maildir")])
    assert options["maildir"] == str(tmp_path / "Maildir")


def test_the_help_says_which_reactor_runs() -> None:
    """An operator reading C{twistd smtpsrv --help} learns the default and how to choose another."""
    from txsmtpsrv._cli import Options

    text = " ".join(Options().getUsage(width=200).split())
    assert "runs the smtpsrv-epoll reactor unless one is chosen" in text
    assert "twistd --reactor=epoll smtpsrv" in text


def test_smtpsrv_options_warn_when_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A refusal is one warning naming the reactor and the reason; the options still parse."""
    from twisted.logger import LogLevel, capturedLogs
    from twisted.scripts.twistd import ServerOptions

    from txsmtpsrv._cli import Options

    monkeypatch.setattr(_reactor, "install_unless_chosen", lambda: "a reason")
    options = Options()
    options.parent = ServerOptions()
    with capturedLogs() as events:
        options.parseOptions(["--maildir", str(tmp_path / "Maildir")])
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [(e["name"], e["reason"]) for e in warnings] == [(_reactor.SHORT_NAME, "a reason")]


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_your_own_program_installs_it_through_twisted() -> None:
    """The README's way for a program of one's own: Twisted's installReactor finds it by name."""
    code = ("from twisted.application.reactors import installReactor; installReactor('smtpsrv-epoll'); "
            "from twisted.internet import reactor; print(type(reactor).__module__, type(reactor).__name__)")
    result = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["txsmtpsrv._reactor", "SMTPEPollReactor"]


def test_loopback_suites_under_trial_on_this_reactor(tmp_path: Path) -> None:
    """
    The loopback suites written as trial test cases (smtplib, Twisted's ESMTP client,
    swaks, AUTH, STARTTLS and TLS close, LMTP/BDAT, limits, PROXY, asynchronous
    delivery, the direct reply writer's socket tests, half-close, a UNIX socket) pass
    on smtpsrv-epoll; the probe module fails unless trial really ran them on it.
    """
    modules = ["tests.reactor_probe", "tests.test_loopback", "tests.test_sendnow", "tests.test_reply_loopback",
               "tests.test_auth_loopback", "tests.test_tls_dialogue", "tests.test_tls_certificates",
               "tests.test_tls_tools", "tests.test_tls_close", "tests.test_lmtp_bdat_loopback",
               "tests.test_guard_loopback", "tests.test_proxy_endpoint", "tests.test_delivery_async",
               "tests.test_tlslayer_loopback.LoopbackTests", "tests.test_halfclose.TLSTests"]
    result = subprocess.run(
        [sys.executable, "-m", "twisted.trial", f"--reactor={_reactor.SHORT_NAME}", *modules],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "PASSED" in out and "ProbeTests" in out, out[-3000:]
    ran = int(re.search(r"Ran (\d+) tests", out).group(1))  # type: ignore[union-attr]
    assert ran > 90, out[-3000:]


def _class_path(name: str) -> str:
    """Where twistd finds a reactor class of this name, as its start-up line spells it."""
    return f"txsmtpsrv._reactor.{name}" if name == "SMTPEPollReactor" else f"twisted.internet.epollreactor.{name}"


REACTOR_POLICY = '''
import os
from twisted.internet import reactor
from txsmtpsrv import Hooks

class Policy(Hooks):
    def on_connect(self, session):
        with open(os.environ["TXSMTPSRV_TEST_PIDS"], "a") as f:
            f.write(f"{os.getpid()} {type(reactor).__name__}\\n")
'''


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("chosen, runs", [(_reactor.SHORT_NAME, "SMTPEPollReactor"),
                                          (None, "SMTPEPollReactor"),  # the daemon's default
                                          ("epoll", "EPollReactor")])  # Twisted's own, when asked for
def test_twistd_smtpsrv_on_this_reactor(twistd: Any, tmp_path: Path, workers: int,
                                        chosen: Optional[str], runs: str) -> None:
    """
    C{twistd smtpsrv} (alone and with --workers) runs smtpsrv-epoll unless
    C{--reactor} names another, every process runs the same one, and it
    stores smtplib's mail.
    """
    (tmp_path / "reactorpolicy.py").write_text(REACTOR_POLICY)
    seen = tmp_path / "seen.txt"
    maildir = tmp_path / "Maildir"
    extra = ["--workers", str(workers)] if workers else []
    server = twistd("--maildir", str(maildir), "--hooks", "reactorpolicy:Policy", *extra,
                    pythonpath=[str(tmp_path)], env={"TXSMTPSRV_TEST_PIDS": str(seen)}, reactor=chosen)
    # twistd's own start-up line (logged before "listening", which the fixture waited for)
    assert re.findall(r"reactor class: ([\w.]+)\.$", server.log(), re.M) == [f"{_class_path(runs)}"]
    if workers:
        # (log() above may have read these lines already: wait_for alone would miss them, a flaky test)
        worker = int(server.find_or_wait(r"started worker 1, pid (\d+)").group(1))
        server.find_or_wait(rf"listening on 127\.0\.0\.1:{server.port} \(adopted fd 3\), pid {worker}")
    count = 20
    for i in range(count):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            for j in range(3):
                client.sendmail("a@x.test", ["b@x.test"], f"Subject: {i}.{j}\r\n\r\n.dot\r\nx\r\n".encode())
    rows = [line.split() for line in seen.read_text().split("\n") if line]
    assert len(rows) == count
    assert {name for _, name in rows} == {runs}
    assert len({pid for pid, _ in rows}) == (2 if workers else 1)
    messages = maildir_messages(maildir)
    assert len(messages) == 3 * count and all(m.endswith(b"\n.dot\nx\n") for m in messages)
    assert server.terminate() in CLEAN_EXITS


REFUSING_TWISTED = '''
import txsmtpsrv._reactor as _reactor

def _refuse():
    raise RuntimeError("smtpsrv-epoll: this Twisted's EPollReactor lacks ['_poller']; use the default reactor")

_reactor.install = _refuse  # as on a Twisted that changed what smtpsrv-epoll reads
'''

CHANGED_TWISTED = '''
import txsmtpsrv._reactor as _reactor

_reactor.CHECKED_TWISTED = ("0123456789abcdef",)  # as on a Twisted whose epoll dispatch code changed
'''


@pytest.mark.parametrize("site_code, warning", [
    (REFUSING_TWISTED, "smtpsrv-epoll: this Twisted's EPollReactor lacks ['_poller']; use the default reactor"),
    (CHANGED_TWISTED, f"the digest of Twisted's epoll dispatch code is {_reactor._twisted_digest()}, not "
                      "0123456789abcdef as checked; choose it explicitly with --reactor=smtpsrv-epoll"),
])
def test_twistd_smtpsrv_falls_back_to_twisteds_reactor(twistd: Any, tmp_path: Path, site_code: str,
                                                       warning: str) -> None:
    """
    Where smtpsrv-epoll refuses (another Twisted) or Twisted's code is not the
    code it was checked against, C{twistd smtpsrv} says so once and runs on
    Twisted's default reactor instead of failing to start. (The Twisted is
    simulated by a C{sitecustomize} on PYTHONPATH, which shadows a
    distribution's own for this one subprocess; the warning shows it ran.)
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(site_code)
    maildir = tmp_path / "Maildir"
    server = twistd("--maildir", str(maildir), pythonpath=[str(site)])
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: s\r\n\r\nbody\r\n")
    text = server.log()
    assert re.findall(r"reactor class: ([\w.]+)\.$", text, re.M) == [_class_path("EPollReactor")]
    warnings = re.findall(r"running Twisted's default reactor, not smtpsrv-epoll: (.*)$", text, re.M)
    assert warnings == [warning]
    assert len(maildir_messages(maildir)) == 1
    assert server.terminate() in CLEAN_EXITS
