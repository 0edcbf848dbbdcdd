# -*- test-case-name: tests.test_sasl -*-
"""
Sans-IO SASL exchanges for the SMTP AUTH command (RFC 4954).

Each mechanism (PLAIN, RFC 4616; LOGIN; CRAM-MD5, RFC 2195; XOAUTH2, Google's
profile of RFC 7628) is a small state object that turns client lines into
either a L{Challenge} to send after C{334} or the final L{Credentials} to hand
to the auth hook. Nothing here touches a transport, a clock the caller can't
replace, or a logger, so the protocol stays in charge of I/O, policy (TLS
required?) and replies, and every branch can be unit-tested byte for byte.

Failures are L{SASLError}s, which are L{SMTPError}s carrying the reply RFC 4954
prescribes, so the protocol can answer them like any hook rejection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Union

from txsmtpsrv._errors import SMTPError

__all__ = [
    "MECHANISMS",
    "PLAINTEXT_MECHANISMS",
    "Challenge",
    "Credentials",
    "Exchange",
    "SASLError",
    "UnknownMechanism",
    "SASLCancelled",
    "SASLMalformed",
    "SASLBadBase64",
    "SASLAuthFailed",
    "OAuthError",
    "start_mechanism",
    "xoauth2_error_challenge",
    "constant_time_equals",
]

#: Mechanisms this module implements, in the order a server would advertise them.
MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")

#: Mechanisms that put a reusable secret on the wire; offer them only over TLS
#: (otherwise answer C{538 5.7.11}) unless insecure auth is explicitly allowed.
PLAINTEXT_MECHANISMS: frozenset[str] = frozenset({"PLAIN", "LOGIN", "XOAUTH2"})


# --------------------------------------------------------------------------
# Errors: each carries the reply RFC 4954 section 6 assigns to it.


class SASLError(SMTPError):
    """
    An AUTH exchange ended without credentials; C{code}, C{text} and
    C{enhanced} are the reply to send. The exchange is over once raised.
    """

    default: ClassVar[tuple[int, str, str]] = (501, "Authentication failed", "5.7.0")

    def __init__(self, text: str | None = None) -> None:
        code, default_text, enhanced = self.default
        super().__init__(code, text or default_text, enhanced)


class UnknownMechanism(SASLError):
    """The client asked for a mechanism we don't implement (or don't offer)."""

    default = (504, "Unrecognized authentication type", "5.5.4")


class SASLCancelled(SASLError):
    """The client answered a C{334} with C{*} (RFC 4954 section 4)."""

    default = (501, "Authentication cancelled", "5.7.0")


class SASLMalformed(SASLError):
    """The client's data decoded but is not valid for the mechanism."""

    default = (501, "Malformed authentication data", "5.5.4")


class SASLBadBase64(SASLMalformed):
    """The client's line is not valid base64 (RFC 4954: 501 5.5.2)."""

    default = (501, "Cannot decode response", "5.5.2")


class SASLAuthFailed(SASLError):
    """
    Final answer after an XOAUTH2 error challenge: authentication failed, and
    the client has acknowledged the error details.
    """

    default = (535, "Authentication credentials invalid", "5.7.8")


#: Longest JSON error an XOAUTH2 error challenge may carry: its base64 form
#: after C{"334 "} must fit a 512-octet reply line (RFC 5321 4.5.3.1.5).
MAX_OAUTH_ERROR = (512 - len("334 \r\n")) // 4 * 3


class OAuthError(SMTPError):
    """
    Raise from C{on_auth} to refuse an XOAUTH2 token with your own error
    challenge (RFC 7628 section 3.2.2): the server sends C{error} as JSON,
    base64, in a C{334}; once the client acknowledges it, the reply is this
    error's C{535}. For example, to tell a client its token lacks a scope::

        raise OAuthError({"status": "insufficient_scope", "schemes": "bearer",
                          "scope": "https://mail.example/smtp"})

    C{error=None} sends the default (C{{"status":"401","schemes":"Bearer"}},
    as Google's XOAUTH2 does, and as any other refusal of an XOAUTH2 token
    does). For other mechanisms only the C{535} is sent.

    @raise ValueError: at construction, when C{error} is not a JSON object
        or its JSON is longer than L{MAX_OAUTH_ERROR} octets (the C{334}
        line would exceed 512 octets).
    """

    def __init__(self, error: Mapping[str, Any] | None = None,
                 text: str = "Authentication credentials invalid", enhanced: str = "5.7.8") -> None:
        super().__init__(535, text, enhanced)
        self.challenge: bytes | None = None
        if error is not None:
            if not isinstance(error, Mapping) or not all(isinstance(k, str) for k in error):
                raise ValueError("OAuthError: the error must be a JSON object (a mapping with str keys)")
            try:
                data = json.dumps(dict(error), separators=(",", ":")).encode("ascii")
            except (TypeError, ValueError) as e:
                raise ValueError(f"OAuthError: the error is not JSON-serialisable: {e}") from None
            if len(data) > MAX_OAUTH_ERROR:
                raise ValueError(f"OAuthError: the error's JSON is {len(data)} octets; at most "
                                 f"{MAX_OAUTH_ERROR} fit a 334 reply line")
            self.challenge = data


# --------------------------------------------------------------------------
# Values


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """
    Compare two secrets without leaking, through timing, how much of them
    matched; C{str} is compared as its UTF-8 encoding.
    """
    if isinstance(a, str):
        a = a.encode("utf-8")
    if isinstance(b, str):
        b = b.encode("utf-8")
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class Challenge:
    """
    Server data to send in a C{334} continuation. C{data} is raw; the wire
    form is base64 (an empty challenge is C{"334 "}).
    """

    data: bytes = b""

    @property
    def encoded(self) -> bytes:
        """The base64 text that follows C{"334 "}."""
        return base64.b64encode(self.data)

    def reply_line(self) -> bytes:
        """
        The full continuation line. Never prefix an enhanced status code
        here: the text is base64 data, not prose (RFC 4954 section 4).
        """
        return b"334 " + self.encoded + b"\r\n"


@dataclass(frozen=True)
class Credentials:
    """
    What a client proved, handed to C{on_auth(session, credentials)}.

    Secrets (C{password}, C{access_token}, C{digest}) are excluded from
    C{repr} so that logging a C{Credentials} never leaks them.

    @ivar method: C{"PLAIN"}, C{"LOGIN"}, C{"CRAM-MD5"} or C{"XOAUTH2"}.
    @ivar username: the authentication identity (PLAIN authcid).
    @ivar password: the cleartext password (PLAIN, LOGIN), else C{None}.
    @ivar authzid: the PLAIN authorization identity, C{None} when empty; the
        hook decides whether C{username} may act as it.
    @ivar access_token: the XOAUTH2 bearer token, else C{None}.
    @ivar challenge: the CRAM-MD5 challenge we sent, else C{None}.
    @ivar digest: the CRAM-MD5 client digest (lower-case hex), else C{None};
        check it with L{validate_password}.
    """

    method: str
    username: str
    password: str | None = field(default=None, repr=False)
    authzid: str | None = None
    access_token: str | None = field(default=None, repr=False)
    challenge: str | None = None
    digest: str | None = field(default=None, repr=False)

    def validate_password(self, password: str | bytes) -> bool:
        """
        Whether C{password} is the user's password, in constant time.

        For CRAM-MD5 this is the only way to check: the client proved
        knowledge of the password with HMAC-MD5 over our challenge. For
        PLAIN and LOGIN it compares with the cleartext; XOAUTH2 has no
        password, so it is always C{False}.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        if self.method == "CRAM-MD5":
            assert self.challenge is not None and self.digest is not None
            expected = hmac.new(password, self.challenge.encode("utf-8"), hashlib.md5).hexdigest()
            return hmac.compare_digest(expected.encode("ascii"), self.digest.encode("ascii"))
        if self.password is None:
            return False
        return hmac.compare_digest(password, self.password.encode("utf-8"))


Result = Union[Challenge, Credentials]


def xoauth2_error_challenge(status: str = "401", schemes: str = "Bearer",
                            scope: str | None = None) -> bytes:
    """
    The JSON error a server sends in a C{334} when an XOAUTH2 token is
    refused (Google's XOAUTH2 / RFC 7628 section 3.2.2), so the client can
    tell an expired token (refresh and retry) from a bad password. Raw bytes:
    wrap it in a L{Challenge} (or pass it to L{XOAuth2Exchange.reject}).
    """
    body: dict[str, str] = {"status": status, "schemes": schemes}
    if scope is not None:
        body["scope"] = scope
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------
# Decoding helpers


def _decode_line(line: bytes) -> bytes:
    """
    Base64-decode one client response. C{"="} is the RFC 4954 spelling of an
    empty initial response; we accept it on continuation lines too, where
    some clients send it, since it can't mean anything else.
    """
    line = line.strip()
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLBadBase64() from None


def _utf8(data: bytes, what: str) -> str:
    """Decode SASL text, which RFC 4616 and RFC 7628 require to be UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLMalformed(f"{what} is not valid UTF-8") from None


def _check_field(value: str, what: str) -> str:
    """Refuse empty identities/secrets and embedded NULs (ambiguous for backends)."""
    if not value:
        raise SASLMalformed(f"Empty {what}")
    if "\x00" in value:
        raise SASLMalformed(f"Invalid {what}")
    return value


# --------------------------------------------------------------------------
# Exchanges


class Exchange:
    """
    One AUTH exchange. Call C{step(None)} first (it consumes the initial
    response, if any), then C{step(line)} with each client line sent after a
    C{334}, until it returns L{Credentials} or raises a L{SASLError}.
    """

    mechanism: ClassVar[str]
    #: Whether L{reject} can answer a failed login with an error challenge.
    supports_error_challenge: ClassVar[bool] = False

    def __init__(self, initial_response: bytes | None) -> None:
        # b"" means the AUTH command had no argument (a trailing space).
        self._initial = initial_response if initial_response else None
        self._started = False
        self._done = False
        self._error_sent = False
        self._produced_credentials = False

    @property
    def done(self) -> bool:
        """Whether the exchange has ended (credentials returned or error raised)."""
        return self._done

    @property
    def awaiting_error_ack(self) -> bool:
        """
        Whether we sent an error challenge and the next client line only
        acknowledges it; that line must be answered with C{535}.
        """
        return self._error_sent

    def step(self, client_line: bytes | None) -> Result:
        """
        Advance the exchange: C{None} to start it, else a client line (CR/LF
        stripped). Returns the next L{Challenge} or the final L{Credentials}.
        """
        if self._done and not self.awaiting_error_ack:
            raise RuntimeError("SASL exchange already finished")
        if (client_line is None) == self._started:
            raise RuntimeError("step(None) must be called exactly once, first")
        try:
            if client_line is None:
                self._started = True
                initial = None if self._initial is None else _decode_line(self._initial)
                result = self._start(initial)
            else:
                if client_line.strip() == b"*":
                    raise SASLCancelled()
                result = self._continue(client_line)
        except SASLError:
            self._done = True
            self._error_sent = self._produced_credentials = False
            raise
        if isinstance(result, Credentials):
            self._done = self._produced_credentials = True
        return result

    def reject(self, challenge: bytes | None = None) -> Challenge:
        """Answer a failed login with an error challenge (XOAUTH2 only)."""
        raise NotImplementedError(f"{self.mechanism} has no error challenge")

    def _continue(self, line: bytes) -> Result:
        """Handle a continuation line; most mechanisms just decode base64."""
        return self._respond(_decode_line(line))

    def _start(self, initial: bytes | None) -> Result:
        """First move: the decoded initial response, or C{None} if none was sent."""
        raise NotImplementedError  # pragma: no cover

    def _respond(self, data: bytes) -> Result:
        """Handle one decoded client response."""
        raise NotImplementedError  # pragma: no cover


class PlainExchange(Exchange):
    """RFC 4616 PLAIN: one message C{[authzid] NUL authcid NUL passwd}."""

    mechanism = "PLAIN"

    def _start(self, initial: bytes | None) -> Result:
        if initial is None:
            return Challenge(b"")
        return self._respond(initial)

    def _respond(self, data: bytes) -> Result:
        parts = data.split(b"\x00")
        if len(parts) != 3:
            raise SASLMalformed("PLAIN needs exactly two NUL separators")
        authzid, authcid, passwd = (_utf8(p, "PLAIN data") for p in parts)
        return Credentials(
            method="PLAIN",
            username=_check_field(authcid, "username"),
            password=_check_field(passwd, "password"),
            authzid=authzid or None,
        )


class LoginExchange(Exchange):
    """
    The non-standard but ubiquitous LOGIN: username and password each sent
    after a prompt; an initial response, when given, is the username.
    """

    mechanism = "LOGIN"
    USERNAME_PROMPT = b"Username:"
    PASSWORD_PROMPT = b"Password:"

    def __init__(self, initial_response: bytes | None) -> None:
        super().__init__(initial_response)
        self._username: str | None = None

    def _start(self, initial: bytes | None) -> Result:
        if initial is None:
            return Challenge(self.USERNAME_PROMPT)
        return self._respond(initial)

    def _respond(self, data: bytes) -> Result:
        if self._username is None:
            self._username = _check_field(_utf8(data, "Username"), "username")
            return Challenge(self.PASSWORD_PROMPT)
        password = _check_field(_utf8(data, "Password"), "password")
        return Credentials(method="LOGIN", username=self._username, password=password)


class CramMD5Exchange(Exchange):
    """
    RFC 2195 CRAM-MD5: we send a unique challenge, the client answers
    C{username SP hex(HMAC-MD5(password, challenge))}. The password never
    crosses the wire, but the server must know it in cleartext to check.
    """

    mechanism = "CRAM-MD5"

    def __init__(self, initial_response: bytes | None, *, hostname: str,
                 challenge: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(initial_response)
        if challenge is None:
            # RFC 2195: random digits, a timestamp and our host name in msg-id
            # form. The nonce must be unpredictable or replays become possible.
            challenge = f"<{secrets.randbelow(10**20)}.{int(clock())}@{hostname}>"
        self.challenge = challenge

    def _start(self, initial: bytes | None) -> Result:
        if initial is not None:
            # Server-first mechanism: an initial response can't be valid.
            raise SASLMalformed("CRAM-MD5 does not take an initial response")
        return Challenge(self.challenge.encode("utf-8"))

    def _respond(self, data: bytes) -> Result:
        text = _utf8(data, "CRAM-MD5 response")
        username, sep, digest = text.rpartition(" ")
        if not sep:
            raise SASLMalformed("CRAM-MD5 response needs a username and a digest")
        digest = digest.lower()
        if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            raise SASLMalformed("CRAM-MD5 digest must be 32 hex digits")
        return Credentials(method="CRAM-MD5", username=_check_field(username, "username"),
                           challenge=self.challenge, digest=digest)


class XOAuth2Exchange(Exchange):
    """
    Google's XOAUTH2: C{user=NAME^Aauth=Bearer TOKEN^A^A}. When the hook
    refuses the token the protocol may call L{reject} to send a JSON error
    challenge; the client's next line is then answered with C{535}.
    """

    mechanism = "XOAUTH2"
    supports_error_challenge = True

    def reject(self, challenge: bytes | None = None) -> Challenge:
        """
        Turn a refused login into the error-challenge flow: returns the
        challenge to send (default L{xoauth2_error_challenge}(); the protocol
        passes an L{OAuthError}'s C{challenge} when the hook raised one), after which
        the next L{step} raises L{SASLAuthFailed} (or L{SASLCancelled} on C{*}).
        """
        if not self._produced_credentials or self._error_sent:
            raise RuntimeError("reject() only after the exchange returned Credentials")
        self._error_sent = True
        return Challenge(xoauth2_error_challenge() if challenge is None else challenge)

    def _continue(self, line: bytes) -> Result:
        if self._error_sent:
            # The client's line (empty, or ^A) carries nothing; don't decode it.
            raise SASLAuthFailed()
        return super()._continue(line)

    def _start(self, initial: bytes | None) -> Result:
        if initial is None:
            return Challenge(b"")
        return self._respond(initial)

    def _respond(self, data: bytes) -> Result:
        text = _utf8(data, "XOAUTH2 data")
        fields: dict[str, str] = {}
        for part in text.split("\x01"):
            if not part:
                continue  # the ^A^A terminator (tolerated when missing)
            key, sep, value = part.partition("=")
            key = key.lower()
            if not sep or key in fields:
                raise SASLMalformed("Invalid XOAUTH2 data")
            fields[key] = value
        user = fields.get("user", "")
        scheme, _, token = fields.get("auth", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SASLMalformed("XOAUTH2 needs auth=Bearer <token>")
        return Credentials(method="XOAUTH2", username=_check_field(user, "username"),
                           access_token=token.strip())


_EXCHANGES: dict[str, Callable[..., Exchange]] = {
    "PLAIN": lambda ir, hostname: PlainExchange(ir),
    "LOGIN": lambda ir, hostname: LoginExchange(ir),
    "CRAM-MD5": lambda ir, hostname: CramMD5Exchange(ir, hostname=hostname),
    "XOAUTH2": lambda ir, hostname: XOAuth2Exchange(ir),
}


def start_mechanism(name: str, initial_response: bytes | None, *, hostname: str) -> Exchange:
    """
    Begin an AUTH exchange for mechanism C{name} (case-insensitive: clients
    send C{auth login}). C{initial_response} is the optional second AUTH
    argument, still base64 (C{b"="} for empty); C{hostname} goes into the
    CRAM-MD5 challenge. Call C{step(None)} on the result next.

    @raise UnknownMechanism: for any other name (C{504 5.5.4}).
    """
    factory = _EXCHANGES.get(name.upper())
    if factory is None:
        raise UnknownMechanism()
    return factory(initial_response, hostname)
