"""
Tests for L{txsmtpsrv._commands}: sans-IO parsing of MAIL/RCPT paths and
ESMTP parameters, with unit cases and hypothesis properties.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._commands import CommandError, parse_params, parse_path_argument


def path(arg: str, keyword: str = "FROM", null_ok: bool = True):
    """parse_path_argument with the MAIL defaults."""
    return parse_path_argument(arg, keyword, null_ok=null_ok)


def error(arg: str, keyword: str = "FROM", null_ok: bool = True) -> tuple:
    """The (code, enhanced) a bad argument raises."""
    with pytest.raises(CommandError) as info:
        parse_path_argument(arg, keyword, null_ok=null_ok)
    return info.value.code, info.value.enhanced


# -- parse_path_argument ----------------------------------------------------------------


@pytest.mark.parametrize("arg, expected", [
    ("FROM:<a@x.test>", ("a@x.test", "")),
    ("from:<a@x.test>", ("a@x.test", "")),
    ("FROM: <a@x.test>", ("a@x.test", "")),
    ("FROM:<a@x.test> SIZE=10 BODY=8BITMIME", ("a@x.test", "SIZE=10 BODY=8BITMIME")),
    ("FROM:<a@x.test>  SIZE=10  ", ("a@x.test", "SIZE=10")),
    ("FROM:<>", ("", "")),
    ("FROM:<> SIZE=10", ("", "SIZE=10")),
    ("FROM:<first.last+tag@sub.x.test>", ("first.last+tag@sub.x.test", "")),
    ('FROM:<"quoted > bracket"@x.test>', ('"quoted > bracket"@x.test', "")),
    ('FROM:<"esc\\"aped"@x.test>', ('"esc\\"aped"@x.test', "")),
    ("FROM:<a@[192.0.2.1]>", ("a@[192.0.2.1]", "")),
    ("FROM:<a@[IPv6:2001:db8::1]>", ("a@[IPv6:2001:db8::1]", "")),
    ("FROM:<a@x.test.>", ("a@x.test.", "")),
    ("FROM:<@r1.test,@r2.test:a@x.test>", ("a@x.test", "")),
    ("FROM:<jörg@exämple.test> SMTPUTF8", ("jörg@exämple.test", "SMTPUTF8")),
    ("FROM:<" + "l" * 64 + "@x.test>", ("l" * 64 + "@x.test", "")),
])
def test_path_valid(arg, expected):
    """Valid reverse-paths split into mailbox and parameter text."""
    assert path(arg) == expected


@pytest.mark.parametrize("arg, expected", [
    ("TO:<b@y.test>", ("b@y.test", "")),
    ("TO:<postmaster>", ("postmaster", "")),
    ("TO:<PostMaster> NOTIFY=NEVER", ("PostMaster", "NOTIFY=NEVER")),
    ("TO:<postmaster@y.test>", ("postmaster@y.test", "")),
])
def test_path_valid_recipient(arg, expected):
    """Valid forward-paths, including bare postmaster, split into mailbox and parameters."""
    assert path(arg, "TO", null_ok=False) == expected


@pytest.mark.parametrize("arg", [
    "FROM:a@x.test",
    "FROM:<a@x.test",
    "FROM:<a@x.test>junk",
    "FROM:<a b@x.test>",
    "FROM:<a@>",
    "FROM:<@x.test>",
    "FROM:<a@x..test>",
    "FROM:<.a@x.test>",
    "FROM:<a.@x.test>",
    "FROM:<a@-x.test>",
    "FROM:<a@x-.test>",
    "FROM:<a>",
    "FROM:<postmaster>",
    'FROM:<"unterminated@x.test>',
    "FROM:<" + "l" * 65 + "@x.test>",
    "FROM:<a@" + ("d" * 63 + ".") * 4 + "test>",
    "FROM:",
])
def test_path_bad_sender(arg):
    """Malformed reverse-paths are 501 5.1.7."""
    assert error(arg) == (501, "5.1.7")


@pytest.mark.parametrize("arg", ["TO:<>", "TO:b@y.test", "TO:<b@y", "TO:<b@y.test>x", "TO:<b y@y.test>"])
def test_path_bad_recipient(arg):
    """Malformed forward-paths (and the null path) are 501 5.1.3."""
    assert error(arg, "TO", null_ok=False) == (501, "5.1.3")


@pytest.mark.parametrize("arg, keyword", [("TO:<a@x.test>", "FROM"), ("FROM<a@x.test>", "FROM"),
                                          ("", "FROM"), ("FROM:<b@y.test>", "TO"), ("T:<b@y.test>", "TO")])
def test_path_bad_keyword(arg, keyword):
    """A missing or wrong FROM:/TO: keyword is 501 5.5.4."""
    assert error(arg, keyword, null_ok=keyword == "FROM") == (501, "5.5.4")


# -- parse_params -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("SIZE=10", {"SIZE": "10"}),
    ("size=10 body=8BITMIME SMTPUTF8", {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None}),
    ("A=1  B=2", {"A": "1", "B": "2"}),
    ("X-Y=a+b;c", {"X-Y": "a+b;c"}),
    ("ORCPT=rfc822;jörg@x.test", {"ORCPT": "rfc822;jörg@x.test"}),
    ("K9", {"K9": None}),
])
def test_params_valid(text, expected):
    """Parameters parse into an upper-cased keyword to value dict."""
    assert parse_params(text) == expected


@pytest.mark.parametrize("text", ["=1", "-A=1", "A_B=1", "A=", "A==1", "A=b=c", "SIZE=1 size=2", "K\x01=1",
                                  "A=\x7f"])
def test_params_bad(text):
    """Malformed or repeated parameters are 501 5.5.4."""
    with pytest.raises(CommandError) as info:
        parse_params(text)
    assert (info.value.code, info.value.enhanced) == (501, "5.5.4")


def test_command_error_carries_reply():
    """CommandError carries its code, enhanced code and text."""
    e = CommandError(501, "5.5.4", "bad")
    assert (e.code, e.enhanced, e.text) == (501, "5.5.4", "bad")


# -- properties -----------------------------------------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
atom = st.text(alphabet=ATEXT, min_size=1, max_size=10)
dot_atom = st.lists(atom, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 64)
label = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?\Z")
domain = st.lists(label, min_size=1, max_size=4).map(".".join)


@given(local=dot_atom, dom=domain, keyword=st.sampled_from(["FROM", "TO"]))
def test_dot_atom_round_trips(local, dom, keyword):
    """Any dot-atom local@domain in brackets parses back to itself."""
    address = f"{local}@{dom}"
    assert parse_path_argument(f"{keyword}:<{address}>", keyword, null_ok=keyword == "FROM") == (address, "")


@given(local=dot_atom, dom=domain,
       params=st.dictionaries(st.from_regex(r"\A[A-Z0-9][A-Z0-9-]{0,8}\Z"),
                              st.one_of(st.none(), st.text(alphabet=string.ascii_letters + "+;:.,", min_size=1,
                                                           max_size=8)),
                              max_size=4))
def test_params_round_trip(local, dom, params):
    """Parameters written after a path are parsed back to the same dict."""
    text = " ".join(k if v is None else f"{k}={v}" for k, v in params.items())
    mailbox, ptext = parse_path_argument(f"FROM:<{local}@{dom}> {text}", "FROM", null_ok=True)
    assert mailbox == f"{local}@{dom}"
    assert parse_params(ptext) == params


junk = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=300)
@given(arg=st.one_of(junk, junk.map(lambda s: "FROM:<" + s), junk.map(lambda s: "TO:<" + s + ">")),
       keyword=st.sampled_from(["FROM", "TO"]), null_ok=st.booleans())
def test_junk_path_only_raises_command_error(arg, keyword, null_ok):
    """Random text never makes parse_path_argument raise anything but CommandError."""
    try:
        mailbox, params = parse_path_argument(arg, keyword, null_ok=null_ok)
    except CommandError as e:
        assert e.code == 501 and e.enhanced in ("5.5.4", "5.1.7", "5.1.3")
    else:
        assert isinstance(mailbox, str) and isinstance(params, str)
        assert ">" not in params[:1]


@settings(max_examples=300)
@given(text=junk)
def test_junk_params_only_raise_command_error(text):
    """Random text never makes parse_params raise anything but CommandError 501 5.5.4."""
    try:
        params = parse_params(text)
    except CommandError as e:
        assert (e.code, e.enhanced) == (501, "5.5.4")
    else:
        assert all(k == k.upper() and " " not in k for k in params)
