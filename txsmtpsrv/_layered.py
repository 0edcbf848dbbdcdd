# -*- test-case-name: tests.test_tap_hooks,tests.test_tap_service -*-
"""
How C{twistd smtpsrv} composes its hooks: the user's C{--hooks} object,
the C{--auth} authenticator and the built-in delivery, in that order.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Sequence, Tuple

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

__all__ = ["LayeredHooks", "authenticator", "instantiate_hooks"]

log = Logger()


def instantiate_hooks(target: Any) -> Any:
    """A class becomes an instance (a fresh one per process); anything else is used as is."""
    return target() if inspect.isclass(target) else target


def _is_default_hook(method: Any, name: str) -> bool:
    """Whether C{method} is L{Hooks}' do-nothing version of C{name}."""
    from txsmtpsrv._hooks import Hooks

    base = getattr(Hooks, name, None)
    return base is not None and getattr(method, "__func__", None) is base


class LayeredHooks:
    """
    Hooks made of several hooks objects: each C{on_*} comes from the first
    layer that implements it (inheriting L{Hooks}' empty default does not
    count), except C{on_close}, which every layer gets, so an authenticator
    can log out while the user's hooks clean up too.
    """

    def __init__(self, *layers: Any) -> None:
        self.layers = tuple(layer for layer in layers if layer is not None)

    def _implementations(self, name: str) -> List[Callable[..., Any]]:
        found = []
        for layer in self.layers:
            method = getattr(layer, name, None)
            if method is not None and callable(method) and not _is_default_hook(method, name):
                found.append(method)
        return found

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)
        found = self._implementations(name)
        if not found:
            raise AttributeError(name)
        if name == "on_close" and len(found) > 1:
            return _call_all(found)
        return found[0]

    def __repr__(self) -> str:
        return f"<LayeredHooks {list(self.layers)!r}>"


def _call_all(methods: Sequence[Callable[..., Any]]) -> Callable[..., Deferred[None]]:
    def on_close(*args: Any) -> Deferred[None]:
        results = [maybeDeferred(method, *args) for method in methods]
        return DeferredList(results, consumeErrors=True).addCallback(_log_close_errors)

    return on_close


def _log_close_errors(results: List[Tuple[bool, Any]]) -> None:
    for ok, value in results:
        if not ok:
            log.failure("on_close hook failed", value)


@implementer(IRealm)
class _AvatarIdRealm:
    """A realm whose avatar is the authenticated id itself: it becomes C{session.user}."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Callable[[], None]]:
        return interfaces[0] if interfaces else Interface, avatarId, lambda: None


def authenticator(checkers: Sequence[ICredentialsChecker]) -> Any:
    """The on_auth hook for --auth: C{CredAuthenticator} over a portal of the checkers."""
    from txsmtpsrv._cred import CredAuthenticator

    return CredAuthenticator(Portal(_AvatarIdRealm(), list(checkers)))
