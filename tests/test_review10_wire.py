# -*- test-case-name: tests.test_review10_wire -*-
"""
Regression tests from the review of issue 10 (a strict, clean wire): gaps the
first round of fixes left open.

 - A data hook that streams the body on (a relay piping each chunk to the
   next hop) must never be handed the bytes that make a body refused: a chunk
   carrying a bare CR/LF or a NUL was written to the reader first and only
   then the stream was aborted, so a streaming relay had already forwarded
   the smuggling sequence.
 - An enhanced status code from a hook is put on the wire verbatim before the
   (escaped) text: C{"5.7.1\\n"} passed the C{$}-anchored check and sent a
   raw LF inside a reply line.
 - XCLIENT / XFORWARD C{NAME} (now copied into C{session.client_hostname}
   and the C{Received} header) and XFORWARD C{PROTO} passed their C{$}-anchored
   checks with a trailing LF.
 - ESMTP parameter values on MAIL / RCPT let C1 controls (U+0080-U+009F:
   NEL, CSI) through to C{address.params}, although addresses refuse them.
"""

from __future__ import annotations

import re
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._xclient import XClientError, parse_xclient, parse_xforward
from txsmtpsrv.testing import TestClient, dot_stuff, make_server

MAIL_RCPT = b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n"
# A CR followed by a byte other than LF (a CR last in what was handed over
# may still be followed by its LF), an LF without its CR, a NUL.
SMUGGLE = re.compile(rb"\r[^\n]|(?<!\r)\n|\x00")


class Streamer:
    """A data hook that hands each chunk on as it arrives, like a relay would."""

    def __init__(self) -> None:
        self.seen: List[bytes] = []
        self.failed = 0

    async def on_data(self, session: Any, stream: Any) -> None:
        try:
            await stream.collect(self.seen.append)
        except Exception:
            self.failed += 1
            raise


def greeted(hooks: Any = None, **options: Any) -> TestClient:
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    return client


def bdat(*chunks: bytes) -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        out += b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if i == len(chunks) - 1 else b"") + chunk
    return out


# -- streaming readers never see refused bytes ---------------------------------------------

@pytest.mark.parametrize("body", [
    b"hello\r.\nMAIL FROM:<ceo@victim.example>\r\n",   # the examples
    b"a\rX\nb\r\n",
    b"x\n.\nRCPT TO:<evil@victim.example>\r\n",
    b"nul\x00byte\r\n",
])
def test_data_streaming_reader_never_gets_smuggled_bytes(body):
    """DATA: the 550 comes, and the chunk holding the bare CR/LF or NUL never reached the reader."""
    hooks = Streamer()
    client = greeted(hooks)
    client.send(MAIL_RCPT + b"DATA\r\n")
    client.send(body)
    client.send(b".\r\n")
    replies = client.replies()
    assert (replies[-1].code, replies[-1].enhanced) == (550, "5.6.0")
    assert hooks.failed == 1
    assert SMUGGLE.search(b"".join(hooks.seen)) is None, hooks.seen


@pytest.mark.parametrize("chunks", [
    [b"hello\r.\nMAIL FROM:<ceo@victim.example>\r\n"],
    [b"ok\r\n", b"a\rX\nb\r\n"],
    [b"a\r", b"X\r\n"],
    [b"nul\x00byte\r\n"],
])
def test_bdat_streaming_reader_never_gets_smuggled_bytes(chunks):
    """BDAT without BINARYMIME: the piece with the fault is refused before the reader gets it."""
    hooks = Streamer()
    client = greeted(hooks)
    client.send(MAIL_RCPT + bdat(*chunks))
    replies = client.replies()
    assert (replies[-1].code, replies[-1].enhanced) == (550, "5.6.0")
    assert hooks.failed == 1
    assert SMUGGLE.search(b"".join(hooks.seen)) is None, hooks.seen


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"\x00", b"a", b"\r\n.", b"xyz"]), max_size=25),
       st.lists(st.integers(1, 7), min_size=1, max_size=40), st.booleans())
def test_no_reader_gets_refused_bytes_any_chunking(parts, sizes, use_bdat):
    """Whatever the body and however it is cut into reads or chunks, a streaming reader is never
    handed a bare CR (followed by another byte), a bare LF or a NUL; a clean body arrives whole."""
    body = b"".join(parts)
    pieces, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        pieces.append(body[i:i + n])
        i, k = i + n, k + 1
    hooks = Streamer()
    client = greeted(hooks)
    if use_bdat:
        client.send(MAIL_RCPT + bdat(*(pieces or [b""])))
        expected = body
    else:
        client.send(MAIL_RCPT + b"DATA\r\n")
        wire = dot_stuff(body)  # CRLF-terminated, dots doubled, the final dot
        expected = body if not body or body.endswith(b"\r\n") else body + b"\r\n"
        step = sizes[0]
        for j in range(0, len(wire), step):
            client.send(wire[j:j + step])
    last = client.replies()[-1]
    got = b"".join(hooks.seen)
    assert SMUGGLE.search(got) is None, (body, hooks.seen)
    if re.search(rb"\r(?!\n)|(?<!\r)\n|\x00", expected):
        assert (last.code, last.enhanced) == (550, "5.6.0")
    else:
        assert last.code == 250
        assert got == expected


# -- enhanced status codes from hooks --------------------------------------------------------

@pytest.mark.parametrize("enhanced", ["5.7.1\n", "5.7.1\r", "5.\u0663.1", "5.7.1 ", "\n5.7.1"])
def test_enhanced_code_with_control_or_non_ascii_digit_refused(enhanced):
    """RFC 3463 codes are ASCII digits and dots only: anything else is a ValueError at construction."""
    with pytest.raises(ValueError):
        SMTPError(550, "no", enhanced)
    with pytest.raises(ValueError):
        Reply(250, "ok", enhanced.replace("5", "2", 1))


def test_hook_enhanced_code_never_puts_raw_lf_on_the_wire():
    """A hook's bad enhanced code costs a 451 (a hook bug), never a raw LF in a reply line."""

    class Hooks:
        def on_rcpt_to(self, session: Any, address: Any) -> None:
            raise SMTPError(550, "no such user", "5.1.1\n")

    client = greeted(Hooks())
    client.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")
    data = client.read()
    for line in data.split(b"\r\n")[:-1]:
        assert b"\n" not in line and b"\r" not in line, data
    assert data.split(b"\r\n")[1][:1] in (b"4", b"5"), data


# -- XCLIENT / XFORWARD values ---------------------------------------------------------------

@pytest.mark.parametrize("parse", [parse_xclient, parse_xforward])
@pytest.mark.parametrize("arg", ["NAME=host.example.test+0A", "NAME=host+0A+0A", "NAME=host.test.+0A"])
def test_forwarded_name_with_trailing_lf_refused(parse, arg):
    with pytest.raises(XClientError):
        parse(arg)


def test_xforward_proto_with_trailing_lf_refused():
    with pytest.raises(XClientError):
        parse_xforward("PROTO=ESMTP+0A")


def test_xforward_name_with_lf_never_reaches_session():
    """Over the dialogue: 501, and client_hostname keeps the proxy's own name."""
    server, _ = make_server(None, use_xforward=True, xclient_trusted=["192.0.2.0/24"])
    client = TestClient(server, peer=("192.0.2.10", 40000))
    assert client.command("EHLO proxy.test").code == 250
    reply = client.command("XFORWARD NAME=evil.test+0A ADDR=203.0.113.9")
    assert (reply.code, reply.enhanced) == (501, "5.5.4")
    s = client.protocol.session
    assert (s.remote_address, s.client_hostname) == ("192.0.2.10", "[192.0.2.10]")


# -- ESMTP parameter values ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a\u0085b", "\u009b2J", "x\u0080"])
@pytest.mark.parametrize("command", ["MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>"])
def test_esmtp_value_with_c1_control_refused(command, value):
    """C1 controls are controls (as in addresses): 501 5.5.4, nothing reaches the hook."""
    seen: List[Any] = []

    class Hooks:
        def on_mail_from(self, session: Any, address: Any) -> None:
            seen.append(dict(address.params))

        def on_rcpt_to(self, session: Any, address: Any) -> None:
            seen.append(dict(address.params))

    client = greeted(Hooks(), mail_params=frozenset({"X"}), rcpt_params=frozenset({"X"}))
    if command.startswith("RCPT"):
        assert client.command("MAIL FROM:<a@example.test>").code == 250
        seen.clear()
    reply = client.command(f"{command} X={value}")
    assert (reply.code, reply.enhanced) == (501, "5.5.4")
    assert seen == []


def test_esmtp_value_utf8_still_accepted():
    """RFC 6531 UTF-8 in a value (not a control) is still accepted."""
    client = greeted(mail_params=frozenset({"X"}))
    assert client.command("MAIL FROM:<a@example.test> X=caf\u00e9").code == 250


# -- reverse DNS names -----------------------------------------------------------------------

@pytest.mark.parametrize("ptr", ["client.example.test\n", "client.example.test\n."])
def test_ptr_name_with_trailing_lf_is_not_client_hostname(ptr):
    """A PTR target is chosen by whoever owns the reverse zone: one ending in LF (a DNS label may
    hold any byte) is implausible, so the address literal stands in (it reached hooks and logs)."""
    from txsmtpsrv.testing import FakeResolver

    resolver = FakeResolver({"192.0.2.10": ptr})
    server, _ = make_server(None, resolver=resolver)
    client = TestClient(server)
    assert client.greeting is not None and client.greeting.code == 220
    assert resolver.queries == ["10.2.0.192.in-addr.arpa"]
    assert client.protocol.session.client_hostname == "[192.0.2.10]"


# -- AUTH refusals are bounded ---------------------------------------------------------------
# Issue 10 item 4 stopped counting AUTH commands and SASL lines toward
# max_allowed_unauthenticated_commands (as asked). But an AUTH refused before
# the hook ever judges a password (cancelled with "*", an unknown mechanism, a
# malformed response, AUTH before EHLO) counted nowhere either, so a client
# could loop on it forever without authenticating. Such refusals now count
# toward max_auth_failures, like a failed password.

class NoOneHooks:
    def on_auth(self, session: Any, credentials: Any) -> None:
        return None


@pytest.mark.parametrize("attempt", [
    b"AUTH LOGIN\r\n*\r\n",          # cancelled (501)
    b"AUTH PLAIN\r\n!!!\r\n",        # response not base64 (501)
    b"AUTH FOO\r\n",                 # unknown mechanism (504)
    b"AUTH\r\n",                     # syntax (501)
    b"AUTH PLAIN a b c\r\n",         # syntax (501)
])
def test_refused_auth_loop_is_bounded(attempt):
    server, _ = make_server(NoOneHooks(), allow_insecure_auth=True, max_auth_failures=3,
                            max_allowed_unauthenticated_commands=5)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    for _ in range(3):
        client.send(attempt)
    replies = client.replies()
    assert (replies[-1].code, replies[-1].enhanced) == (421, "4.7.0"), replies
    assert [r.code for r in replies[:-1]][-1] in (501, 504)
    assert client.closed


def test_auth_before_ehlo_loop_is_bounded():
    server, _ = make_server(NoOneHooks(), allow_insecure_auth=True, max_auth_failures=2)
    client = TestClient(server)
    client.send(b"AUTH PLAIN AGFsaWNlAHB3\r\n" * 5)
    replies = client.replies()
    assert [r.code for r in replies] == [503, 503, 421]
    assert client.closed


def test_refused_auth_unlimited_when_limit_is_zero():
    server, _ = make_server(NoOneHooks(), allow_insecure_auth=True, max_auth_failures=0)
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    client.send(b"AUTH LOGIN\r\n*\r\n" * 20)
    assert [r.code for r in client.replies()] == [334, 501] * 20
    assert not client.closed


def test_xoauth2_error_challenge_counts_once():
    """The 334 error challenge and the client's acknowledgement are one failure, not two."""
    import base64
    server, _ = make_server(NoOneHooks(), allow_insecure_auth=True, max_auth_failures=2,
                            auth_methods="XOAUTH2")
    client = TestClient(server)
    assert client.command("EHLO client.test").code == 250
    token = base64.b64encode(b"user=a@x.test\x01auth=Bearer t\x01\x01").decode()
    client.send(f"AUTH XOAUTH2 {token}\r\n\r\n".encode())
    assert [r.code for r in client.replies()] == [334, 535]
    assert not client.closed
    client.send(f"AUTH XOAUTH2 {token}\r\n".encode())
    assert [r.code for r in client.replies()] == [535, 421]
