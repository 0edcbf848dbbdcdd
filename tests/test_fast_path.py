# -*- test-case-name: tests.test_fast_path -*-
"""
Issue 13 part 2, lever a: the MAIL/RCPT argument fast path
(L{fast_mail_argument}) against the full grammar (L{parse_path_argument} and
L{parse_params}). The fast path may only ever accept what the full grammar
accepts, with the same mailbox and parameters; where it declines, the full
grammar decides (and gives the error).
"""

from __future__ import annotations

from typing import Any, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._commands import CommandError, fast_mail_argument, parse_mail_argument, parse_params, \
    parse_path_argument
from txsmtpsrv.testing import TestClient, make_server

KEYWORDS = ("FROM", "TO")


def full(arg: str, keyword: str) -> Tuple[Any, ...]:
    """What the full grammar makes of C{arg}: ("ok", mailbox, params) or ("error", code, enhanced, text)."""
    try:
        mailbox, ptext = parse_path_argument(arg, keyword, null_ok=keyword == "FROM")
        return ("ok", mailbox, parse_params(ptext))
    except CommandError as e:
        return ("error", e.code, e.enhanced, e.text)


def combined(arg: str, keyword: str) -> Tuple[Any, ...]:
    """What the dialogue uses (fast path first)."""
    try:
        return ("ok",) + parse_mail_argument(arg, keyword, null_ok=keyword == "FROM")
    except CommandError as e:
        return ("error", e.code, e.enhanced, e.text)


def check(arg: str, keyword: str) -> Any:
    """The property: the fast path accepts only what the full grammar does, with the same result."""
    fast = fast_mail_argument(arg, keyword)
    expected = full(arg, keyword)
    if fast is not None:
        assert expected == ("ok",) + fast, arg
    assert combined(arg, keyword) == expected, arg
    return fast


# -- strategies ------------------------------------------------------------------------------

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
atom = st.text(ATEXT, min_size=1, max_size=12)
label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,10}[A-Za-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
local = st.lists(atom, min_size=1, max_size=3).map(".".join)
value = st.text("".join(chr(c) for c in range(0x21, 0x7f) if c != 0x3D), min_size=1, max_size=10)
keyword_param = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-]{0,8}", fullmatch=True)
param = st.tuples(keyword_param, st.none() | value).map(lambda kv: kv[0] if kv[1] is None else f"{kv[0]}={kv[1]}")
params = st.lists(param, max_size=4).map(lambda ps: "".join(" " + p for p in ps))


@st.composite
def common(draw: Any) -> Tuple[str, str]:
    """The everyday form, which the fast path is for."""
    keyword = draw(st.sampled_from(KEYWORDS))
    mailbox = f"{draw(local)}@{draw(domain)}"
    if keyword == "FROM" and draw(st.booleans()):
        mailbox = ""
    return f"{keyword}:<{mailbox}>{draw(params)}", keyword


# Characters that make trouble: quoting, literals, routes, separators, UTF-8
# (including the C1 controls and line separators), C0 controls, DEL.
TRICKY = list('<>@".\\[]:,= ;()') + ["\x00", "\t", "\r", "\n", "\x7f", "\x85", "\x9f", "\xa0", "é", "中",
                                       "\u2028", "\U0001f600"]  # no lone surrogates: lines are strict UTF-8
tricky_text = st.text(st.sampled_from(TRICKY) | st.sampled_from(list(ATEXT)), max_size=30)


@st.composite
def mangled(draw: Any) -> Tuple[str, str]:
    """A common argument with tricky text spliced in somewhere (or a piece cut out)."""
    arg, keyword = draw(common())
    i = draw(st.integers(0, len(arg)))
    j = draw(st.integers(i, min(len(arg), i + 4)))
    return arg[:i] + draw(tricky_text) + arg[j:], keyword


@st.composite
def assembled(draw: Any) -> Tuple[str, str]:
    """Keyword (any case), optional spaces, a bracketed path of odd pieces, odd parameters."""
    keyword = draw(st.sampled_from(KEYWORDS))
    head = draw(st.sampled_from([keyword, keyword.lower(), keyword.title()]))
    pieces = draw(st.lists(st.sampled_from([
        draw(local), draw(domain), "@", ".", '"', '\\"', "[", "]", "127.0.0.1", "IPv6:::1", "@a.test,@b.test:",
        "postmaster", "Postmaster", "é", "中", "\x85", " ", "\x00", "a" * 70, "b" * 300,
    ]), max_size=6))
    sep = draw(st.sampled_from([":", ": ", ":  ", ""]))
    tail = draw(st.sampled_from(["", " ", "  ", " SIZE=1 SIZE=2", " size=1", " BODY=8BITMIME ", " X=", " =1",
                                 " X=a=b", " -X", " X\x85=1", " X=é"]))
    return f"{head}{sep}<{''.join(pieces)}>{tail}", keyword


# -- the properties --------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(common())
def test_common_arguments_take_the_fast_path(case: Tuple[str, str]) -> None:
    """The everyday form is parsed by the fast path, exactly as the full grammar parses it."""
    arg, keyword = case
    fast = check(arg, keyword)
    keys = [p.partition("=")[0].upper() for p in arg.partition(">")[2].split(" ") if p]
    mailbox = arg.partition("<")[2].partition(">")[0]
    if len(set(keys)) == len(keys) and len(mailbox.rpartition("@")[0]) <= 64:
        assert fast is not None, arg  # so that the other properties are not vacuous


@settings(max_examples=800, deadline=None)
@given(mangled())
def test_mangled_arguments_agree(case: Tuple[str, str]) -> None:
    check(*case)


@settings(max_examples=800, deadline=None)
@given(assembled())
def test_assembled_arguments_agree(case: Tuple[str, str]) -> None:
    check(*case)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KEYWORDS), st.text(max_size=40))
def test_any_text_agrees(keyword: str, text: str) -> None:
    check(f"{keyword}:{text}", keyword)
    check(text, keyword)


@pytest.mark.parametrize("arg,keyword,taken", [
    ("FROM:<a@b.test>", "FROM", True),
    ("FROM:<> SIZE=100 BODY=8BITMIME", "FROM", True),
    ("TO:<a.b+c@x-y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b", "TO", True),
    ("TO:<>", "TO", False),  # null recipient: refused by the full grammar
    ("from:<a@b.test>", "FROM", False),  # lower case: full grammar (accepted there)
    ("FROM: <a@b.test>", "FROM", False),  # space after the colon: full grammar
    ('FROM:<"a b"@b.test>', "FROM", False),  # quoted local part
    ("FROM:<a@[127.0.0.1]>", "FROM", False),  # address literal
    ("FROM:<a@[300.0.0.1]>", "FROM", False),  # a bad one: refused by the full grammar
    ("FROM:<@r.test:a@b.test>", "FROM", False),  # source route
    ("FROM:<a@b.test.>", "FROM", False),  # trailing dot
    ("TO:<postmaster>", "TO", False),
    ("FROM:<é@b.test>", "FROM", False),  # UTF-8
    ("FROM:<a..b@b.test>", "FROM", False),
    ("FROM:<.a@b.test>", "FROM", False),
    ("FROM:<a@-b.test>", "FROM", False),
    ("FROM:<a@b-.test>", "FROM", False),
    ("FROM:<a@b..test>", "FROM", False),
    ("FROM:<a@b.test>  SIZE=1", "FROM", False),
    ("FROM:<a@b.test> SIZE=1 size=2", "FROM", False),  # twice: refused
    ("FROM:<a@b.test> SIZE=", "FROM", False),
    ("FROM:<a@b.test> X=\x85", "FROM", False),
    ("FROM:<a@b.test>SIZE=1", "FROM", False),
    ("FROM:<" + "a" * 64 + "@b.test>", "FROM", True),
    ("FROM:<" + "a" * 65 + "@b.test>", "FROM", False),  # local part too long
    ("FROM:<a@" + ".".join(["b" * 63] * 4) + ">", "FROM", True),  # 255 octets
    ("FROM:<a@" + ".".join(["b" * 63] * 4) + "c>", "FROM", False),  # 256: too long
    ("FROM:<a@b.test\x00>", "FROM", False),
])
def test_known_cases(arg: str, keyword: str, taken: bool) -> None:
    """Named cases: which take the fast path, and all agree with the full grammar."""
    assert (check(arg, keyword) is not None) == taken


def test_dialogue_uses_the_fast_path_with_the_same_replies() -> None:
    """Through the dialogue: fast-path commands and full-grammar ones reach the hooks alike."""
    seen = []

    class H:
        def on_mail_from(self, session, address):
            seen.append(address)

        def on_rcpt_to(self, session, address):
            seen.append(address)

    server, _ = make_server(H())
    client = TestClient(server)
    client.command("EHLO c.test")
    assert client.command("MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME").code == 250
    assert client.command("RCPT TO:<c@d.test>").code == 250
    assert client.command("RSET").code == 250
    assert client.command("mail from:<a@b.test> size=10 body=8bitmime").code == 250  # the full grammar
    assert client.command("RCPT TO:<c@d.test> SIZE=1 SIZE=2").code == 501
    assert client.command("RCPT TO:<c@d.test> X-UNKNOWN=1").code == 555
    assert [(a.address, dict(a.params)) for a in seen] == [
        ("a@b.test", {"SIZE": "10", "BODY": "8BITMIME"}), ("c@d.test", {}),
        ("a@b.test", {"SIZE": "10", "BODY": "8bitmime"})]
