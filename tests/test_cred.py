"""
Tests for L{txsmtpsrv._cred}: checking AUTH credentials with twisted.cred.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from twisted.cred import error
from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import globalLogPublisher
from zope.interface import Interface, implementer

from txsmtpsrv._cred import (
    ConstantTimeUsernamePassword,
    CramMD5Response,
    CredAuthenticator,
    IOAuth2Token,
    OAuth2Token,
    to_cred_credentials,
)
from txsmtpsrv._errors import SMTPError
from txsmtpsrv._sasl import Credentials

CHALLENGE = "<1896.697170952@postoffice.reston.mci.net>"


def cram(username: str, password: str, challenge: str = CHALLENGE) -> Credentials:
    """CRAM-MD5 credentials as a client knowing C{password} would produce."""
    digest = hmac.new(password.encode(), challenge.encode(), hashlib.md5).hexdigest()
    return Credentials("CRAM-MD5", username, challenge=challenge, digest=digest)


def plain(username: str, password: str, authzid: str | None = None) -> Credentials:
    """PLAIN credentials."""
    return Credentials("PLAIN", username, password=password, authzid=authzid)


class FakeSession:
    """Stands in for txsmtpsrv's Session: the authenticator only uses C{id}."""

    def __init__(self, id: str) -> None:
        self.id = id


def session() -> FakeSession:
    """A session for the hook to see."""
    return FakeSession("s1")


def result_of(d: Deferred[Any]) -> Any:
    """The synchronous result of C{d}: its value, or the raised exception."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire synchronously"
    value = out[0]
    if hasattr(value, "value") and isinstance(value.value, BaseException):
        return value.value
    return value


def assert_535(value: Any) -> None:
    """C{value} is the 535 5.7.8 rejection."""
    assert isinstance(value, SMTPError)
    assert (value.code, value.enhanced) == (535, "5.7.8")
    assert value.text == "Authentication credentials invalid"


@pytest.fixture
def memory() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A toy checker with one user."""
    return InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret", tim=b"tanstaaftanstaaf")


# Conversion


def test_plain_to_username_password():
    """PLAIN/LOGIN become a constant-time UsernamePassword with UTF-8 bytes."""
    cred = to_cred_credentials(Credentials("LOGIN", "jürgen", password="pä"))
    assert isinstance(cred, UsernamePassword) and isinstance(cred, ConstantTimeUsernamePassword)
    assert IUsernamePassword.providedBy(cred)
    assert (cred.username, cred.password) == ("jürgen".encode(), "pä".encode())
    assert cred.checkPassword("pä".encode()) and not cred.checkPassword(b"p")


def test_cram_to_hashed_password():
    """CRAM-MD5 becomes an IUsernameHashedPassword checking the HMAC."""
    cred = to_cred_credentials(cram("tim", "tanstaaftanstaaf"))
    assert isinstance(cred, CramMD5Response) and IUsernameHashedPassword.providedBy(cred)
    assert cred.username == b"tim"
    assert cred.checkPassword(b"tanstaaftanstaaf") and not cred.checkPassword(b"x")


def test_xoauth2_to_token():
    """XOAUTH2 becomes an IOAuth2Token."""
    cred = to_cred_credentials(Credentials("XOAUTH2", "a@x", access_token="tok"))
    assert isinstance(cred, OAuth2Token) and IOAuth2Token.providedBy(cred)
    assert (cred.username, cred.access_token) == (b"a@x", "tok")


def test_unknown_method():
    """A method we don't know can't be converted."""
    with pytest.raises(ValueError):
        to_cred_credentials(Credentials("NTLM", "a"))


def test_cred_reprs_hide_secrets():
    """twisted.cred objects we build never show passwords, tokens or digests."""
    objs = [to_cred_credentials(plain("alice", "hunter2")),
            to_cred_credentials(Credentials("XOAUTH2", "alice", access_token="ya29.SECRET")),
            to_cred_credentials(cram("alice", "pw"))]
    digest = cram("alice", "pw").digest
    for obj in objs:
        assert "alice" in repr(obj)
        for secret in ("hunter2", "ya29.SECRET", digest):
            assert secret not in repr(obj)


# Construction


def test_rejects_other_objects():
    """Something that is neither a portal nor a checker is a TypeError."""
    with pytest.raises(TypeError):
        CredAuthenticator(object())


# With a checker


def test_memory_checker_plain(memory):
    """PLAIN with the right password fires with the avatar id."""
    auth = CredAuthenticator(memory)
    assert result_of(auth.on_auth(session(), plain("alice", "s3cret"))) == b"alice"


def test_memory_checker_callable(memory):
    """The authenticator itself is callable as the on_auth hook."""
    auth = CredAuthenticator(memory)
    assert result_of(auth(session(), Credentials("LOGIN", "alice", password="s3cret"))) == b"alice"


@pytest.mark.parametrize("creds", [
    plain("alice", "wrong"),
    plain("nobody", "s3cret"),
    cram("tim", "wrong"),
    cram("nobody", "tanstaaftanstaaf"),
])
def test_memory_checker_bad(memory, creds):
    """Wrong password or unknown user is 535 5.7.8."""
    assert_535(result_of(CredAuthenticator(memory).on_auth(session(), creds)))


def test_memory_checker_cram_md5(memory):
    """CRAM-MD5 works against a plaintext checker."""
    result = CredAuthenticator(memory).on_auth(session(), cram("tim", "tanstaaftanstaaf"))
    assert result_of(result) == b"tim"


def test_authzid_same_as_user(memory):
    """An authzid equal to the username is harmless."""
    result = CredAuthenticator(memory).on_auth(session(), plain("alice", "s3cret", "alice"))
    assert result_of(result) == b"alice"


def test_authzid_other_user(memory):
    """Acting as another identity can't be authorized through twisted.cred: 535."""
    result = CredAuthenticator(memory).on_auth(session(), plain("alice", "s3cret", "root"))
    assert_535(result_of(result))


def test_xoauth2_unsupported(memory):
    """A checker that doesn't declare IOAuth2Token refuses XOAUTH2 with 535."""
    creds = Credentials("XOAUTH2", "alice", access_token="s3cret")
    assert_535(result_of(CredAuthenticator(memory).on_auth(session(), creds)))


class TokenChecker:
    """A checker that accepts one bearer token."""

    credentialInterfaces = (IOAuth2Token,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        """Accept token "good" for any user."""
        if credentials.access_token == "good":
            return succeed(credentials.username)
        return fail(error.UnauthorizedLogin())


def test_xoauth2_token_checker():
    """A checker declaring IOAuth2Token gets XOAUTH2 logins."""
    auth = CredAuthenticator(TokenChecker())
    assert auth.mechanisms == ("XOAUTH2",)
    ok = Credentials("XOAUTH2", "a@x", access_token="good")
    assert result_of(auth.on_auth(session(), ok)) == b"a@x"
    bad = Credentials("XOAUTH2", "a@x", access_token="bad")
    assert_535(result_of(auth.on_auth(session(), bad)))
    assert_535(result_of(auth.on_auth(session(), plain("a@x", "good"))))


class BareChecker:
    """A checker without credentialInterfaces that trusts any password "ok"."""

    def requestAvatarId(self, credentials: Any) -> bytes:
        """Synchronous result, as some user checkers return."""
        if credentials.checkPassword(b"ok"):
            return credentials.username
        raise error.UnauthorizedLogin()


def test_checker_without_interfaces():
    """A checker with no credentialInterfaces is taken as username/password only."""
    auth = CredAuthenticator(BareChecker())
    assert auth.mechanisms == ("PLAIN", "LOGIN")
    assert result_of(auth.on_auth(session(), plain("bob", "ok"))) == b"bob"
    assert_535(result_of(auth.on_auth(session(), plain("bob", "no"))))
    assert_535(result_of(auth.on_auth(session(), cram("bob", "ok"))))


class BrokenChecker:
    """A checker whose backend is down."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        """Fail with a non-cred error mentioning nothing secret."""
        return fail(ConnectionRefusedError("ldap down"))


def test_backend_failure_is_454():
    """Unexpected checker errors become 454 4.7.0 and are logged without credentials."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        value = result_of(CredAuthenticator(BrokenChecker()).on_auth(
            session(), plain("alice", "hunter2")))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert isinstance(value, SMTPError)
    assert (value.code, value.enhanced) == (454, "4.7.0")
    logged = [e for e in events if e.get("log_failure") is not None]
    assert logged and logged[0]["method"] == "PLAIN"
    assert all("hunter2" not in repr(e) for e in events)


class RejectingChecker:
    """A checker that raises its own SMTPError."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        """Refuse with a custom reply."""
        return fail(SMTPError(534, "Use a stronger mechanism", "5.7.9"))


def test_checker_smtp_error_passes_through():
    """An SMTPError from the backend reaches the protocol unchanged."""
    value = result_of(CredAuthenticator(RejectingChecker()).on_auth(session(), plain("a", "b")))
    assert (value.code, value.enhanced) == (534, "5.7.9")


def test_memory_mechanisms(memory):
    """A plaintext checker supports PLAIN, LOGIN and CRAM-MD5, not XOAUTH2."""
    assert CredAuthenticator(memory).mechanisms == ("PLAIN", "LOGIN", "CRAM-MD5")


# FilePasswordDB


@pytest.fixture
def passwd(tmp_path) -> str:
    """A password file with two users."""
    path = tmp_path / "passwd"
    path.write_bytes(b"alice:s3cret\ntim:tanstaaftanstaaf\n")
    return str(path)


def test_file_db_plain(passwd):
    """PLAIN against FilePasswordDB."""
    auth = CredAuthenticator(FilePasswordDB(passwd))
    assert result_of(auth.on_auth(session(), plain("alice", "s3cret"))) == b"alice"
    assert_535(result_of(auth.on_auth(session(), plain("alice", "nope"))))
    assert_535(result_of(auth.on_auth(session(), plain("eve", "s3cret"))))


def test_file_db_cram_md5(passwd):
    """CRAM-MD5 against a plaintext FilePasswordDB."""
    auth = CredAuthenticator(FilePasswordDB(passwd))
    assert result_of(auth.on_auth(session(), cram("tim", "tanstaaftanstaaf"))) == b"tim"
    assert_535(result_of(auth.on_auth(session(), cram("tim", "tanstaaf"))))


def test_file_db_hashed(tmp_path):
    """With hashed passwords PLAIN works and CRAM-MD5 is refused (and not offered)."""
    path = tmp_path / "passwd"
    path.write_bytes(b"alice:" + hashlib.sha256(b"s3cret").hexdigest().encode() + b"\n")

    def hash(username: bytes, password: bytes, stored: bytes) -> bytes:
        return hashlib.sha256(password).hexdigest().encode()

    auth = CredAuthenticator(FilePasswordDB(str(path), hash=hash))
    assert auth.mechanisms == ("PLAIN", "LOGIN")
    assert result_of(auth.on_auth(session(), plain("alice", "s3cret"))) == b"alice"
    assert_535(result_of(auth.on_auth(session(), plain("alice", "other"))))
    assert_535(result_of(auth.on_auth(session(), cram("alice", "s3cret"))))


def test_file_db_missing_file(tmp_path):
    """An unreadable password file is a 535 (FilePasswordDB raises UnauthorizedLogin)."""
    auth = CredAuthenticator(FilePasswordDB(str(tmp_path / "absent")))
    assert_535(result_of(auth.on_auth(session(), plain("alice", "s3cret"))))


# Portal


class IMailUser(Interface):
    """The avatar interface our test realm serves."""


@implementer(IRealm)
class Realm:
    """Returns a dict avatar and records minds and logouts."""

    def __init__(self) -> None:
        self.minds: list[Any] = []
        self.logged_out: list[bytes] = []

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> Any:
        """Serve IMailUser only."""
        self.minds.append(mind)
        if IMailUser not in interfaces:
            raise NotImplementedError("no supported interface")
        return IMailUser, {"user": avatarId}, lambda: self.logged_out.append(avatarId)


def test_portal_login(memory):
    """A portal login returns the avatar; the session is the mind; logout is kept."""
    realm = Realm()
    auth = CredAuthenticator(Portal(realm, [memory]), IMailUser)
    s = session()
    assert result_of(auth.on_auth(s, plain("alice", "s3cret"))) == {"user": b"alice"}
    assert realm.minds == [s]
    assert realm.logged_out == []
    auth.on_close(s)
    assert realm.logged_out == [b"alice"]
    auth.logout(s)  # idempotent
    assert realm.logged_out == [b"alice"]


def test_portal_relogin_logs_out_previous(memory):
    """A second successful login on a session logs the first avatar out."""
    realm = Realm()
    auth = CredAuthenticator(Portal(realm, [memory]), IMailUser)
    s = session()
    result_of(auth.on_auth(s, plain("alice", "s3cret")))
    result_of(auth.on_auth(s, cram("tim", "tanstaaftanstaaf")))
    assert realm.logged_out == [b"alice"]


def test_portal_custom_mind(memory):
    """An explicit mind is passed instead of the session."""
    realm = Realm()
    auth = CredAuthenticator(Portal(realm, [memory]), IMailUser, mind=None)
    result_of(auth.on_auth(session(), plain("alice", "s3cret")))
    assert realm.minds == [None]


def test_portal_bad_password(memory):
    """Bad credentials through a portal are 535, and nothing is kept to log out."""
    realm = Realm()
    auth = CredAuthenticator(Portal(realm, [memory]), IMailUser)
    s = session()
    assert_535(result_of(auth.on_auth(s, plain("alice", "x"))))
    auth.logout(s)
    assert realm.minds == [] and realm.logged_out == []


def test_portal_unhandled_credentials(memory):
    """XOAUTH2 through a portal without a token checker is 535 (UnhandledCredentials)."""
    auth = CredAuthenticator(Portal(Realm(), [memory]), IMailUser)
    assert auth.mechanisms == ("PLAIN", "LOGIN", "CRAM-MD5")
    creds = Credentials("XOAUTH2", "alice", access_token="t")
    assert_535(result_of(auth.on_auth(session(), creds)))


def test_portal_realm_error_is_454(memory):
    """A realm that can't serve the interface is a backend failure: 454 4.7.0."""
    auth = CredAuthenticator(Portal(Realm(), [memory]))  # default interface: Interface
    value = result_of(auth.on_auth(session(), plain("alice", "s3cret")))
    assert (value.code, value.enhanced) == (454, "4.7.0")


def test_hooks_class_attribute(memory):
    """Used as a class attribute it works as a bound-looking on_auth hook."""

    class Hooks:
        on_auth = CredAuthenticator(memory)

    assert result_of(Hooks().on_auth(session(), plain("alice", "s3cret"))) == b"alice"
