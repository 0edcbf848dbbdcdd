"""Tests for password files in memory: the format, hashes, and errors named by line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._passwd import PasswordTable, hash_password, is_hash, verify


def test_format_as_file_password_db():
    table = PasswordTable.parse([
        b"# a comment\n", b"\n", b"alice:secret\n", b"bob:pw:extra:fields\n", b"alice:second\n",
        b"no-colon-line\n", b"carol:trailing   \n", b"Dave:x\n",
    ])
    assert table.get(b"alice") == b"secret"  # the first line for a user wins
    assert table.get(b"bob") == b"pw"
    assert table.get(b"carol") == b"trailing"
    assert table.get(b"dave") is None  # case-sensitive, as FilePasswordDB
    assert len(table) == 4 and table.hashed == 0


@pytest.mark.parametrize("scheme", ["scrypt", "pbkdf2-sha256", "pbkdf2-sha512"])
def test_hashes_verify(scheme):
    stored = hash_password(b"s3cret", scheme, ln=4, rounds=1000)
    assert is_hash(stored)
    assert verify(stored, b"s3cret")
    assert not verify(stored, b"s3creT")
    assert not verify(stored, b"")
    table = PasswordTable.parse([b"u:" + stored])
    assert table.hashed == 1 and table.dummy == stored


def test_passlib_formats():
    """Hashes written by passlib (its documented example values) verify."""
    pbkdf2 = (b"$pbkdf2-sha256$6400$0ZrzXitFSGltTQnBWOsdAw$Y11AchqV4b0sUisdZd0Xr97KWoymNE0LNNrnEgY4H9M")
    assert verify(pbkdf2, b"password")
    assert not verify(pbkdf2, b"wrong")


def test_bcrypt():
    bcrypt = pytest.importorskip("bcrypt")
    stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(4))
    assert verify(stored, b"pw") and not verify(stored, b"px")
    assert PasswordTable.parse([b"u:" + stored]).hashed == 1


@pytest.mark.parametrize("line, message", [
    (b"u:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "line 2: unsupported hash scheme argon2id"),
    (b"u:$6$salt$hash", "line 2: unsupported hash scheme 6"),
    (b"u:$scrypt$ln=x,r=8,p=1$c2FsdA$aGFzaA", "line 2: malformed scrypt hash"),
    (b"u:$scrypt$ln=40,r=8,p=1$c2FsdA$aGFzaA", "line 2: malformed scrypt hash: scrypt parameters out of range"),
    (b"u:$pbkdf2-sha256$0$c2FsdA$aGFzaA", "line 2: malformed pbkdf2-sha256 hash"),
    (b"u:$pbkdf2-sha256$1000$c2FsdA", "line 2: malformed pbkdf2-sha256 hash"),
    (b"u:$2b$12$short", "line 2: "),
])
def test_bad_hash_lines_named(line, message):
    with pytest.raises(ValueError) as e:
        PasswordTable.parse([b"ok:pw", line])
    assert str(e.value).startswith(message)


def test_dollar_passwords_that_are_not_hashes_are_plaintext():
    table = PasswordTable.parse([b"u:$ecret$", b"v:$1x"])
    assert table.hashed == 0 and verify(table.get(b"u") or b"", b"$ecret$")


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12).filter(lambda b: b":" not in b and b"\n" not in b
                                                                     and not b.startswith(b"#")
                                                                     and b.strip() == b),
                          st.binary(max_size=12).filter(lambda b: b":" not in b and b"\n" not in b
                                                        and b.rstrip() == b and not b.startswith(b"$"))),
                max_size=30))
def test_parse_round_trip(users):
    """Any user:password lines read back as written, first line per user winning."""
    table = PasswordTable.parse([u + b":" + p + b"\n" for u, p in users])
    expected: dict = {}
    for u, p in users:
        expected.setdefault(u, p)
    assert table.entries == expected
    for u, p in expected.items():
        assert verify(table.get(u) or b"", p)


@given(st.binary(max_size=200))
def test_parse_never_crashes(data):
    """A garbage file is read or refused with ValueError, nothing else."""
    try:
        PasswordTable.parse(data.splitlines(keepends=True))
    except ValueError:
        pass
