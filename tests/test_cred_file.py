"""
Tests for L{FileCredentialsChecker} (C{--auth file:}) and L{ThreadedChecker}:
the file is read once and on change, checks come from memory, hashes and
blocking checkers run in a pool, and the pool's queue is bounded.
"""

from __future__ import annotations

import hmac
import os
import threading
from typing import Any, Callable, List, Tuple

import pytest
from twisted.cred import error
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest as trial

from txsmtpsrv._cred import CramMD5Response, CredAuthenticator, FileCredentialsChecker, ThreadedChecker
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._passwd import hash_password
from txsmtpsrv._sasl import Credentials


class FakeReactor:
    """callFromThread at once (our "threads" run inline or when the test says)."""

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class ManualPool:
    """A thread pool whose work runs only when the test calls L{run_all}, on the test's thread."""

    def __init__(self) -> None:
        self.queue: List[Tuple[Any, Callable[..., Any], Tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Any, f: Callable[..., Any], *a: Any) -> None:
        self.queue.append((on_result, f, a))

    def run_all(self) -> None:
        while self.queue:
            on_result, f, a = self.queue.pop(0)
            try:
                on_result(True, f(*a))
            except Exception:
                from twisted.python.failure import Failure
                on_result(False, Failure())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result_of(d: defer.Deferred) -> Any:
    box: list = []
    d.addBoth(box.append)
    assert box, "not fired"
    return box[0]


@pytest.fixture
def passwd(tmp_path):
    path = tmp_path / "passwd"
    path.write_bytes(b"alice:wonderland\nbob:" + hash_password(b"builder", ln=4) + b"\n")
    return str(path)


def make(path: str, **kw: Any) -> Tuple[FileCredentialsChecker, ManualPool, Clock]:
    pool, clock = ManualPool(), Clock()
    return FileCredentialsChecker(path, reactor=FakeReactor(), threadpool=pool, clock=clock, **kw), pool, clock


def test_plaintext_checked_from_memory_without_the_pool(passwd):
    checker, pool, _ = make(passwd)
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland"))) == b"alice"
    f = result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"wrong")))
    assert f.check(error.UnauthorizedLogin)
    assert pool.queue == []  # no thread needed for plaintext
    assert checker.loads == 1


def test_file_not_read_per_attempt(passwd, monkeypatch):
    """Many attempts, the file unchanged: it is stat'ed at most once a second and never re-read."""
    checker, _, clock = make(passwd)
    opened: list = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    stats: list = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a, **k))
    for i in range(1000):
        clock.now += 0.01  # 100 attempts per second for 10 s
        result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland")))
    assert opened == []
    assert 9 <= len(stats) <= 11
    assert checker.loads == 1


def test_hash_checked_in_pool(passwd):
    checker, pool, _ = make(passwd)
    d = checker.requestAvatarId(UsernamePassword(b"bob", b"builder"))
    assert not d.called and len(pool.queue) == 1  # waits for the pool: the reactor goes on
    pool.run_all()
    assert result_of(d) == b"bob"
    d = checker.requestAvatarId(UsernamePassword(b"bob", b"nope"))
    pool.run_all()
    assert result_of(d).check(error.UnauthorizedLogin)


def test_unknown_user_costs_a_hash_too(passwd):
    """With hashes in the file, an unknown user is checked against one: no timing tells who exists."""
    checker, pool, _ = make(passwd)
    d = checker.requestAvatarId(UsernamePassword(b"mallory", b"builder"))
    assert len(pool.queue) == 1
    pool.run_all()
    assert result_of(d).check(error.UnauthorizedLogin)
    d = checker.requestAvatarId(UsernamePassword(b"mallory", b"x"))
    pool.run_all()
    assert result_of(d).check(error.UnauthorizedLogin)


def test_pending_hashes_bounded(passwd):
    """More hash checks than max_pending waiting: the next fails at once with 454, none queue up."""
    checker, pool, _ = make(passwd, max_pending=3)
    waiting = [checker.requestAvatarId(UsernamePassword(b"bob", b"builder")) for _ in range(3)]
    over = result_of(checker.requestAvatarId(UsernamePassword(b"bob", b"builder")))
    assert over.check(SMTPError) and over.value.code == 454 and over.value.enhanced == "4.7.0"
    assert len(pool.queue) == 3
    pool.run_all()
    assert [result_of(d) for d in waiting] == [b"bob"] * 3
    # Room again; plaintext never queues, so it is never refused.
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland"))) == b"alice"


def test_reload_on_change_checked_once_a_second(passwd):
    checker, pool, clock = make(passwd)
    with open(passwd, "ab") as f:
        f.write(b"carol:new\n")
    os.utime(passwd, ns=(1, 1))  # a different mtime whatever the file system's resolution
    clock.now += 0.5
    d = checker.requestAvatarId(UsernamePassword(b"carol", b"new"))
    pool.run_all()  # (an unknown user is checked against a hash, in the pool)
    assert result_of(d).check(error.UnauthorizedLogin)  # not looked at yet: under a second since the last look
    clock.now += 0.6
    d = checker.requestAvatarId(UsernamePassword(b"carol", b"new"))
    assert not d.called  # the attempt waits for the reload, read in the pool
    pool.run_all()
    assert result_of(d) == b"carol"
    assert checker.loads == 2


def test_reload_error_keeps_previous(passwd):
    checker, pool, _ = make(passwd)
    with open(passwd, "wb") as f:
        f.write(b"alice:$scrypt$broken\n")
    d = checker.reload()
    pool.run_all()
    assert result_of(d) is None
    assert checker.loads == 1
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland"))) == b"alice"


def test_sighup_style_reload(passwd):
    checker, pool, _ = make(passwd)
    with open(passwd, "wb") as f:
        f.write(b"alice:changed\n")
    d = checker.reload()
    second = checker.reload()  # a second request while reading joins the first
    assert len(pool.queue) == 1
    pool.run_all()
    assert result_of(d) is None and result_of(second) is None
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"changed"))) == b"alice"
    assert checker.loads == 2


def test_bad_file_at_start_raises(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(b"a:b\nu:$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA\n")
    with pytest.raises(ValueError, match="line 2"):
        make(str(path))
    with pytest.raises(OSError):
        make(str(tmp_path / "missing"))


def test_cram_md5_needs_plaintext(passwd):
    checker, _, _ = make(passwd)
    good = Credentials(method="CRAM-MD5", username="alice", challenge="<1.2@x>",
                       digest=hmac.new(b"wonderland", b"<1.2@x>", "md5").hexdigest())
    assert result_of(checker.requestAvatarId(CramMD5Response(good))) == b"alice"
    hashed = Credentials(method="CRAM-MD5", username="bob", challenge="<1.2@x>",
                         digest=hmac.new(b"builder", b"<1.2@x>", "md5").hexdigest())
    assert result_of(checker.requestAvatarId(CramMD5Response(hashed))).check(error.UnauthorizedLogin)


def test_through_cred_authenticator(passwd):
    checker, pool, _ = make(passwd)
    auth = CredAuthenticator(checker)
    assert auth.mechanisms == ("PLAIN", "LOGIN", "CRAM-MD5")

    class S:
        id = "s1"

    ok = auth(S(), Credentials(method="PLAIN", username="bob", password="builder"))
    bad = auth(S(), Credentials(method="PLAIN", username="bob", password="x"))
    pool.run_all()
    assert result_of(ok) == b"bob"
    f = result_of(bad)
    assert f.check(SMTPError) and f.value.code == 535


# -- ThreadedChecker --------------------------------------------------------------------------


class Blocking:
    credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

    def __init__(self) -> None:
        self.inner = InMemoryUsernamePasswordDatabaseDontUse(u=b"p")
        self.threads: list = []

    def requestAvatarId(self, c: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.inner.requestAvatarId(c)


def test_threaded_checker_inline_pool():
    pool = ManualPool()
    checker = ThreadedChecker(Blocking(), reactor=FakeReactor(), threadpool=pool, max_pending=1)
    d = checker.requestAvatarId(UsernamePassword(b"u", b"p"))
    assert not d.called
    assert result_of(checker.requestAvatarId(UsernamePassword(b"u", b"p"))).value.code == 454
    pool.run_all()
    assert result_of(d) == b"u"
    d = checker.requestAvatarId(UsernamePassword(b"u", b"x"))
    pool.run_all()
    assert result_of(d).check(error.UnauthorizedLogin)


class _TmpDir(trial.TestCase):
    def tmpdir(self) -> str:
        """A temporary directory, removed after the test (trial's mktemp would write under the cwd)."""
        import shutil
        import tempfile
        path = tempfile.mkdtemp(prefix="txsmtpsrv-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path


class RealThreads(_TmpDir):
    """With the real reactor and a real pool: the work runs off the reactor thread."""

    def setUp(self) -> None:
        self.pool = ThreadPool(0, 2, name="test-auth")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    @defer.inlineCallbacks
    def test_blocking_checker_runs_in_pool(self):
        blocking = Blocking()
        checker = ThreadedChecker(blocking, reactor=real_reactor, threadpool=self.pool)
        user = yield checker.requestAvatarId(UsernamePassword(b"u", b"p"))
        self.assertEqual(user, b"u")
        self.assertEqual(blocking.threads, [blocking.threads[0]])
        self.assertNotEqual(blocking.threads[0], threading.current_thread().name)

    @defer.inlineCallbacks
    def test_file_hash_in_pool(self):
        path = os.path.join(self.tmpdir(), "passwd")
        with open(path, "wb") as f:
            f.write(b"bob:" + hash_password(b"builder", ln=4) + b"\n")
        checker = FileCredentialsChecker(path, reactor=real_reactor, threadpool=self.pool)
        user = yield checker.requestAvatarId(UsernamePassword(b"bob", b"builder"))
        self.assertEqual(user, b"bob")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"bob", b"x")), error.UnauthorizedLogin)
        yield threads.deferToThreadPool(real_reactor, self.pool, lambda: None)


class DefaultPool(_TmpDir):
    """Without a pool given, hashes run in the auth pool, at a lower CPU priority than the reactor."""

    @defer.inlineCallbacks
    def test_hash_in_auth_pool_niced(self):
        import txsmtpsrv._cred as cred
        path = os.path.join(self.tmpdir(), "passwd")
        with open(path, "wb") as f:
            f.write(b"bob:" + hash_password(b"builder", ln=4) + b"\n")
        checker = FileCredentialsChecker(path)

        def stop_pool() -> None:  # the reactor never shuts down under the tests: stop its threads here
            pool = cred._pools.pop(id(real_reactor), None)
            if pool is not None:
                pool.stop()

        self.addCleanup(stop_pool)
        seen: list = []
        real_verify = cred.verify

        def spy(stored: bytes, password: bytes) -> bool:
            tid = threading.get_native_id()
            seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid)))
            return real_verify(stored, password)

        self.patch(cred, "verify", spy)
        user = yield checker.requestAvatarId(UsernamePassword(b"bob", b"builder"))
        self.assertEqual(user, b"bob")
        [(name, nice)] = seen
        self.assertNotEqual(name, threading.current_thread().name)
        self.assertGreater(nice, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
