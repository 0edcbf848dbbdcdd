# -*- test-case-name: tests.test_cred -*-
"""
Authenticate SMTP AUTH credentials with C{twisted.cred}.

L{CredAuthenticator} turns the L{Credentials} an AUTH exchange produced into
C{twisted.cred} credentials objects and asks a checker (or a portal) for the
avatar, so existing checkers — C{FilePasswordDB}, LDAP or database checkers,
C{InMemoryUsernamePasswordDatabaseDontUse} in tests — work unchanged::

    hooks.on_auth = CredAuthenticator(FilePasswordDB("/etc/smtp.passwd"))

PLAIN and LOGIN become C{IUsernamePassword}, CRAM-MD5 an
C{IUsernameHashedPassword} whose C{checkPassword} verifies the HMAC, and
XOAUTH2 an L{IOAuth2Token} that only checkers which declare it accept.

Checkers must not block the reactor: L{FileCredentialsChecker} (what
C{--auth file:} uses) keeps the password file in memory and hashes in a
thread pool, and L{ThreadedChecker} moves any blocking checker (PAM, a
database driver without async API) to one.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional, Tuple

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    ICredentials,
    IUsernameHashedPassword,
    IUsernamePassword,
    UsernamePassword,
)
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from txsmtpsrv._deferreds import when_fired
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._passwd import PasswordTable, is_hash, verify
from txsmtpsrv._sasl import MECHANISMS, Credentials, constant_time_equals

__all__ = [
    "CredAuthenticator",
    "IOAuth2Token",
    "OAuth2Token",
    "CramMD5Response",
    "ConstantTimeUsernamePassword",
    "to_cred_credentials",
    "FileCredentialsChecker",
    "ThreadedChecker",
]

_log = Logger()

#: Marker for "pass the Session as the portal mind".
_SESSION: Any = object()


# Interface is implied by ICredentials; naming it lets pydoctor, which cannot
# see into Twisted, document this as an interface.
class IOAuth2Token(ICredentials, Interface):
    """
    A user name with an OAuth 2.0 bearer token (SASL XOAUTH2). A checker
    lists this in C{credentialInterfaces} to accept XOAUTH2 logins and
    validates C{access_token} itself (introspection, JWT signature...).
    """

    username = Attribute("The user name the client claims, as UTF-8 C{bytes}.")
    access_token = Attribute("The bearer token, as C{str}.")


@implementer(IOAuth2Token)
class OAuth2Token:
    """The L{IOAuth2Token} we build from XOAUTH2 credentials."""

    def __init__(self, username: bytes, access_token: str) -> None:
        self.username = username
        self.access_token = access_token

    def __repr__(self) -> str:
        return f"<OAuth2Token username={self.username!r}>"


class ConstantTimeUsernamePassword(UsernamePassword):
    """
    C{UsernamePassword} whose C{checkPassword} runs in constant time, so a
    checker comparing stored passwords through it leaks no timing.
    """

    def checkPassword(self, password: bytes) -> bool:
        """Whether C{password} is the one the client sent, in constant time."""
        return constant_time_equals(self.password, password)

    def __repr__(self) -> str:
        return f"<UsernamePassword username={self.username!r}>"


@implementer(IUsernameHashedPassword)
class CramMD5Response:
    """
    A CRAM-MD5 answer as C{twisted.cred} expects one: the checker looks up
    the user's cleartext password and calls C{checkPassword(password)},
    which recomputes the HMAC over our challenge.
    """

    def __init__(self, credentials: Credentials) -> None:
        self.username = credentials.username.encode("utf-8")
        self._credentials = credentials

    def checkPassword(self, password: bytes | str) -> bool:
        """Whether C{password} produces the client's digest."""
        return self._credentials.validate_password(password)

    def __repr__(self) -> str:
        return f"<CramMD5Response username={self.username!r}>"


def to_cred_credentials(credentials: Credentials) -> ICredentials:
    """
    Convert SASL credentials to a C{twisted.cred} credentials object;
    usernames and passwords become UTF-8 C{bytes}, as Twisted's checkers use.
    """
    username = credentials.username.encode("utf-8")
    if credentials.method in ("PLAIN", "LOGIN"):
        assert credentials.password is not None
        return ConstantTimeUsernamePassword(username, credentials.password.encode("utf-8"))
    if credentials.method == "CRAM-MD5":
        return CramMD5Response(credentials)
    if credentials.method == "XOAUTH2":
        assert credentials.access_token is not None
        return OAuth2Token(username, credentials.access_token)
    raise ValueError(f"unknown SASL method {credentials.method!r}")


_METHOD_INTERFACE: dict[str, type[Interface]] = {
    "PLAIN": IUsernamePassword,
    "LOGIN": IUsernamePassword,
    "CRAM-MD5": IUsernameHashedPassword,
    "XOAUTH2": IOAuth2Token,
}


def _invalid() -> SMTPError:
    return SMTPError(535, "Authentication credentials invalid", "5.7.8")


class CredAuthenticator:
    """
    An C{on_auth(session, credentials)} hook backed by C{twisted.cred}.

    Given a checker it returns the avatar id (what C{requestAvatarId}
    fires with, usually the user name as C{bytes}); given a portal it
    returns the avatar and keeps the realm's logout callable until
    L{logout} (or C{on_close}) is called for the session. The protocol stores
    the result as C{session.user}.

    Use it as the hook itself (C{on_auth = CredAuthenticator(portal)}) or
    call it from your own C{on_auth}.

    @param portal_or_checker: a C{Portal} (anything with C{login}) or an
        C{ICredentialsChecker} (anything with C{requestAvatarId}).
    @param interface: the avatar interface requested from the portal's realm.
    @param mind: passed to C{portal.login}; by default the L{Session}, so the
        realm can see who is connecting.
    """

    def __init__(self, portal_or_checker: Any, interface: type[Interface] = Interface,
                 *, mind: Any = _SESSION) -> None:
        if hasattr(portal_or_checker, "login"):
            self.portal: Any = portal_or_checker
            self.checker: Any = None
        elif hasattr(portal_or_checker, "requestAvatarId"):
            self.portal = None
            self.checker = portal_or_checker
        else:
            raise TypeError("CredAuthenticator needs a Portal or an ICredentialsChecker")
        self.interface = interface
        self.mind = mind
        self._logouts: dict[str, Any] = {}

    def _interfaces(self) -> list[type[Interface]]:
        """
        The credentials interfaces the backend verifies; a checker that
        doesn't declare any is assumed to take username/password only.
        """
        if self.portal is not None:
            return list(self.portal.listCredentialsInterfaces())
        return list(getattr(self.checker, "credentialInterfaces", None) or [IUsernamePassword])

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """
        The SASL mechanisms the backend can verify, for EHLO's AUTH line:
        e.g. a C{FilePasswordDB} with hashed passwords can't do CRAM-MD5.
        """
        declared = self._interfaces()
        return tuple(m for m in MECHANISMS
                     if any(i.isOrExtends(_METHOD_INTERFACE[m]) for i in declared))

    def on_auth(self, session: Any, credentials: Credentials) -> Deferred[Any]:
        """
        Check C{credentials}; fire with the avatar id / avatar, or fail with
        C{SMTPError(535, ..., "5.7.8")} for bad credentials and
        C{SMTPError(454, ..., "4.7.0")} when the backend itself failed.
        """
        if credentials.authzid is not None and credentials.authzid != credentials.username:
            # twisted.cred has no notion of acting as another identity.
            return fail(_invalid())
        cred = to_cred_credentials(credentials)
        if self.portal is not None:
            mind = session if self.mind is _SESSION else self.mind
            d = maybeDeferred(self.portal.login, cred, mind, self.interface)
            d.addCallback(self._logged_in, session)
        else:
            if not any(i.providedBy(cred) for i in self._interfaces()):
                return fail(_invalid())  # e.g. CRAM-MD5 against hashed passwords
            d = maybeDeferred(self.checker.requestAvatarId, cred)
        d.addErrback(self._translate, credentials.method)
        return d

    __call__ = on_auth

    def _logged_in(self, result: tuple[Any, Any, Any], session: Any) -> Any:
        """Keep the realm's logout for L{logout}; hand the avatar to the protocol."""
        _interface, avatar, logout = result
        self.logout(session)  # a previous login on this session (shouldn't happen: 503)
        self._logouts[session.id] = logout
        return avatar

    def _translate(self, failure: Any, method: str) -> Any:
        """Map cred failures to SMTP replies; hide backend errors behind 454."""
        if failure.check(error.LoginFailed):  # UnauthorizedLogin, UnhandledCredentials
            raise _invalid()
        if failure.check(SMTPError):
            return failure
        # Never log the credentials: only the mechanism and the error.
        _log.failure("twisted.cred backend failed during {method} authentication",
                     failure, method=method)
        raise SMTPError(454, "Temporary authentication failure", "4.7.0")

    def logout(self, session: Any) -> None:
        """Call the realm's logout for this session, if a portal login succeeded."""
        logout = self._logouts.pop(session.id, None)
        if logout is not None:
            logout()

    def on_close(self, session: Any) -> None:
        """Hook form of L{logout}, so the authenticator can double as a hooks object."""
        self.logout(session)


def _busy() -> SMTPError:
    return SMTPError(454, "Temporary authentication failure", "4.7.0")


_pools: dict[int, ThreadPool] = {}
_thread_state = threading.local()


def _low_priority(f: Callable[..., Any], *args: Any) -> Any:
    """
    Run C{f} in a thread of L{auth_threadpool} at a lower CPU priority
    (Linux schedules threads on their own: C{setpriority} on the thread id),
    so hashing under a guessing flood yields the CPU to the reactor thread.
    """
    if not getattr(_thread_state, "niced", False):
        _thread_state.niced = True
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 5))
        except (AttributeError, OSError):  # not Linux, or not allowed: run at the usual priority
            pass
    return f(*args)


def auth_threadpool(reactor: Any = None, size: int = 2) -> ThreadPool:
    """
    The thread pool password hashes and blocking checkers run in, one per
    reactor, started now and stopped at reactor shutdown. It is not the
    reactor's own pool, which name resolution uses: a flood of bcrypt
    checks must not delay everyone's DNS.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    pool = _pools.get(id(reactor))
    if pool is None:
        pool = _pools[id(reactor)] = ThreadPool(0, size, name="txsmtpsrv-auth")
        pool.start()

        def stop() -> None:
            _pools.pop(id(reactor), None)
            pool.stop()

        reactor.addSystemEventTrigger("during", "shutdown", stop)
    return pool


class _Pooled:
    """Runs blocking calls in a pool, at most C{max_pending} at once; more get 454 at once."""

    def __init__(self, reactor: Any, threadpool: Optional[ThreadPool], max_pending: int) -> None:
        self._reactor = reactor  # None: the global reactor, imported at first use (not at option parsing)
        self._pool = threadpool
        self._own = False  # the pool is our auth_threadpool, whose threads we may lower in priority
        self.max_pending = max_pending
        self.pending = 0

    def call(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """C{f(*args)} in the pool, not counted against C{max_pending}."""
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        if self._pool is None:
            self._pool = auth_threadpool(self._reactor)
            self._own = True
        if self._own:
            return deferToThreadPool(self._reactor, self._pool, _low_priority, f, *args)
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        if self.pending >= self.max_pending:
            # A queue that grows with the flood would delay honest clients
            # past their timeouts and cost memory: refuse at once instead.
            return fail(_busy())
        self.pending += 1
        d = self.call(f, *args)

        def done(result: Any) -> Any:
            self.pending -= 1
            return result

        return d.addBoth(done)


@implementer(ICredentialsChecker)
class ThreadedChecker:
    """
    Run a blocking C{twisted.cred} checker (one whose C{requestAvatarId}
    does its work before returning: PAM, C{FilePasswordDB}, a synchronous
    database driver) in a thread pool, so the reactor serves other clients
    meanwhile. At most C{max_pending} checks wait or run at once; more fail
    at once with C{454 4.7.0}.

    @param threadpool: the pool (default: L{auth_threadpool}).
    @param reactor: the reactor (default: the global one, at first use).
    """

    def __init__(self, checker: Any, *, reactor: Any = None, threadpool: Optional[ThreadPool] = None,
                 max_pending: int = 64) -> None:
        self.checker = checker
        self.credentialInterfaces = tuple(getattr(checker, "credentialInterfaces", (IUsernamePassword,)))
        self._pooled = _Pooled(reactor, threadpool, max_pending)

    def _blocking(self, credentials: ICredentials) -> Any:
        result = self.checker.requestAvatarId(credentials)
        if isinstance(result, Deferred):
            # A blocking checker returns an already fired Deferred; read it here.
            box: list[Any] = []
            result.addBoth(box.append)
            if not box:
                raise RuntimeError(f"{self.checker!r} is asynchronous: use it without ThreadedChecker")
            if isinstance(box[0], Failure):
                box[0].raiseException()
            return box[0]
        return result

    def requestAvatarId(self, credentials: ICredentials) -> "Deferred[Any]":
        """Check C{credentials} in the pool."""
        return self._pooled.run(self._blocking, credentials)


@implementer(ICredentialsChecker)
class FileCredentialsChecker:
    """
    A password file (L{_passwd} describes the format, C{FilePasswordDB}'s
    C{user:password} plus hashes) checked from memory.

    The file is read once here (an unreadable file or bad line raises now,
    at start-up), again on L{reload} (C{twistd} calls it on SIGHUP) and
    when its modification time, size or inode changed — looked at no more
    than once per C{check_interval} seconds, on a login attempt. Reloads
    read in the pool; logins meanwhile wait for them, other clients do
    not; a file that became unreadable or malformed is logged and the
    previous contents kept. Plaintext passwords are compared in the
    reactor thread (a dictionary lookup and a constant-time compare);
    hashes are verified in the pool, at most C{max_pending} at once.

    CRAM-MD5 needs the plaintext: it fails for users stored as hashes.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, path: str, *, reactor: Any = None, threadpool: Optional[ThreadPool] = None,
                 clock: Optional[Callable[[], float]] = None, check_interval: float = 1.0,
                 max_pending: int = 64) -> None:
        self.path = path
        self.check_interval = check_interval
        self._pooled = _Pooled(reactor, threadpool, max_pending)
        self._clock = clock or time.monotonic
        self._signature = self._stat()
        self.table = PasswordTable.load(path)
        self._checked = self._clock()
        self._loading: Optional[Deferred[None]] = None
        self.loads = 1

    def __repr__(self) -> str:
        return f"<FileCredentialsChecker {self.path!r}: {len(self.table)} users>"

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> "Deferred[None]":
        """Read the file again (in the pool); fires when the new contents are in use."""
        if self._loading is not None:
            return when_fired(self._loading)
        self._signature = self._stat()
        self._checked = self._clock()
        d = self._pooled.call(PasswordTable.load, self.path)
        self._loading = d

        def loaded(table: PasswordTable) -> None:
            self.table = table
            self.loads += 1
            _log.info("--auth file:{path}: {users} users", path=self.path, users=len(table))

        def failed(f: Failure) -> None:
            _log.error("--auth file:{path} not reloaded, keeping the previous contents: {error}",
                       path=self.path, error=f.getErrorMessage())

        def finished(_: Any) -> None:
            self._loading = None

        d.addCallbacks(loaded, failed).addBoth(finished)
        return when_fired(d)

    def _maybe_reload(self) -> Optional["Deferred[None]"]:
        """A reload to wait for, when one runs or the file changed; else C{None}."""
        if self._loading is not None:
            return when_fired(self._loading)
        now = self._clock()
        if now - self._checked < self.check_interval:
            return None
        self._checked = now
        if self._stat() == self._signature:
            return None
        return self.reload()

    def requestAvatarId(self, credentials: ICredentials) -> "Deferred[Any]":
        """The user name if C{credentials} match the file, else C{UnauthorizedLogin}."""
        reloading = self._maybe_reload()
        if reloading is not None:
            return reloading.addCallback(lambda _: self._check(credentials))
        return self._check(credentials)

    def _check(self, credentials: ICredentials) -> "Deferred[Any]":
        # Every credentials interface we check (password, hashed password) has one.
        username: Optional[bytes] = getattr(credentials, "username", None)
        stored = None if username is None else self.table.get(username)
        if IUsernamePassword.providedBy(credentials):
            password = credentials.password
            if stored is None:
                stored, username = self.table.dummy, None  # the same work for an unknown user
            if is_hash(stored):
                return self._pooled.run(verify, stored, password).addCallback(self._result, username)
            return self._result(verify(stored, password), username)
        if IUsernameHashedPassword.providedBy(credentials):
            if stored is None or is_hash(stored):
                return fail(error.UnauthorizedLogin())
            return self._result(credentials.checkPassword(stored), username)
        return fail(error.UnhandledCredentials())

    @staticmethod
    def _result(ok: bool, username: Optional[bytes]) -> "Deferred[Any]":
        if ok and username is not None:
            return succeed(username)
        return fail(error.UnauthorizedLogin())
