# -*- test-case-name: tests.test_hooks -*-
"""
The hooks a server calls, and how a user's hooks object is resolved.

A hooks object is any object with some of the C{on_*} methods; subclassing
L{Hooks} only documents them. Methods a user did not provide are recorded as
C{None} so that the protocol skips them without a call.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._data import MessageStream
from ._sasl import Credentials
from ._session import Address, Session

__all__ = ["Hooks", "HOOK_NAMES"]

HOOK_NAMES = ("on_connect", "on_helo", "on_secure", "on_auth", "on_mail_from", "on_rcpt_to",
              "on_data", "on_close")


class Hooks:
    """
    Base class for hooks. Override the phases you care about; each may return
    C{None} (accept with the default reply), a L{Reply} (accept with that
    text), a C{Deferred}, or be an C{async def}; raise L{SMTPError} to reject.
    """

    def on_connect(self, session: Session) -> Any:
        """
        A client connected; reject to refuse it (e.g. C{SMTPError(554, ...)}):
        after a 5xx but 521 the client can only QUIT, every other command
        gets C{503} (RFC 5321 3.1); a 421 or 521 (RFC 7504) closes at once.
        """

    def on_helo(self, session: Session, hostname: str) -> Any:
        """The client sent HELO, EHLO or LHLO with C{hostname}."""

    def on_secure(self, session: Session) -> Any:
        """
        TLS is up (STARTTLS or implicit TLS); C{session.tls} tells the
        version, cipher, SNI name and client certificate. Reject to drop.
        """

    def on_auth(self, session: Session, credentials: Credentials) -> Any:
        """
        The client authenticated with C{credentials}; check them (e.g.
        C{credentials.validate_password(pw)}, which also serves CRAM-MD5).
        Return the user object to keep as C{session.user} (C{True} keeps the
        user name; a 235 L{Reply} also chooses the text); C{None}, C{False}
        or an L{SMTPError} is a failure (535). Only offered when the hooks
        define it. For XOAUTH2, raise L{txsmtpsrv.OAuthError} to choose the
        JSON error challenge sent before the 535 (RFC 7628 3.2.2); any other
        refusal sends the default one.
        """

    def on_mail_from(self, session: Session, address: Address) -> Any:
        """The client proposes a sender; C{session.envelope} is still empty."""

    def on_rcpt_to(self, session: Session, address: Address) -> Any:
        """The client proposes a recipient."""

    def on_data(self, session: Session, stream: MessageStream) -> Any:
        """
        A message is arriving on C{stream}. The final reply goes out when
        both this hook has answered and the body has ended; a hook that
        returns without reading the stream has the rest discarded.
        """

    def on_close(self, session: Session) -> Any:
        """The connection closed; the result is not waited for."""


class ResolvedHooks:
    """The user's hook methods, or None where the default applies."""

    __slots__ = HOOK_NAMES
    on_connect: Optional[Callable[..., Any]]
    on_helo: Optional[Callable[..., Any]]
    on_secure: Optional[Callable[..., Any]]
    on_auth: Optional[Callable[..., Any]]
    on_mail_from: Optional[Callable[..., Any]]
    on_rcpt_to: Optional[Callable[..., Any]]
    on_data: Optional[Callable[..., Any]]
    on_close: Optional[Callable[..., Any]]

    def __init__(self, hooks: Optional[object]) -> None:
        for name in HOOK_NAMES:
            method: Optional[Callable[..., Any]] = getattr(hooks, name, None) if hooks is not None else None
            base = getattr(Hooks, name, None)
            if method is not None and base is not None and getattr(method, "__func__", None) is base:
                method = None  # not overridden: same as having none
            if method is not None and not callable(method):
                raise TypeError(f"hooks.{name} must be callable, not {method!r}")
            setattr(self, name, method)


