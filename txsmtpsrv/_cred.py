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
"""

from __future__ import annotations

from typing import Any

from twisted.cred import error
from twisted.cred.credentials import (
    ICredentials,
    IUsernameHashedPassword,
    IUsernamePassword,
    UsernamePassword,
)
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from txsmtpsrv._errors import SMTPError
from txsmtpsrv._sasl import MECHANISMS, Credentials, constant_time_equals

__all__ = [
    "CredAuthenticator",
    "IOAuth2Token",
    "OAuth2Token",
    "CramMD5Response",
    "ConstantTimeUsernamePassword",
    "to_cred_credentials",
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
