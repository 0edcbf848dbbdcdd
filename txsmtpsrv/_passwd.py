# -*- test-case-name: tests.test_passwd -*-
"""
Password files for C{--auth file:}: parsed once into memory, checked from
memory.

The format is Twisted's C{FilePasswordDB}'s, which C{--auth file:} always
read: one C{user:password} per line (further C{:fields} ignored, trailing
white space dropped, the first line for a user wins); blank lines and lines
starting with C{#} are skipped. A password may instead be a hash in the
modular crypt formats passlib and Dovecot write:

  - C{$scrypt$ln=14,r=8,p=1$SALT$HASH} (standard library),
  - C{$pbkdf2-sha256$ROUNDS$SALT$HASH} and C{$pbkdf2-sha512$...} (standard
    library),
  - C{$2b$...} bcrypt (needs the C{bcrypt} package).

Hashes are slow on purpose: L{verify} must run in a thread, never in the
reactor (see L{_cred.FileCredentialsChecker}). A plaintext password that
happens to start with one of these prefixes would be read as a hash.

Pure: no Twisted import (see C{tests/test_layering.py}).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Dict, Iterable, Optional, Tuple

__all__ = ["PasswordTable", "hash_password", "is_hash", "verify", "SCHEMES"]

#: Hash prefixes we recognise.
SCHEMES = (b"$scrypt$", b"$pbkdf2-sha256$", b"$pbkdf2-sha512$", b"$2a$", b"$2b$", b"$2y$")
_UNSUPPORTED = (b"$argon2i$", b"$argon2d$", b"$argon2id$", b"$1$", b"$5$", b"$6$", b"$y$")
_MAX_SCRYPT_LN = 20
_MAX_PBKDF2_ROUNDS = 10_000_000


def _b64decode(text: bytes) -> bytes:
    """passlib's base64: standard or "adapted" (C{.} for C{+}), padding optional."""
    text = text.replace(b".", b"+")
    return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)


def _b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def is_hash(stored: bytes) -> bool:
    """Whether C{stored} is a hash (checking it blocks) rather than a plaintext password."""
    return stored.startswith(b"$") and stored.startswith(SCHEMES)


def _parse(stored: bytes) -> Tuple[str, Tuple[object, ...]]:
    """Split a hash into its scheme and parameters; ValueError if malformed."""
    if stored.startswith((b"$2a$", b"$2b$", b"$2y$")):
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            raise ValueError("a bcrypt hash needs the bcrypt package (pip install bcrypt)") from None
        if len(stored) != 60:
            raise ValueError("malformed bcrypt hash")
        return "bcrypt", ()
    parts = stored.split(b"$")
    try:
        if stored.startswith(b"$scrypt$"):
            _, _, params, salt, digest = parts
            fields = dict(p.split(b"=", 1) for p in params.split(b","))
            ln, r, p = int(fields[b"ln"]), int(fields[b"r"]), int(fields[b"p"])
            if not (1 <= ln <= _MAX_SCRYPT_LN and 1 <= r <= 64 and 1 <= p <= 16):
                raise ValueError("scrypt parameters out of range")
            return "scrypt", (ln, r, p, _b64decode(salt), _b64decode(digest))
        if stored.startswith((b"$pbkdf2-sha256$", b"$pbkdf2-sha512$")):
            _, name, rounds, salt, digest = parts
            n = int(rounds)
            if not 1 <= n <= _MAX_PBKDF2_ROUNDS:
                raise ValueError("pbkdf2 rounds out of range")
            return "pbkdf2", (name.decode()[7:], n, _b64decode(salt), _b64decode(digest))
    except (ValueError, KeyError, binascii.Error) as e:
        raise ValueError(f"malformed {stored.split(b'$')[1].decode('ascii', 'replace')} hash: {e}") from None
    raise ValueError("unknown hash scheme")


def verify(stored: bytes, password: bytes) -> bool:
    """
    Whether C{password} matches C{stored} (a hash or a plaintext password),
    in constant time for a given C{stored}. Blocks for as long as the hash
    takes: call it in a thread for hashes.
    """
    if not is_hash(stored):
        return hmac.compare_digest(stored, password)
    scheme, params = _parse(stored)
    if scheme == "bcrypt":
        import bcrypt
        return bool(bcrypt.checkpw(password, stored))
    if scheme == "scrypt":
        ln, r, p, salt, digest = params
        assert isinstance(ln, int) and isinstance(r, int) and isinstance(p, int)
        assert isinstance(salt, bytes) and isinstance(digest, bytes)
        n = 1 << ln
        computed = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(digest),
                                  maxmem=128 * r * (n + p + 2) + 1024 * 1024)
        return hmac.compare_digest(computed, digest)
    name, rounds, salt, digest = params
    assert isinstance(name, str) and isinstance(rounds, int)
    assert isinstance(salt, bytes) and isinstance(digest, bytes)
    computed = hashlib.pbkdf2_hmac(name, password, salt, rounds, len(digest))
    return hmac.compare_digest(computed, digest)


def hash_password(password: bytes, scheme: str = "scrypt", *, ln: int = 14, rounds: int = 600_000) -> bytes:
    """
    A hash of C{password} for a password file: C{scrypt} (N = 2**C{ln},
    r=8, p=1) or C{pbkdf2-sha256} / C{pbkdf2-sha512} with C{rounds}.
    """
    salt = os.urandom(16)
    if scheme == "scrypt":
        n = 1 << ln
        digest = hashlib.scrypt(password, salt=salt, n=n, r=8, p=1, dklen=32, maxmem=128 * 8 * (n + 3) + 2 ** 20)
        return b"$scrypt$ln=%d,r=8,p=1$%s$%s" % (ln, _b64encode(salt), _b64encode(digest))
    if scheme in ("pbkdf2-sha256", "pbkdf2-sha512"):
        digest = hashlib.pbkdf2_hmac(scheme[7:], password, salt, rounds)
        return b"$%s$%d$%s$%s" % (scheme.encode(), rounds, _b64encode(salt).replace(b"+", b"."),
                                  _b64encode(digest).replace(b"+", b"."))
    raise ValueError(f"unknown scheme {scheme!r}; use scrypt, pbkdf2-sha256 or pbkdf2-sha512")


class PasswordTable:
    """
    A password file in memory: user name (C{bytes}, case-sensitive as
    C{FilePasswordDB}) to what is stored for it.

    @ivar hashed: how many users have a hash rather than a plaintext password.
    @ivar dummy: what an unknown user is checked against, so a reply takes
        as long for a user who does not exist (the first hash in the file,
        else a plaintext placeholder).
    """

    __slots__ = ("entries", "hashed", "dummy")

    def __init__(self, entries: Dict[bytes, bytes]) -> None:
        self.entries = entries
        self.hashed = 0
        self.dummy: bytes = b"\0" * 16
        for stored in entries.values():
            if is_hash(stored):
                if not self.hashed:
                    self.dummy = stored
                self.hashed += 1

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, username: bytes) -> Optional[bytes]:
        """What is stored for C{username}, or C{None}."""
        return self.entries.get(username)

    @classmethod
    def parse(cls, lines: Iterable[bytes]) -> "PasswordTable":
        """
        Read a password file's lines. A malformed hash or one whose scheme
        is not supported is a C{ValueError} naming the line: better refused
        at start-up or reload than every login of that user failing.
        """
        entries: Dict[bytes, bytes] = {}
        for number, line in enumerate(lines, 1):
            line = line.rstrip()
            if not line or line.startswith(b"#"):
                continue
            parts = line.split(b":")
            if len(parts) < 2:
                continue  # as FilePasswordDB: not a user line
            user, stored = parts[0], parts[1]
            if stored.startswith(_UNSUPPORTED):
                raise ValueError(f"line {number}: unsupported hash scheme "
                                 f"{stored.split(b'$')[1].decode('ascii', 'replace')} (use scrypt, "
                                 f"pbkdf2-sha256/512 or bcrypt)")
            if is_hash(stored):
                try:
                    _parse(stored)
                except ValueError as e:
                    raise ValueError(f"line {number}: {e}") from None
            entries.setdefault(user, stored)
        return cls(entries)

    @classmethod
    def load(cls, path: str) -> "PasswordTable":
        """Read the file at C{path} (OSError or ValueError if it cannot be used)."""
        with open(path, "rb") as f:
            return cls.parse(f)
