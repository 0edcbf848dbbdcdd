# -*- test-case-name: tests.test_xclient -*-
"""
Tests for L{txsmtpsrv._xclient}: XCLIENT / XFORWARD attributes and xtext.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpsrv._xclient import (
    TEMPUNAVAIL,
    UNAVAILABLE,
    XCLIENT_ATTRIBUTES,
    XFORWARD_ATTRIBUTES,
    XClientError,
    XTextError,
    parse_xclient,
    parse_xforward,
    xtext_decode,
    xtext_encode,
)

# ---------------------------------------------------------------------------
# xtext


def test_xtext_examples():
    """RFC 3461 examples: '+' and '=' and non-printables are hex-escaped."""
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_decode("a+2Bb+3Dc+20d") == b"a+b=c d"
    assert xtext_encode("rfc822;bjørn@x") == "rfc822;bj+C3+B8rn@x"
    assert xtext_decode(b"rfc822;bj+C3+B8rn@x").decode() == "rfc822;bjørn@x"
    assert xtext_encode(b"\x00\x7f") == "+00+7F"
    assert xtext_decode("") == b""


@pytest.mark.parametrize("bad", ["a b", "a=b", "+", "+4", "+4G", "+zz", "\x7f", "é", "tab\t", "+2b"])
def test_xtext_decode_rejects(bad):
    """Spaces, '=', controls, 8-bit, bad and lower-case escapes are not xtext."""
    with pytest.raises(XTextError):
        xtext_decode(bad)


def test_xtext_lenient_lowercase():
    """strict=False accepts lower-case hex digits."""
    assert xtext_decode("+2b+3d", strict=False) == b"+="
    with pytest.raises(XTextError):
        xtext_decode("+2g", strict=False)


@given(st.binary(max_size=100))
def test_xtext_round_trip(data):
    """Property: decode(encode(x)) == x, and the encoding is valid xtext only."""
    encoded = xtext_encode(data)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert xtext_decode(encoded) == data


# ---------------------------------------------------------------------------
# XCLIENT


def test_xclient_full():
    """All XCLIENT attributes parse into typed values."""
    attrs = parse_xclient(
        "NAME=mail.example.org ADDR=192.0.2.7 PORT=51000 PROTO=esmtp HELO=[192.0.2.7] "
        "LOGIN=j+C3+B6rg DESTADDR=IPV6:2001:DB8::25 DESTPORT=587"
    )
    assert attrs == {
        "NAME": "mail.example.org",
        "ADDR": "192.0.2.7",
        "PORT": 51000,
        "PROTO": "ESMTP",
        "HELO": "[192.0.2.7]",
        "LOGIN": "jörg",
        "DESTADDR": "2001:db8::25",
        "DESTPORT": 587,
    }


def test_xclient_ipv6_addr_forms():
    """ADDR takes IPV6:-prefixed (any case) and bare IPv6, normalised."""
    assert parse_xclient("ADDR=IPV6:2001:db8:0:0:0:0:0:1")["ADDR"] == "2001:db8::1"
    assert parse_xclient("addr=ipv6:::1")["ADDR"] == "::1"
    assert parse_xclient("ADDR=2001:db8::2")["ADDR"] == "2001:db8::2"


def test_xclient_specials():
    """[UNAVAILABLE] for any attribute, [TEMPUNAVAIL] for NAME only."""
    attrs = parse_xclient("NAME=[TEMPUNAVAIL] ADDR=[UNAVAILABLE] LOGIN=[UNAVAILABLE] HELO=[UNAVAILABLE]")
    assert attrs == {"NAME": TEMPUNAVAIL, "ADDR": UNAVAILABLE, "LOGIN": UNAVAILABLE, "HELO": UNAVAILABLE}
    assert parse_xclient("NAME=[UNAVAILABLE]")["NAME"] is UNAVAILABLE
    assert parse_xclient("PORT=+5BUNAVAILABLE+5D")["PORT"] is UNAVAILABLE  # specials compare after decoding
    with pytest.raises(XClientError) as e:
        parse_xclient("ADDR=[TEMPUNAVAIL]")
    assert e.value.attribute == "ADDR"


def test_xclient_case_and_repeats():
    """Names are case-insensitive; a repeated attribute overrides (as in Postfix)."""
    assert parse_xclient(b"name=a.test Name=b.test") == {"NAME": "b.test"}


XCLIENT_BAD = [
    "",
    "   ",
    "NAME",
    "=x",
    "FOO=bar",
    "REVERSE_NAME=x",
    "IDENT=x",  # XFORWARD only
    "NAME=bad_host!",
    "NAME=-x.test",
    "NAME=" + "a" * 256,
    "ADDR=300.1.1.1",
    "ADDR=IPV6:192.0.2.1",
    "ADDR=fe80::1%25eth0",
    "ADDR=fe80::1+25eth0",
    "ADDR=",
    "PORT=65536",
    "PORT=-1",
    "PORT=x",
    "PORT=",
    "PROTO=LMTP",
    "HELO=a+20b",
    "HELO=",
    "LOGIN=a+0Ab",
    "LOGIN=+FF",
    "LOGIN=a=b",
    "DESTPORT=123456",
    "NAME=a\tb",
]


@pytest.mark.parametrize("args", XCLIENT_BAD)
def test_xclient_rejects(args):
    """Bad syntax, unknown attributes and bad values raise XClientError."""
    with pytest.raises(XClientError):
        parse_xclient(args)


def test_xclient_non_ascii_bytes():
    """8-bit bytes in the argument line are rejected."""
    with pytest.raises(XClientError):
        parse_xclient(b"LOGIN=j\xc3\xb6rg")


def test_error_is_value_error_with_attribute():
    """XClientError is a ValueError naming the attribute, for the 501 reply."""
    with pytest.raises(ValueError) as e:
        parse_xclient("FOO=1")
    assert isinstance(e.value, XClientError) and e.value.attribute == "FOO"
    assert "FOO" in str(e.value)


# ---------------------------------------------------------------------------
# XFORWARD


def test_xforward_full():
    """All XFORWARD attributes parse into typed values."""
    attrs = parse_xforward(
        "NAME=spike.porcupine.org ADDR=168.100.189.2 PORT=1234 PROTO=ESMTP HELO=spike.porcupine.org "
        "IDENT=4Jx1Cq2Fw0z1 SOURCE=remote"
    )
    assert attrs == {
        "NAME": "spike.porcupine.org",
        "ADDR": "168.100.189.2",
        "PORT": 1234,
        "PROTO": "ESMTP",
        "HELO": "spike.porcupine.org",
        "IDENT": "4Jx1Cq2Fw0z1",
        "SOURCE": "REMOTE",
    }


def test_xforward_specials_and_proto():
    """XFORWARD accepts [UNAVAILABLE] and other protocol names."""
    attrs = parse_xforward("NAME=[UNAVAILABLE] ADDR=IPV6:::1 PROTO=lmtp SOURCE=LOCAL")
    assert attrs == {"NAME": UNAVAILABLE, "ADDR": "::1", "PROTO": "LMTP", "SOURCE": "LOCAL"}


@pytest.mark.parametrize(
    "args", ["LOGIN=x", "DESTADDR=1.2.3.4", "SOURCE=elsewhere", "PROTO=+2Dx", "IDENT=", "ADDR=nowhere"]
)
def test_xforward_rejects(args):
    """XCLIENT-only attributes and bad values raise XClientError."""
    with pytest.raises(XClientError):
        parse_xforward(args)


def test_ehlo_keywords():
    """The EHLO advertisement lists exactly the supported attributes."""
    assert XCLIENT_ATTRIBUTES == "NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"
    assert XFORWARD_ATTRIBUTES == "NAME ADDR PORT PROTO HELO IDENT SOURCE"
