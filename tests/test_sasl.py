"""
Tests for L{txsmtpsrv._sasl}: the sans-IO SASL exchanges behind AUTH.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpsrv._errors import SMTPError
from txsmtpsrv._sasl import (
    MECHANISMS,
    PLAINTEXT_MECHANISMS,
    Challenge,
    CramMD5Exchange,
    Credentials,
    LoginExchange,
    SASLAuthFailed,
    SASLBadBase64,
    SASLCancelled,
    SASLError,
    SASLMalformed,
    UnknownMechanism,
    XOAuth2Exchange,
    constant_time_equals,
    start_mechanism,
    xoauth2_error_challenge,
)


def b64(data: bytes | str) -> bytes:
    """Base64 as a client would send it."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data)


def start(name: str, initial: bytes | None = None):
    """Start an exchange and take its first step."""
    exchange = start_mechanism(name, initial, hostname="mx.test")
    return exchange, exchange.step(None)


# Errors and their replies


@pytest.mark.parametrize("exc, code, enhanced", [
    (UnknownMechanism, 504, "5.5.4"),
    (SASLCancelled, 501, "5.7.0"),
    (SASLMalformed, 501, "5.5.4"),
    (SASLBadBase64, 501, "5.5.2"),
    (SASLAuthFailed, 535, "5.7.8"),
    (SASLError, 501, "5.7.0"),
])
def test_error_replies(exc, code, enhanced):
    """Every SASL error is an SMTPError carrying the RFC 4954 reply."""
    err = exc()
    assert isinstance(err, SMTPError)
    assert (err.code, err.enhanced) == (code, enhanced)
    assert err.text


def test_error_custom_text():
    """An explicit text replaces the default one but keeps the codes."""
    err = SASLMalformed("bad")
    assert (err.code, err.text, err.enhanced) == (501, "bad", "5.5.4")


def test_malformed_base64_is_malformed():
    """A base64 failure can be caught as SASLMalformed."""
    assert issubclass(SASLBadBase64, SASLMalformed)


# start_mechanism


def test_unknown_mechanism():
    """An unimplemented mechanism raises UnknownMechanism (504 5.5.4)."""
    with pytest.raises(UnknownMechanism):
        start_mechanism("GSSAPI", None, hostname="mx.test")


@pytest.mark.parametrize("name", ["plain", "Login", "cram-md5", "xoauth2"])
def test_mechanism_case_insensitive(name):
    """Mechanism names are case-insensitive (aiosmtpd #305)."""
    assert start_mechanism(name, None, hostname="mx.test").mechanism == name.upper()


def test_mechanism_constants():
    """The advertised list and the plaintext set agree with the implementations."""
    assert MECHANISMS == ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")
    assert PLAINTEXT_MECHANISMS == {"PLAIN", "LOGIN", "XOAUTH2"}


# Challenge


def test_challenge_wire_form():
    """A challenge is base64 after "334 ", with no enhanced code."""
    assert Challenge(b"Username:").encoded == b"VXNlcm5hbWU6"
    assert Challenge(b"Username:").reply_line() == b"334 VXNlcm5hbWU6\r\n"


def test_empty_challenge_keeps_space():
    """An empty challenge is "334 " with the space RFC 4954 requires."""
    assert Challenge().reply_line() == b"334 \r\n"


# Exchange state machine


def test_step_none_must_come_first():
    """A client line before step(None) is a programming error."""
    exchange = start_mechanism("PLAIN", None, hostname="mx.test")
    with pytest.raises(RuntimeError):
        exchange.step(b"")


def test_step_none_only_once():
    """step(None) twice is a programming error."""
    exchange, _ = start("PLAIN")
    with pytest.raises(RuntimeError):
        exchange.step(None)


def test_step_after_done():
    """A finished exchange refuses further lines."""
    exchange, result = start("PLAIN", b64("\0u\0p"))
    assert isinstance(result, Credentials) and exchange.done
    with pytest.raises(RuntimeError):
        exchange.step(b"")


def test_done_after_error():
    """An exchange that raised is over."""
    exchange, _ = start("PLAIN")
    with pytest.raises(SASLCancelled):
        exchange.step(b"*")
    assert exchange.done and not exchange.awaiting_error_ack
    with pytest.raises(RuntimeError):
        exchange.step(b"")
    with pytest.raises(RuntimeError):
        exchange.reject()


def test_reject_unsupported():
    """Only XOAUTH2 has an error challenge."""
    exchange, _ = start("PLAIN", b64("\0u\0p"))
    assert not exchange.supports_error_challenge
    with pytest.raises(NotImplementedError):
        exchange.reject()


@pytest.mark.parametrize("name", MECHANISMS)
def test_cancel(name):
    """"*" in answer to a 334 cancels any mechanism (501 5.7.0)."""
    exchange, result = start(name)
    assert isinstance(result, Challenge)
    with pytest.raises(SASLCancelled):
        exchange.step(b" *")


@pytest.mark.parametrize("name", MECHANISMS)
def test_bad_base64_continuation(name):
    """Undecodable continuation lines raise SASLBadBase64 (501 5.5.2)."""
    exchange, _ = start(name)
    with pytest.raises(SASLBadBase64):
        exchange.step(b"not base64!")


@pytest.mark.parametrize("initial", [b"*", b"abc", b"dXNlcg", b"=abc", b"\xff\xfe"])
def test_bad_base64_initial(initial):
    """An undecodable initial response (including "*") is 501 5.5.2."""
    exchange = start_mechanism("PLAIN", initial, hostname="mx.test")
    with pytest.raises(SASLBadBase64):
        exchange.step(None)


# PLAIN


def test_plain_initial_response():
    """AUTH PLAIN with an initial response yields credentials at once."""
    exchange, result = start("PLAIN", b64("\0alice\0s3cret"))
    assert result == Credentials("PLAIN", "alice", password="s3cret")
    assert exchange.done


def test_plain_continuation():
    """AUTH PLAIN without initial response sends an empty 334 and reads one line."""
    exchange, result = start("PLAIN")
    assert result == Challenge(b"")
    result = exchange.step(b64("\0alice\0s3cret") + b"  ")
    assert result == Credentials("PLAIN", "alice", password="s3cret")


def test_plain_authzid():
    """A non-empty authzid is kept for the hook to authorize."""
    _, result = start("PLAIN", b64("boss\0alice\0pw"))
    assert result.authzid == "boss" and result.username == "alice"


def test_plain_empty_initial_response():
    """"=" is an empty initial response: PLAIN data without NULs, malformed."""
    exchange = start_mechanism("PLAIN", b"=", hostname="mx.test")
    with pytest.raises(SASLMalformed) as e:
        exchange.step(None)
    assert not isinstance(e.value, SASLBadBase64)


def test_plain_blank_initial_response_is_absent():
    """An empty argument (trailing space) means no initial response."""
    _, result = start("PLAIN", b"")
    assert result == Challenge(b"")


def test_plain_equals_on_continuation():
    """"=" on a continuation line is also read as empty."""
    exchange, _ = start("PLAIN")
    with pytest.raises(SASLMalformed) as e:
        exchange.step(b"=")
    assert e.value.enhanced == "5.5.4"


@pytest.mark.parametrize("data", [
    b"alice\0pw",              # one NUL
    b"\0alice\0pw\0",          # three NULs
    b"\0\0pw",                 # empty authcid
    b"\0alice\0",              # empty password
    b"\0al\xffice\0pw",        # not UTF-8
    b"",                       # empty
])
def test_plain_malformed(data):
    """Structurally invalid PLAIN data is 501 5.5.4."""
    exchange, _ = start("PLAIN")
    with pytest.raises(SASLMalformed) as e:
        exchange.step(b64(data))
    assert e.value.enhanced == "5.5.4"


_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                min_size=1)


@given(authzid=st.one_of(st.just(""), _text), user=_text, password=_text)
def test_plain_round_trip(authzid, user, password):
    """Any UTF-8 PLAIN message decodes back to its fields."""
    exchange, result = start("PLAIN", b64(f"{authzid}\0{user}\0{password}"))
    assert result == Credentials("PLAIN", user, password=password, authzid=authzid or None)


@given(line=st.binary(max_size=64))
def test_any_line_ends_cleanly(line):
    """Arbitrary client bytes give a result or a SASLError, never anything else."""
    for name in MECHANISMS:
        exchange, _ = start(name)
        try:
            exchange.step(line)
        except SASLError:
            pass


@given(data=st.binary(max_size=64))
def test_base64_round_trip(data):
    """Whatever the client base64-encodes is what the mechanism sees."""
    exchange = LoginExchange(None)
    exchange.step(None)
    try:
        exchange.step(b64(data))
    except SASLMalformed as e:
        assert not isinstance(e, SASLBadBase64)
    else:
        assert exchange._username == data.decode("utf-8")


# LOGIN


def test_login_prompts():
    """LOGIN asks "Username:" then "Password:"."""
    exchange, result = start("LOGIN")
    assert result == Challenge(b"Username:")
    assert exchange.step(b64("alice")) == Challenge(b"Password:")
    assert exchange.step(b64("pw")) == Credentials("LOGIN", "alice", password="pw")


def test_login_initial_response_is_username():
    """An initial response to LOGIN is the username."""
    exchange, result = start("LOGIN", b64("alice"))
    assert result == Challenge(b"Password:")
    assert exchange.step(b64("pw")) == Credentials("LOGIN", "alice", password="pw")


def test_login_empty_initial_response():
    """"=" gives LOGIN an empty username: malformed."""
    exchange = start_mechanism("LOGIN", b"=", hostname="mx.test")
    with pytest.raises(SASLMalformed):
        exchange.step(None)


@pytest.mark.parametrize("user, password", [
    (b"", b"pw"), (b"al\0ice", b"pw"), (b"\xff", b"pw"),
    (b"alice", b""), (b"alice", b"\xc3"), (b"alice", b"p\0w"),
])
def test_login_malformed(user, password):
    """Empty, NUL-containing or non-UTF-8 LOGIN fields are malformed."""
    exchange, _ = start("LOGIN")
    with pytest.raises(SASLMalformed):
        exchange.step(b64(user))
        exchange.step(b64(password))


def test_login_cancel_at_password():
    """"*" at the password prompt cancels too."""
    exchange, _ = start("LOGIN", b64("alice"))
    with pytest.raises(SASLCancelled):
        exchange.step(b"*")


@given(user=_text, password=_text)
def test_login_round_trip(user, password):
    """Any UTF-8 username/password survive the LOGIN exchange."""
    exchange, _ = start("LOGIN")
    exchange.step(b64(user))
    assert exchange.step(b64(password)) == Credentials("LOGIN", user, password=password)


# CRAM-MD5

RFC2195_CHALLENGE = "<1896.697170952@postoffice.reston.mci.net>"


def test_cram_md5_rfc2195_example():
    """The RFC 2195 example: tim / tanstaaftanstaaf gives b913a602..."""
    exchange = CramMD5Exchange(None, hostname="ignored", challenge=RFC2195_CHALLENGE)
    result = exchange.step(None)
    assert result.encoded == b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    creds = exchange.step(b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
    assert creds.method == "CRAM-MD5" and creds.username == "tim"
    assert creds.challenge == RFC2195_CHALLENGE
    assert creds.digest == "b913a602c7eda7a495b4e6e7334d3890"
    assert creds.password is None
    assert creds.validate_password("tanstaaftanstaaf")
    assert creds.validate_password(b"tanstaaftanstaaf")
    assert not creds.validate_password("tanstaaf")


def test_cram_md5_uppercase_digest():
    """An upper-case hex digest is accepted (normalised to lower case)."""
    exchange = CramMD5Exchange(None, hostname="x", challenge=RFC2195_CHALLENGE)
    exchange.step(None)
    creds = exchange.step(b64("tim B913A602C7EDA7A495B4E6E7334D3890"))
    assert creds.validate_password("tanstaaftanstaaf")


def test_cram_md5_username_with_space():
    """The digest is the last word; the username may contain spaces."""
    exchange = CramMD5Exchange(None, hostname="x", challenge="<1.2@x>")
    exchange.step(None)
    digest = hmac.new(b"pw", b"<1.2@x>", hashlib.md5).hexdigest()
    creds = exchange.step(b64(f"john doe {digest}"))
    assert creds.username == "john doe" and creds.validate_password("pw")


def test_cram_md5_challenge_format():
    """The challenge is <random-digits.timestamp@hostname> and unpredictable."""
    first = CramMD5Exchange(None, hostname="mx.test", clock=lambda: 1700000000.5)
    second = CramMD5Exchange(None, hostname="mx.test", clock=lambda: 1700000000.5)
    assert re.fullmatch(r"<\d+\.1700000000@mx\.test>", first.challenge)
    assert first.challenge != second.challenge
    _, result = start("CRAM-MD5")
    assert re.fullmatch(rb"<\d+\.\d+@mx\.test>", result.data)


def test_cram_md5_rejects_initial_response():
    """CRAM-MD5 is server-first: an initial response is malformed."""
    exchange = start_mechanism("CRAM-MD5", b64("tim x"), hostname="mx.test")
    with pytest.raises(SASLMalformed):
        exchange.step(None)


@pytest.mark.parametrize("data", [
    b"tim",                                          # no digest
    b" b913a602c7eda7a495b4e6e7334d3890",            # empty username
    b"tim b913a602c7eda7a495b4e6e7334d389",          # short digest
    b"tim b913a602c7eda7a495b4e6e7334d389z",         # not hex
    b"t\xffm b913a602c7eda7a495b4e6e7334d3890",      # not UTF-8
])
def test_cram_md5_malformed(data):
    """Responses that aren't "user SP 32-hex" are malformed."""
    exchange, _ = start("CRAM-MD5")
    with pytest.raises(SASLMalformed):
        exchange.step(b64(data))


# XOAUTH2


def xoauth2(user: str, token: str, scheme: str = "Bearer") -> bytes:
    """The client's XOAUTH2 initial response."""
    return b64(f"user={user}\x01auth={scheme} {token}\x01\x01")


def test_xoauth2_initial_response():
    """XOAUTH2 with an initial response yields user and token."""
    exchange, result = start("XOAUTH2", xoauth2("alice@x.test", "ya29.tok=="))
    assert result == Credentials("XOAUTH2", "alice@x.test", access_token="ya29.tok==")
    assert result.password is None and exchange.done


def test_xoauth2_continuation():
    """Without initial response XOAUTH2 sends an empty 334."""
    exchange, result = start("XOAUTH2")
    assert result == Challenge(b"")
    assert exchange.step(xoauth2("a", "t")).access_token == "t"


def test_xoauth2_lenient_terminator_and_case():
    """A missing ^A^A, lower-case keys/scheme and extra keys are tolerated."""
    _, result = start("XOAUTH2", b64("USER=a\x01host=mx\x01auth=bearer  t "))
    assert (result.username, result.access_token) == ("a", "t")


@pytest.mark.parametrize("data", [
    b"user=a\x01\x01",                       # no auth
    b"auth=Bearer t\x01\x01",                # no user
    b"user=\x01auth=Bearer t\x01\x01",       # empty user
    b"user=a\x01auth=Basic t\x01\x01",       # wrong scheme
    b"user=a\x01auth=Bearer \x01\x01",       # empty token
    b"user=a\x01user=b\x01auth=Bearer t",    # duplicate key
    b"user=a\x01garbage\x01auth=Bearer t",   # not key=value
    b"user=\xff\x01auth=Bearer t\x01\x01",   # not UTF-8
])
def test_xoauth2_malformed(data):
    """Invalid XOAUTH2 messages are 501 5.5.4."""
    exchange, _ = start("XOAUTH2")
    with pytest.raises(SASLMalformed):
        exchange.step(b64(data))


def test_xoauth2_error_challenge_json():
    """The error challenge is compact JSON with status, schemes and scope."""
    assert json.loads(xoauth2_error_challenge()) == {"status": "401", "schemes": "Bearer"}
    assert json.loads(xoauth2_error_challenge("400", "bearer mac", "https://mail/")) == {
        "status": "400", "schemes": "bearer mac", "scope": "https://mail/"}


def test_xoauth2_error_flow():
    """After reject() the client's (empty) line is answered with 535 5.7.8."""
    exchange, result = start("XOAUTH2", xoauth2("a", "expired"))
    assert isinstance(result, Credentials) and exchange.supports_error_challenge
    assert not exchange.awaiting_error_ack
    challenge = exchange.reject()
    assert challenge == Challenge(xoauth2_error_challenge())
    assert exchange.awaiting_error_ack
    with pytest.raises(SASLAuthFailed) as e:
        exchange.step(b"")
    assert (e.value.code, e.value.enhanced) == (535, "5.7.8")
    assert exchange.done and not exchange.awaiting_error_ack
    with pytest.raises(RuntimeError):
        exchange.step(b"")
    with pytest.raises(RuntimeError):
        exchange.reject()


def test_xoauth2_error_flow_any_line():
    """Any acknowledgement (e.g. base64 ^A, or junk) still gets 535."""
    for line in (b"AQ==", b"!!!"):
        exchange, _ = start("XOAUTH2", xoauth2("a", "t"))
        custom = exchange.reject(b'{"status":"invalid_token"}')
        assert custom.data == b'{"status":"invalid_token"}'
        with pytest.raises(SASLAuthFailed):
            exchange.step(line)


def test_xoauth2_error_flow_cancel():
    """"*" after the error challenge is a cancel (501 5.7.0) and ends the flow."""
    exchange, _ = start("XOAUTH2", xoauth2("a", "t"))
    exchange.reject()
    with pytest.raises(SASLCancelled):
        exchange.step(b"*")
    assert not exchange.awaiting_error_ack


def test_xoauth2_reject_needs_credentials():
    """reject() is only valid once, after credentials were produced."""
    exchange, _ = start("XOAUTH2")
    with pytest.raises(RuntimeError):
        exchange.reject()
    with pytest.raises(SASLMalformed):
        exchange.step(b64("user=a"))
    with pytest.raises(RuntimeError):
        exchange.reject()
    exchange = XOAuth2Exchange(xoauth2("a", "t"))
    exchange.step(None)
    exchange.reject()
    with pytest.raises(RuntimeError):
        exchange.reject()


# Credentials


def test_repr_hides_secrets():
    """repr/str of credentials never contain the password, token or digest."""
    secrets_ = [
        Credentials("PLAIN", "alice", password="hunter2", authzid="boss"),
        Credentials("XOAUTH2", "alice", access_token="ya29.SECRET"),
        Credentials("CRAM-MD5", "alice", challenge="<1.2@x>",
                    digest="b913a602c7eda7a495b4e6e7334d3890"),
    ]
    for creds in secrets_:
        text = repr(creds) + str(creds)
        assert "alice" in text
        for secret in ("hunter2", "ya29.SECRET", "b913a602c7eda7a495b4e6e7334d3890"):
            assert secret not in text


def test_credentials_frozen():
    """Credentials can't be altered by a hook."""
    creds = Credentials("PLAIN", "alice", password="pw")
    with pytest.raises(AttributeError):
        creds.username = "root"  # type: ignore[misc]


def test_validate_password_plain():
    """validate_password compares cleartext for PLAIN/LOGIN, str or bytes."""
    creds = Credentials("LOGIN", "alice", password="pässword")
    assert creds.validate_password("pässword")
    assert creds.validate_password("pässword".encode())
    assert not creds.validate_password("password")


def test_validate_password_xoauth2():
    """XOAUTH2 has no password to validate."""
    assert not Credentials("XOAUTH2", "a", access_token="t").validate_password("t")


def test_constant_time_equals():
    """constant_time_equals compares str/bytes in any mix."""
    assert constant_time_equals("pässword", "pässword".encode())
    assert constant_time_equals(b"a", b"a")
    assert not constant_time_equals("a", "b")
    assert not constant_time_equals("a", "ab")
