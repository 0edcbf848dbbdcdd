# -*- test-case-name: tests.test_tls_tickets -*-
"""
TLS session tickets (TLS 1.3 and 1.2) with rotated keys shared by processes.

Twisted's C{CertificateOptions} turns tickets off; with them on but left to
OpenSSL, every process would encrypt with its own random key, never
rotated, so a client resumes only if it happens to reach the same worker
and the key protecting its session lives as long as the process.

Here every key is derived from one secret and the time: the key of period
C{n} (C{n = floor(unix time / lifetime)}) is HKDF-SHA256(secret, period).
Whoever knows the secret computes the same keys at the same time, so the
C{--workers} processes of one server (and several servers given the same
secret file) decrypt each other's tickets without talking to each other,
and the keys rotate by themselves:

  - new tickets are encrypted with the current period's key;
  - a ticket of the previous period still decrypts (and the client gets a
    fresh ticket), one older does not: no key is usable for more than two
    periods, which bounds what a stolen key exposes;
  - tickets tell clients to keep them for one period (the session timeout).

The callback runs inside OpenSSL (L{txsmtpsrv._tlsnative} finds the C
functions it needs); it only derives keys (cached) and hands them over.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any, Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from OpenSSL import SSL
from twisted.logger import Logger

from . import _tlsnative
from ._tlsload import TLSConfigError

__all__ = ["TICKETS_PER_HANDSHAKE", "TicketKeys", "disable", "install", "keys_for", "supported"]

log = Logger()

#: Shortest and longest key period accepted (seconds).
MIN_LIFETIME = 1.0
MAX_LIFETIME = 7 * 86400.0
#: Secrets shorter than this are refused (they would make guessable keys).
MIN_SECRET = 32

#: TLS 1.3 tickets sent after a full handshake (OpenSSL's default is 2; a
#: resumption with a current ticket gets none). One is what an SMTP client
#: uses: it keeps one session per destination and connects to it one
#: connection at a time. The second ticket only served a client opening two
#: connections at once, each resuming with a ticket of its own; such a client
#: now offers the one ticket twice (accepted: tickets are stateless here) or
#: does a full handshake for the second (see bench/README.md for what it saves).
TICKETS_PER_HANDSHAKE = 1

_NAME, _HMAC, _AES = 16, 32, 32
_INFO = b"txsmtpsrv TLS session ticket key v1 "


class _Key:
    """One period's key material and the C{OSSL_PARAM}s that hand its HMAC key to OpenSSL."""

    __slots__ = ("name", "aes", "params", "_keep")

    def __init__(self, material: bytes, native: _tlsnative.Native) -> None:
        ffi = native.ffi
        self.name = material[:_NAME]
        self.aes = ffi.new("unsigned char[]", material[_NAME + _HMAC:])
        mac_key = ffi.new("unsigned char[]", material[_NAME:_NAME + _HMAC])
        strings = [ffi.new("char[]", b"key"), ffi.new("char[]", b"digest"), ffi.new("char[]", b"SHA256")]
        params = ffi.new("OSSL_PARAM[3]")
        params[0] = (strings[0], _tlsnative.OSSL_PARAM_OCTET_STRING, mac_key, _HMAC, 0)
        params[1] = (strings[1], _tlsnative.OSSL_PARAM_UTF8_STRING, strings[2], 6, 0)
        self.params = params  # params[2] stays zeroed: the end marker
        self._keep = (mac_key, strings)


class TicketKeys:
    """
    The ticket keys of one secret: current and previous period.

    @param secret: at least L{MIN_SECRET} bytes; C{None} makes a random one
        (keys then shared only by contexts using this object).
    @param lifetime: seconds per key period (and the tickets' lifetime).
    @param clock: returns the time in seconds (tests pass a fake one).
    """

    def __init__(self, secret: bytes | None, lifetime: float,
                 clock: Callable[[], float] = time.time) -> None:
        #: Whether the secret was made up here (not given).
        self.random = secret is None
        if secret is None:
            secret = os.urandom(MIN_SECRET)
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the session ticket secret must have at least {MIN_SECRET} bytes")
        if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            raise ValueError(f"the session ticket lifetime must be {MIN_LIFETIME:g} to {MAX_LIFETIME:g} seconds")
        self.lifetime = lifetime
        self._secret = secret
        self._clock = clock
        self._keys: dict[int, _Key] = {}
        self._native: _tlsnative.Native | None = None
        self._callback: Any = None
        #: The session ID context every context gets: sessions resume only
        #: between contexts with the same one, in every process.
        self.session_id_context = self._derive(b"session id context", 16).hex().encode("ascii")

    def session_id_context_for(self, policy: bytes) -> bytes:
        """
        The session ID context for contexts whose client-certificate policy
        is summed up by C{policy}: OpenSSL resumes a session only under the
        context it was made in, and skips the certificate request and its
        verification when it resumes, so a session made under a laxer policy
        (another server with this secret, or before a reload) must not resume.
        """
        if not policy:
            return self.session_id_context
        return self._derive(b"session id context " + hashlib.sha256(policy).digest(), 16).hex().encode("ascii")

    def same_secret(self, secret: bytes) -> bool:
        """Whether C{secret} is the one these keys come from."""
        return hmac.compare_digest(secret, self._secret)

    def _derive(self, what: bytes, length: int) -> bytes:
        return HKDF(hashes.SHA256(), length, salt=None, info=_INFO + what).derive(self._secret)

    def _period(self) -> int:
        return int(self._clock() // self.lifetime)

    def _key(self, period: int, native: _tlsnative.Native) -> _Key:
        key = self._keys.get(period)
        if key is None:
            key = _Key(self._derive(b"period %d" % period, _NAME + _HMAC + _AES), native)
            # Only the current and the previous period are ever used.
            self._keys = {p: k for p, k in self._keys.items() if p >= period - 1}
            self._keys[period] = key
        return key

    def lookup(self, name: bytes, native: _tlsnative.Native) -> tuple[_Key, bool] | None:
        """The key a ticket named C{name} was made with, if still valid; and whether it is the current one."""
        now = self._period()
        for period in (now, now - 1):
            key = self._key(period, native)
            if key.name == name:
                return key, period == now
        return None

    def callback(self, native: _tlsnative.Native) -> Any:
        """The C{SSL_CTX_set_tlsext_ticket_key_evp_cb} callback for these keys (one, kept alive here)."""
        if self._callback is None:
            self._native = native
            ffi = native.ffi

            def ticket_key(ssl: Any, name: Any, iv: Any, cipher: Any, mac: Any, encrypt: int) -> int:
                if encrypt:
                    key = self._key(self._period(), native)
                    ffi.memmove(name, key.name, _NAME)
                    ffi.memmove(iv, os.urandom(16), 16)
                    renew = 1
                else:
                    found = self.lookup(bytes(ffi.buffer(name, _NAME)), native)
                    if found is None:
                        return 0  # unknown or expired key: full handshake, new ticket
                    key, current = found
                    renew = 1 if current else 2  # 2: decrypted, and send a ticket under the new key
                if native.cipher_init(cipher, native.aes_256_cbc, ffi.NULL, key.aes, iv, encrypt) != 1:
                    return -1
                if native.mac_set_params(mac, key.params) != 1:
                    return -1
                return renew

            self._callback = ffi.callback(
                "int(void *, unsigned char *, unsigned char *, void *, void *, int)", ticket_key,
                error=-1, onerror=_report)
        return self._callback


def _report(kind: Any, value: Any, traceback: Any) -> None:
    log.error("session ticket callback failed: {error!r}; the handshake fails", error=value)


_warned = False


def supported() -> bool:
    """Whether tickets can be keyed here; if not, say so once in the log."""
    global _warned
    native = _tlsnative.load()
    if native is None and not _warned:
        _warned = True
        log.warn("TLS session tickets are off: the OpenSSL functions to set their keys were not found "
                 "({error}); clients will not resume sessions", error=_tlsnative.error())
    return native is not None


def install(context: SSL.Context, keys: TicketKeys, policy: bytes = b"") -> bool:
    """
    Make C{context} issue and accept tickets under C{keys}, for sessions
    made under the client-certificate C{policy} only (see
    L{TicketKeys.session_id_context_for}).

    The context must come from C{CertificateOptions(enableSessionTickets=True)}.
    Returns C{False} (and the context keeps tickets off) when unsupported.
    """
    native = _tlsnative.load()
    if native is None:
        disable(context)
        return False
    if native.set_ticket_cb(native.context_pointer(context), keys.callback(native)) != 1:
        disable(context)
        log.warn("TLS session tickets are off: OpenSSL refused the ticket key callback")
        return False
    if native.set_num_tickets is not None:
        native.set_num_tickets(native.context_pointer(context), TICKETS_PER_HANDSHAKE)
    context.set_session_id(keys.session_id_context_for(policy))
    context.set_timeout(max(1, int(keys.lifetime)))
    return True


def disable(context: SSL.Context) -> None:
    """
    No tickets at all from C{context}. With C{OP_NO_TICKET} alone (what
    C{CertificateOptions} sets) OpenSSL still sends two TLS 1.3 tickets per
    handshake, stateful ones naming a session in a cache that is off: no
    client can resume with them, so making and sending them is waste.
    """
    context.set_options(SSL.OP_NO_TICKET)
    native = _tlsnative.load()
    if native is not None and native.set_num_tickets is not None:
        native.set_num_tickets(native.context_pointer(context), 0)


def _ticket_secret(config: Any) -> bytes | None:
    source = config.ticket_secret
    if source is None or isinstance(source, bytes):
        return source
    try:
        with open(os.fspath(source), "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read the ticket_secret file {os.fspath(source)}: {e.strerror or e}") from None


def keys_for(config: Any, previous: TicketKeys | None) -> TicketKeys | None:
    """The ticket keys for C{config}: C{previous} when they are the same (tickets stay valid over a reload)."""
    if not config.session_tickets:
        return None
    secret = _ticket_secret(config)
    if previous is not None and previous.lifetime == config.ticket_lifetime and (
            secret is None and previous.random or secret is not None and previous.same_secret(secret)):
        return previous
    if not supported():
        return None
    try:
        return TicketKeys(secret, config.ticket_lifetime)
    except ValueError as e:
        raise TLSConfigError(f"ticket_secret: {e}") from None
