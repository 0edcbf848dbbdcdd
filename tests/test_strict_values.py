# -*- test-case-name: tests.test_strict_values -*-
"""
Issue 10 item 3: values handed to hooks are valid, or the command is refused.
Quoted local parts and address literals (RFC 5321 4.1.2, 4.1.3), the one
argument of EHLO/HELO/LHLO (4.1.1.1), DSN ORCPT/ENVID without control
characters (RFC 3461, 6533), PROXY v2 UNIX addresses without control bytes.
"""

from __future__ import annotations

import unicodedata
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._commands import CommandError, parse_helo, parse_path_argument, valid_address_literal
from txsmtpsrv._proxy import ProxyHeaderError, V2_SIGNATURE, parse_proxy_header
from txsmtpsrv.testing import TestClient, make_server


class Seen:
    """Hooks that record what reached on_mail_from / on_rcpt_to / on_helo."""

    def __init__(self) -> None:
        self.values: List[Any] = []

    def on_helo(self, session, hostname):
        self.values.append(hostname)

    def on_mail_from(self, session, address):
        self.values.append(address)

    def on_rcpt_to(self, session, address):
        self.values.append(address)


def client(hooks: Any = None, **options: Any) -> TestClient:
    server, _ = make_server(hooks, **options)
    c = TestClient(server)
    assert c.command("EHLO client.test").code == 250
    return c


def code(reply):
    return reply.code, reply.enhanced


# -- quoted local parts ----------------------------------------------------------------------

@pytest.mark.parametrize("local", ['"a\x00b\x1b"', '"a\x7fb"', '"a\tb"', '"a\\\x01b"', '"a\x85b"', '"a\\\x00"'])
def test_quoted_local_part_with_controls_refused(local):
    """RCPT TO:<"a\\x00b\\x1b"@y.test> and friends: 501 5.1.3 (qtextSMTP / quoted-pairSMTP exclude controls)."""
    hooks = Seen()
    c = client(hooks)
    assert c.command("MAIL FROM:<s@x.test>").code == 250
    assert code(c.command(f"RCPT TO:<{local}@y.test>")) == (501, "5.1.3")
    assert code(c.command(f"RCPT TO:<a@y.test>")) == (250, "2.1.5")
    assert [str(v) for v in hooks.values[2:]] == ["a@y.test"]  # after the EHLO name and MAIL


@pytest.mark.parametrize("local", ['"a b"', '"a\\"b"', '"a\\\\b"', '"x@y"', '"\\ "', '"ü"'])
def test_valid_quoted_local_parts_accepted(local):
    """Printable qtext and quoted pairs stay accepted (UTF-8 too, RFC 6531)."""
    c = client()
    assert c.command("MAIL FROM:<s@x.test> SMTPUTF8").code == 250
    assert code(c.command(f"RCPT TO:<{local}@y.test>")) == (250, "2.1.5")


# -- address literals ------------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["[300.1.1.1]", "[IPv6:zz::1]", "[1.2.3]", "[1.2.3.4.5]", "[foo]",
                                     "[IPv6:fe80::1%eth0]", "[IPv6:1.2.3.4]", "[-tag:x]", "[tag-:x]",
                                     "[tag:]", "[:x]", "[1.2.3.1000]", "[1..2.3]"])
def test_bad_address_literals_refused(literal):
    """Invalid literals: 501 with 5.1.3 for RCPT and 5.1.7 (bad sender syntax, RFC 3463) for MAIL."""
    c = client()
    assert code(c.command(f"MAIL FROM:<a@{literal}>")) == (501, "5.1.7")
    assert c.command("MAIL FROM:<a@x.test>").code == 250
    assert code(c.command(f"RCPT TO:<b@{literal}>")) == (501, "5.1.3")


@pytest.mark.parametrize("literal", ["[1.2.3.4]", "[255.255.255.255]", "[0.0.0.0]", "[IPv6:2001:db8::1]",
                                     "[ipv6:::1]", "[IPv6:::ffff:1.2.3.4]", "[x-tag:some-content]"])
def test_good_address_literals_accepted(literal):
    """IPv4 (octets 0-255), IPv6 through ipaddress, and General-address-literal tags are accepted."""
    hooks = Seen()
    c = client(hooks)
    assert c.command(f"MAIL FROM:<a@{literal}>").code == 250
    assert c.command(f"RCPT TO:<b@{literal}>").code == 250
    assert str(hooks.values[-1]).endswith(literal)


def test_valid_address_literal_unit():
    assert valid_address_literal("[192.0.2.1]")
    assert not valid_address_literal("[256.0.0.1]")
    assert not valid_address_literal("192.0.2.1")
    assert not valid_address_literal("[IPv6:::g]")


# -- EHLO / HELO / LHLO --------------------------------------------------------------------

@pytest.mark.parametrize("arg", ["one.test two.test", "[300.1.1.1]", "[IPv6:zz::1]", "a..b", "-a.test",
                                 "a\rb", "a\x00b", "a\x1bb", "[foo]"])
@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_helo_argument_must_be_one_domain_or_literal(verb, arg):
    """RFC 5321 4.1.1.1: exactly one Domain or address-literal, else 501 5.5.4; the hook never sees it."""
    hooks = Seen()
    server, _ = make_server(hooks)
    c = TestClient(server)
    c.send(f"{verb} {arg}\r\n".encode("utf-8"))
    replies = c.replies()
    assert [code(r) for r in replies][-1:] == [(501, "5.5.4")]
    assert hooks.values == []
    assert c.command("EHLO ok.test").code == 250


@pytest.mark.parametrize("arg", ["client.test", "localhost", "[192.0.2.1]", "[IPv6:2001:db8::1]", "my_host.lan",
                                 "bücher.test", "trailing.dot.", "x"])
def test_helo_valid_arguments(arg):
    """Domains (underscores tolerated, U-labels), address literals: 250, and the hook gets the name."""
    hooks = Seen()
    server, _ = make_server(hooks)
    c = TestClient(server)
    assert c.command(f"EHLO {arg}").code == 250
    assert hooks.values == [arg]


def test_helo_without_argument_still_refused():
    for verb in ("EHLO", "HELO", "EHLO "):
        server, _ = make_server()
        c = TestClient(server)
        assert code(c.command(verb)) == (501, "5.5.4")


def test_lhlo_two_names_refused():
    server, _ = make_server(lmtp=True)
    c = TestClient(server)
    assert code(c.command("LHLO a.test b.test")) == (501, "5.5.4")
    assert c.command("LHLO a.test").code == 250


def test_parse_helo_unit():
    assert parse_helo("[10.0.0.1]", "EHLO") == "[10.0.0.1]"
    with pytest.raises(CommandError):
        parse_helo("", "EHLO")


# -- DSN ORCPT / ENVID -----------------------------------------------------------------------

@pytest.mark.parametrize("orcpt", ["rfc822;x+0D+0ABcc:+20evil@x", "rfc822;a+00b@x", "rfc822;a+7Fb@x",
                                   "utf-8;x\\x{0}y@x", "utf-8;x\\x{D}\\x{A}Bcc:evil@x", "utf-8;a\\x{85}b@x",
                                   "rfc822;a+C2+85b@x", "utf-8;a\x85b@x"])
def test_orcpt_with_control_characters_refused(orcpt):
    """An ORCPT that decodes to CR, LF, NUL or another control: 501 5.5.4, the hook sees nothing."""
    hooks = Seen()
    c = client(hooks)
    assert c.command("MAIL FROM:<s@x.test> SMTPUTF8").code == 250
    assert code(c.command(f"RCPT TO:<r@y.test> ORCPT={orcpt}")) == (501, "5.5.4")
    assert len(hooks.values) == 2  # only the EHLO name and the MAIL


@pytest.mark.parametrize("orcpt,decoded", [("rfc822;a+2Bb@x", "a+b@x"), ("utf-8;\\x{E9}t\\x{E9}@x", "été@x")])
def test_orcpt_valid(orcpt, decoded):
    hooks = Seen()
    c = client(hooks)
    assert c.command("MAIL FROM:<s@x.test>").code == 250
    assert c.command(f"RCPT TO:<r@y.test> ORCPT={orcpt}").code == 250
    assert hooks.values[-1].orcpt[1] == decoded


@pytest.mark.parametrize("envid", ["a+0Db", "a+00", "a+1B", "a+7F", "a+C2+85"])
def test_envid_with_control_characters_refused(envid):
    c = client()
    assert code(c.command(f"MAIL FROM:<s@x.test> ENVID={envid}")) == (501, "5.5.4")


# -- property: the path parser hands out no control characters ---------------------------

path_chars = st.sampled_from(list('ab."\\@[]:-_ <>\x00\x01\t\r\x1b\x7f\x85\u00e9\u2028') + ["IPv6:", "1.2.3.4", "::1"])
texts = st.lists(path_chars, max_size=12).map("".join)
local_parts = st.one_of(texts, texts.map(lambda t: f'"{t}"'))
domains = st.one_of(texts, texts.map(lambda t: f"[{t}]"), st.just("x.test"))
paths = st.one_of(texts, st.builds(lambda l, d: f"{l}@{d}", local_parts, domains))


@settings(max_examples=800, deadline=None)
@given(paths, st.sampled_from(["FROM", "TO"]))
def test_accepted_paths_have_no_controls(text, keyword):
    """Whatever parse_path_argument accepts is free of control characters, and its literal is valid."""
    try:
        mailbox, params = parse_path_argument(f"{keyword}:<{text}>", keyword, null_ok=keyword == "FROM")
    except CommandError as e:
        assert e.code == 501
        return
    assert not any(unicodedata.category(ch) == "Cc" for ch in mailbox), repr(mailbox)
    domain = mailbox.rpartition("@")[2]
    if domain.startswith("["):
        assert valid_address_literal(domain)


# -- PROXY v2 UNIX addresses ---------------------------------------------------------------

def v2_unix(src: bytes, dst: bytes = b"/run/smtp.sock") -> bytes:
    import struct
    block = src.ljust(108, b"\0") + dst.ljust(108, b"\0")
    return V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", len(block)) + block


@pytest.mark.parametrize("src", [b"/run/a\rb", b"/run/\x1b[2J", b"/run/a\nb", b"/run/\x7f", b"/run/\xc2\x85x"])
def test_proxy_v2_unix_control_bytes_refused(src):
    """A control byte in a v2 UNIX address makes the header malformed (the connection is dropped)."""
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(v2_unix(src))
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(v2_unix(b"/run/ok", src))


def test_proxy_v2_unix_path_ends_at_nul():
    """sun_path semantics: the path ends at the first NUL; an abstract address shows as @name."""
    info, _ = parse_proxy_header(v2_unix(b"/run/c\x00junk\x1b", b"\x00abstract"))
    assert (info.source_address, info.dest_address) == ("/run/c", "@abstract")
