"""Tests for recognising HTTP request lines and TLS handshakes, and for the junk command counter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpsrv._junk import JUNK_COMMANDS, JunkCounter
from txsmtpsrv._sniff import is_http_request_line, looks_like_tls


@pytest.mark.parametrize("line", [
    b"GET / HTTP/1.1", b"POST /cgi-bin/x HTTP/1.0", b"HEAD / HTTP/1.1", b"PUT /a HTTP/1.1",
    b"DELETE /a HTTP/1.1", b"CONNECT mx.example:25 HTTP/1.1", b"OPTIONS * HTTP/1.1", b"TRACE / HTTP/1.1",
    b"PATCH /x HTTP/1.1", b"PRI * HTTP/2.0", b"get / http/1.1", b"GET  /  HTTP/1.1 ",
    b"GET http://example.com/ HTTP/1.1",
])
def test_http_request_lines(line):
    assert is_http_request_line(line)


@pytest.mark.parametrize("line", [
    b"EHLO example.com", b"MAIL FROM:<a@b>", b"GET", b"GET /", b"GET / HTTP", b"GET / HTTP/x.y",
    b"HELO HTTP/1.1", b"NOOP GET / HTTP/1.1", b"VRFY GET HTTP/1.1", b"", b"GET / HTTP/1.1 extra",
    b"RCPT TO:<http@example.com> HTTP/1.1",
])
def test_not_http_request_lines(line):
    assert not is_http_request_line(line)


@given(st.sampled_from(["EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "AUTH",
                        "STARTTLS", "BDAT", "HELP", "EXPN"]), st.text(max_size=60))
def test_smtp_commands_never_http(verb, arg):
    assert not is_http_request_line(f"{verb} {arg}".encode("utf-8", "surrogatepass"))


def test_tls_client_hello():
    # The start of a real TLS 1.3 ClientHello record (TLS 1.0 record version).
    assert looks_like_tls(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") is True
    assert looks_like_tls(b"\x16\x03\x00\x00\x10") is True  # SSL 3.0 record
    assert looks_like_tls(b"\x80\x2e\x01\x03\x01") is True  # SSLv2-framed hello
    assert looks_like_tls(b"\x16") is None and looks_like_tls(b"\x16\x03") is None  # wait for more
    assert looks_like_tls(b"\x80") is None
    assert looks_like_tls(b"") is None
    assert looks_like_tls(b"\x16\x04\x01") is False
    assert looks_like_tls(b"\x16\x03\x05") is False
    assert looks_like_tls(b"EHLO x\r\n") is False


@given(st.binary(min_size=1, max_size=20))
def test_tls_sniff_printable_never_tls(data):
    """An SMTP command (printable ASCII first) is never taken for TLS; every answer is stable with more bytes."""
    verdict = looks_like_tls(data)
    if 0x20 <= data[0] < 0x7F:
        assert verdict is False
    if verdict is not None:
        assert looks_like_tls(data + b"\x00\x01") is verdict


# -- junk commands ----------------------------------------------------------------------------


def test_junk_limit_and_reset():
    junk = JunkCounter(3)
    assert [junk.command(c) for c in ("NOOP", "RSET", "VRFY")] == [False] * 3
    assert junk.command("EHLO") is False and junk.command("MAIL") is False  # not junk
    assert junk.command("HELP") is True  # the fourth junk command is past the limit
    junk.delivered()
    assert junk.count == 0 and junk.command("EXPN") is False


def test_junk_unlimited():
    junk = JunkCounter(0)
    assert not any(junk.command("NOOP") for _ in range(10_000))


@given(st.lists(st.sampled_from(sorted(JUNK_COMMANDS | {"EHLO", "MAIL", "RCPT", "DELIVERED"})), max_size=300),
       st.integers(0, 50))
def test_junk_model(commands, limit):
    junk = JunkCounter(limit)
    since = 0
    for c in commands:
        if c == "DELIVERED":
            junk.delivered()
            since = 0
            continue
        over = junk.command(c)
        if c in JUNK_COMMANDS:
            since += 1
        assert over == (bool(limit) and c in JUNK_COMMANDS and since > limit)
