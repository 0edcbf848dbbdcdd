# -*- test-case-name: tests.test_reply_wire -*-
"""
Issue 10 item 2: no raw client bytes in any reply. Every reply line is
printable UTF-8 (SP and HTAB allowed) and at most 512 octets with its CRLF,
whatever the client sent or a hook returned; client text is shown escaped.
In memory, through L{txsmtpsrv.testing}; the loopback check is in
C{test_reply_loopback}.
"""

from __future__ import annotations

import re
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._errors import MAX_REPLY_LINE, format_reply, printable
from txsmtpsrv.testing import TestClient, make_server

_REPLY_LINE = re.compile(r"^[2-5]\d\d[ -]")


def wire_lines(data: bytes) -> List[bytes]:
    """The server's output split into lines; it must end with CRLF."""
    assert data == b"" or data.endswith(b"\r\n"), data[-80:]
    return data.split(b"\r\n")[:-1] if data else []


def assert_clean(data: bytes) -> None:
    """The issue's oracle: each line printable text (SP, HTAB), a reply code, <= 512 octets with CRLF."""
    for raw in wire_lines(data):
        assert len(raw) + 2 <= MAX_REPLY_LINE, (len(raw), raw[:80])
        text = raw.decode("utf-8")  # raises on anything but UTF-8
        assert all(c == "\t" or c.isprintable() for c in text), raw
        assert _REPLY_LINE.match(text), raw


def client_for(hooks: Any = None, **options: Any) -> TestClient:
    server, _ = make_server(hooks, **options)
    client = TestClient(server)
    assert client.greeting is not None and client.greeting.code == 220
    return client


# ---------------------------------------------------------------------------
# The examples of the issue


def test_bad_parameter_with_cr_is_escaped():
    """MAIL FROM:<a@b> X\\rY=1: the CR is shown as \\x0d, not sent raw (today: a raw CR in the reply)."""
    client = client_for()
    client.command("EHLO client.test")
    client.send(b"MAIL FROM:<a@b.test> X\rY=1\r\n")
    data = client.read()
    assert_clean(data)
    assert data.startswith(b"5")
    assert b"\r" not in data[:-2]
    assert b"X\\x0dY" in data


def test_nul_and_escape_are_escaped():
    """A\\x00\\x1b[2J=1 as a parameter: neither NUL nor ESC reaches the client's terminal."""
    client = client_for()
    client.command("EHLO client.test")
    client.send(b"MAIL FROM:<a@b.test> A\x00\x1b[2J=1\r\n")
    data = client.read()
    assert_clean(data)
    assert b"\x00" not in data and b"\x1b" not in data
    assert b"A\\x00\\x1b[2J" in data


def test_lmtp_quoted_local_part_with_controls_is_refused_cleanly():
    """Controls in a quoted local part are refused (issue 10 item 3), and the 501 echoes none of them."""
    class Hooks:
        async def on_data(self, session, stream):
            await stream.content()

    client = client_for(Hooks(), lmtp=True)
    client.command("LHLO client.test")
    assert client.command("MAIL FROM:<a@x.test>").code == 250
    client.send(b'RCPT TO:<"a\x01b\x1bc"@y.test>\r\n')
    rcpt = client.read()
    assert_clean(rcpt)
    assert rcpt.startswith(b"501 5.1.3")


def test_lmtp_quoted_local_part_with_unicode_controls_is_refused_cleanly():
    """U+2028 and U+0085 (C1) in a quoted local part are refused too, with a clean 501."""
    client = client_for(None, lmtp=True)
    client.command("LHLO client.test")
    assert client.command("MAIL FROM:<a@x.test> SMTPUTF8").code == 250
    client.send("RCPT TO:<\"a\u2028b\u0085c\"@y.test>\r\n".encode("utf-8"))
    rcpt = client.read()
    assert_clean(rcpt)
    assert rcpt.startswith(b"501 5.1.3")


def test_lmtp_hook_reply_echoing_body_is_escaped():
    """LMTP per-recipient Replies echoing body text (ESC, BEL, U+2028) come out escaped, one line each."""
    class Hooks:
        async def on_data(self, session, stream):
            body = (await stream.content()).decode("utf-8")
            return [Reply(250, f"{r.address}: {body.strip()}") for r in session.envelope.rcpt_to]

    client = client_for(Hooks(), lmtp=True)
    client.command("LHLO client.test")
    client.command("MAIL FROM:<a@x.test> BODY=8BITMIME")
    client.command("RCPT TO:<b@y.test>")
    client.command("RCPT TO:<c@y.test>")
    client.send(b"DATA\r\n")
    client.read()
    client.send("x\x1b[2J\x07\u2028y\r\n.\r\n".encode("utf-8"))
    data = client.read()
    assert_clean(data)
    assert data == (b"250 2.0.0 b@y.test: x\\x1b[2J\\x07\\u2028y\r\n"
                    b"250 2.0.0 c@y.test: x\\x1b[2J\\x07\\u2028y\r\n")


def test_helo_response_with_long_control_laden_name():
    """helo_response "{name} hi {helo}" and a 1,000-byte EHLO argument with CR, NUL: since issue 10
    item 3 refused (501 5.5.4) with one clean line <= 512; a long valid name is echoed on one clean line."""
    client = client_for(helo_response="{name} hi {helo}")
    arg = b"a\rb\x00c" + b"x" * 995
    client.send(b"EHLO " + arg + b"\r\n")
    data = client.read()
    assert_clean(data)
    [line] = wire_lines(data)
    assert line.startswith(b"501 5.5.4 ") and len(line) + 2 <= MAX_REPLY_LINE
    client.send(b"EHLO " + b"x" * 250 + b".test\r\n")
    data = client.read()
    assert_clean(data)
    first = wire_lines(data)[0]
    assert first.startswith(b"250-mx.test hi xxx") and len(first) + 2 <= MAX_REPLY_LINE


def test_hook_error_text_with_controls():
    """An SMTPError text from a hook with ESC, NUL, DEL: escaped, and capped at 512 octets."""
    class Hooks:
        def on_mail_from(self, session, address):
            raise SMTPError(550, "no \x1b[31mred\x00\x7f " + "é" * 600, "5.7.1")

    client = client_for(Hooks())
    client.command("EHLO client.test")
    client.send(b"MAIL FROM:<a@x.test>\r\n")
    data = client.read()
    assert_clean(data)
    assert data.startswith(b"550 5.7.1 no \\x1b[31mred\\x00\\x7f \xc3\xa9")
    assert len(data) <= MAX_REPLY_LINE


@pytest.mark.parametrize("text", ["one\rtwo", "one\ntwo", "one\r\ntwo"])
def test_hook_text_with_line_break_becomes_lines(text):
    """A Reply/SMTPError text with CR or LF becomes separate reply lines (the documented choice)."""
    assert Reply(250, text).lines == ("one", "two")
    assert SMTPError(550, text).lines == ("one", "two")

    class Hooks:
        def on_rcpt_to(self, session, address):
            raise SMTPError(550, text, "5.1.1")

    client = client_for(Hooks())
    client.command("EHLO client.test")
    client.command("MAIL FROM:<a@x.test>")
    client.send(b"RCPT TO:<b@y.test>\r\n")
    data = client.read()
    assert data == b"550-5.1.1 one\r\n550 5.1.1 two\r\n"


def test_unknown_command_is_not_echoed_raw():
    """Garbage verbs with controls: the reply never carries them."""
    client = client_for()
    client.send(b"\x1b[2J\x00BOOM \r\x07 now\r\n")
    data = client.read()
    assert_clean(data)
    assert data.startswith(b"500")


# ---------------------------------------------------------------------------
# The choke point


def test_format_reply_unit():
    """format_reply escapes controls, keeps HTAB, SP and non-ASCII text, and cuts long lines with '...'."""
    assert format_reply(250, ["ok\tfine é"], "2.0.0") == "250 2.0.0 ok\tfine é\r\n".encode()
    assert format_reply(550, ["a\rb\nc\x00\x1b\x7f\x85\u2028\ud800"], None) == \
        b"550 a\\x0db\\x0ac\\x00\\x1b\\x7f\\x85\\u2028\\ud800\r\n"
    long = format_reply(250, ["é" * 400, "x"], "2.0.0")
    first, second = long.split(b"\r\n")[:2]
    assert len(first) <= 510 and first.endswith(b"...") and first.decode("utf-8")
    assert second == b"250 2.0.0 x"
    exact = format_reply(250, ["y" * (510 - 4)], None)
    assert exact == b"250 " + b"y" * 506 + b"\r\n"  # exactly 512: not cut


def test_printable_keeps_ordinary_text():
    """Nothing printable is changed (including backslashes): only controls are escaped."""
    for text in ["", "plain text", "tab\there", "naïve — ok", "back\\slash", "𝔘𝔫𝔦"]:
        assert printable(text) == text


# ---------------------------------------------------------------------------
# Dialogue fuzz: random bytes, random chunkings, every profile


class EchoHooks:
    """Hooks that echo client text in their replies, the worst a hook may do."""

    def __init__(self) -> None:
        self.auth_ok = False

    def on_helo(self, session, hostname):
        if hostname != "c.test":
            return Reply(250, f"hello {hostname}\r\nagain {hostname}")
        return None

    def on_mail_from(self, session, address):
        if address.address != "a@x.test":
            raise SMTPError(550, f"refused {address.address} {address.params}", "5.7.1")

    def on_rcpt_to(self, session, address):
        if address.address.startswith("x"):
            raise SMTPError(550, f"no such user {address.address}\n{address.params}", "5.1.1")
        return Reply(250, f"ok {address.address}")

    async def on_data(self, session, stream):
        body = await stream.content()
        if session.lmtp:
            return [Reply(250, f"ok {r.address} {body[:30]!r}") for r in session.envelope.rcpt_to]
        return Reply(250, f"queued {body[:40].decode('utf-8', 'replace')}")


class AuthEchoHooks(EchoHooks):
    def on_auth(self, session, credentials):
        if credentials.username == "alice":
            return credentials.username
        raise SMTPError(535, f"bad user {credentials.username}", "5.7.8")


PROFILES = {
    "smtp": dict(helo_response="{name} hi {helo}"),
    "lmtp": dict(lmtp=True, helo_response="{name} hi {helo} from {client_hostname}"),
    "auth": dict(allow_insecure_auth=True, auth_methods="PLAIN,LOGIN,CRAM-MD5,XOAUTH2",
                 max_allowed_unauthenticated_commands=0, max_unrecognized_commands=0),
    "bdat-dsn": dict(max_unrecognized_commands=0, size=2000),
    "xclient": dict(use_xclient=True, use_xforward=True, xclient_trusted="192.0.2.0/24", lmtp=False),
    "plain-no-esc": dict(hide_enhancedstatuscodes=True, hide_pipelining=True, hide_chunking=True,
                         hide_dsn=True),
}

_VALID = [
    b"EHLO client.test", b"HELO client.test", b"LHLO client.test", b"EHLO r\x01x", b"NOOP", b"RSET",
    b"MAIL FROM:<a@x.test>", b"MAIL FROM:<bad@x.test> BODY=8BITMIME", b"MAIL FROM:<> SMTPUTF8",
    b"MAIL FROM:<a@x.test> RET=HDRS ENVID=a+0Db", b"RCPT TO:<b@y.test>", b"RCPT TO:<x@y.test>",
    b"RCPT TO:<b@y.test> NOTIFY=SUCCESS ORCPT=rfc822;b+0D+0A@y", b'RCPT TO:<"q\x01\x1b"@y.test>',
    b"DATA", b"hello\r\n.", b"BDAT 5", b"BDAT 3 LAST", b"BDAT 0 LAST", b"AUTH PLAIN AGFsaWNlAHB3",
    b"AUTH PLAIN AGJvYgBwdw==", b"AUTH LOGIN", b"YWxpY2U=", b"*", b"AUTH XOAUTH2", b"VRFY x\x00y",
    b"HELP", b"STARTTLS", b"XCLIENT ADDR=1.2.3.4", b"XFORWARD NAME=a.test ADDR=1.2.3.5", b"QUIT",
]
# Client text: random bytes, or valid UTF-8 rich in controls (what gets echoed).
_NASTY = list("\r\x00\x1b\x07\x7f\t \x85\u2028\u202eaZ=<>@\".:+é")
_FILL = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet=st.sampled_from(_NASTY), max_size=80).map(lambda t: t.encode("utf-8")),
    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
).map(lambda b: b.replace(b"\n", b"\r"))
_SEGMENT = st.one_of(
    st.sampled_from(_VALID).map(lambda line: line + b"\r\n"),
    st.tuples(st.sampled_from([b"MAIL FROM:<a@x.test> ", b"RCPT TO:<", b"EHLO ", b"MAIL FROM:<", b"LHLO ",
                               b"RCPT TO:<b@y.test> ", b"AUTH ", b"BDAT ", b"XCLIENT ", b"", b'RCPT TO:<"']),
              _FILL)
    .map(lambda t: t[0] + t[1] + b"\r\n"),
    st.binary(max_size=60),
    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass") + b"\r\n"),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(sorted(PROFILES)),
       segments=st.tuples(st.sampled_from([b"", b"EHLO c.test\r\n", b"LHLO c.test\r\n",
                                           b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n",
                                           b"LHLO c.test\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"]),
                          st.lists(_SEGMENT, max_size=25)).map(lambda t: [t[0], *t[1]]),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_dialogue_fuzz(profile, segments, cuts):
    """Random commands, bytes and chunkings in every profile: every reply line is clean, nothing raises."""
    options = dict(PROFILES[profile])
    hooks = AuthEchoHooks() if profile == "auth" else EchoHooks()
    server, clock = make_server(hooks, **options)
    client = TestClient(server, greeting=False)
    stream = b"".join(segments)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    with capturedLogs() as events:
        for start, end in zip(points, points[1:]):
            client.send(stream[start:end])
        clock.advance(1)
        output = client.transport.value()
    assert_clean(output)
    failures = [e for e in events if "log_failure" in e]
    assert not failures, [e.get("log_format") for e in failures]


@pytest.mark.parametrize("name", ["a" * 256, "mx\x00.test", "mx\x1b.test"])
def test_server_name_must_fit(name):
    """The server name is in every greeting and the CRAM-MD5 challenge: controls or > 255 chars are refused."""
    from txsmtpsrv import ServerOptions
    with pytest.raises(ValueError, match="at most 255 printable"):
        ServerOptions(name=name)


def test_longest_name_fits_greeting_and_cram_challenge():
    """With a 255-character name the greeting and the CRAM-MD5 334 line still fit 512 octets."""
    class Hooks:
        def on_auth(self, session, credentials):
            return None

    name = ("a" * 63 + ".") * 3 + "b" * 63
    server, _ = make_server(Hooks(), name=name, allow_insecure_auth=True, auth_methods="CRAM-MD5")
    client = TestClient(server, greeting=False)
    client.send(b"EHLO c.test\r\nAUTH CRAM-MD5\r\n")
    data = client.transport.value()
    assert_clean(data)
    assert data.split(b"\r\n")[-2].startswith(b"334 ")
