# -*- test-case-name: tests.test_optcheck -*-
"""
One set of option validators (C{txsmtpsrv._optcheck}) for C{twistd smtpsrv}
and C{python -m txsmtpsrv}: each bad value of an option both commands have
gives the same one-line error from both, naming the option and the mistake.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any, List

import pytest
from hypothesis import given, strategies as st
from twisted.python import usage

from txsmtpsrv import _optcheck
from txsmtpsrv._cli import Options
from txsmtpsrv._limitopts import LIMIT_FLAGS
from txsmtpsrv._sink import main as sink_main

TWISTD = "twistd smtpsrv: error: "
SINK = "python -m txsmtpsrv: "


def twistd_error(*args: str) -> str:
    """What C{twistd smtpsrv ARGS} says on standard error (its Options, run with a parent as twistd runs it)."""
    options = Options()
    options.parent = object()  # type: ignore[attr-defined]  # as twistd's ServerOptions sets it
    with pytest.raises(SystemExit) as raised:
        options.parseOptions(list(args))
    text = str(raised.value.code)
    assert text.startswith(TWISTD), text
    return text[len(TWISTD):]


def sink_error(capsys: Any, *args: str) -> str:
    """What C{python -m txsmtpsrv ARGS} says: its first stderr line, exit status 2."""
    with pytest.raises(SystemExit) as raised:
        sink_main(list(args))
    assert raised.value.code == 2
    first, hint = capsys.readouterr().err.splitlines()
    assert first.startswith(SINK) and hint == "(see python -m txsmtpsrv --help)"
    return first[len(SINK):]


#: (arguments, the error): options both commands have, every kind of mistake.
SHARED: List[Any] = [
    (["--size", "lots"], "--size: 'lots' is not an integer >= 0"),
    (["--size", "-1"], "--size: '-1' is not an integer >= 0"),
    (["--size", "1.5"], "--size: '1.5' is not an integer >= 0"),
    (["--max-clients", "0"], "--max-clients: '0' is not an integer >= 1"),
    (["--max-clients", "many"], "--max-clients: 'many' is not an integer >= 1"),
    (["--socket-timeout", "0"], "--socket-timeout: '0' is not a positive number of seconds"),
    (["--socket-timeout", "soon"], "--socket-timeout: 'soon' is not a positive number of seconds"),
    (["--socket-timeout", "inf"], "--socket-timeout: 'inf' is not a positive number of seconds"),
    (["--socket-timeout", "nan"], "--socket-timeout: 'nan' is not a positive number of seconds"),
    (["--close-timeout", "-5"], "--close-timeout: '-5' is not a positive number of seconds"),
    (["--name", "two words"], "--name must be a host name"),
    (["--banner", "a\rb"], "--banner may not contain CR or LF"),
    (["-l", "bogus:1"], "--listen bogus:1: Unknown endpoint type: 'bogus'"),
    (["-l", "tcp:notaport"], "--listen tcp:notaport: invalid literal"),
    (["-l", "smtps:tcp:notaport"], "--listen smtps:tcp:notaport: invalid literal"),
    (["-l", "smtps:unix:"], "--listen smtps:unix:: unix: needs a socket path"),
    (["-l", "unix:"], "--listen unix:: unix: needs a socket path"),
    (["--mbox", "/nonexistent/dir/box"], "--mbox /nonexistent/dir/box: directory /nonexistent/dir does not exist"),
    (["--maildir", "M", "--mbox", "box"], "--maildir and --mbox exclude each other: choose one delivery"),
    (["--tls-key", "/nonexistent/key.pem", "--tls-cert", "/nonexistent/cert.pem"], "--tls-key/--tls-cert: "),
]


@pytest.mark.parametrize("args, message", SHARED)
def test_same_error_from_both_commands(tmp_path, monkeypatch, capsys, args, message):
    """The same bad value: the same text from twistd smtpsrv and the sink, naming the option and the mistake."""
    monkeypatch.chdir(tmp_path)
    from_twistd = twistd_error(*args)
    from_sink = sink_error(capsys, *args)
    assert from_twistd == from_sink
    assert from_twistd.startswith(message)


def test_unwritable_maildir_same_error(tmp_path, capsys):
    """A Maildir that cannot be created: the same error from both (the sink used to fail at the first message)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "Maildir")
    from_twistd = twistd_error("--maildir", path)
    assert from_twistd == sink_error(capsys, "--maildir", path)
    assert from_twistd.startswith(f"--maildir {path}: cannot create")


def test_broken_certificate_same_error(tmp_path, capsys, monkeypatch):
    """A key file that is not PEM: the same --tls-key/--tls-cert error from both."""
    monkeypatch.chdir(tmp_path)  # twistd makes its default ./Maildir before it reads the key
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("not a key\n")
    cert.write_text("not a certificate\n")
    args = ("--tls-key", str(key), "--tls-cert", str(cert))
    from_twistd = twistd_error(*args)
    assert from_twistd == sink_error(capsys, *args)
    assert from_twistd.startswith("--tls-key/--tls-cert: ")


@pytest.mark.parametrize("flag, coerce, bad", [
    (flag, coerce, bad) for flag, _, coerce, _, _ in LIMIT_FLAGS for bad in ("x", "-1", "nan", "1e9")
    if not (flag == "auth-failure-window" and bad == "1e9")  # a valid window
])
def test_abuse_limits_name_the_option(tmp_path, monkeypatch, flag, coerce, bad):
    """The abuse limits (twistd only) use the same validators and the same text: --flag: 'value' is not ..."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as direct:
        coerce(bad)
    assert twistd_error(f"--{flag}", bad) == f"--{flag}: {direct.value}"
    assert str(direct.value).startswith(f"{bad!r} is not ")


def test_real_commands_print_the_same_line(tmp_path):
    """End to end: the processes users run print the same error line (twistd: status 1, the sink: 2)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    twistd = subprocess.run([sys.executable, "-m", "twisted", "smtpsrv", "--size", "-1"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    sink = subprocess.run([sys.executable, "-m", "txsmtpsrv", "--size", "-1"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=env)
    expected = "--size: '-1' is not an integer >= 0"
    assert twistd.returncode == 1 and sink.returncode == 2
    assert f"{TWISTD}{expected}" in twistd.stderr.splitlines(), twistd.stderr
    assert sink.stderr.splitlines()[0] == f"{SINK}{expected}"


# -- the validators themselves -------------------------------------------------------------


@given(st.text(max_size=12))
def test_integer_accepts_exactly_the_integers_in_range(value):
    coerce = _optcheck.integer(0, 128)
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is not None and 0 <= number <= 128:
        assert coerce(value) == number
    else:
        with pytest.raises(ValueError, match=r" is not an integer from 0 to 128$"):
            coerce(value)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8)))
def test_seconds_accepts_exactly_positive_finite_numbers(value):
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if 0 < number < math.inf:
        assert _optcheck.seconds(value) == number
    else:
        with pytest.raises(ValueError, match=r" is not a positive number of seconds$"):
            _optcheck.seconds(value)


def test_seconds_upto_allows_zero():
    coerce = _optcheck.seconds_upto(3600)
    assert coerce("0") == 0.0 and coerce("3600") == 3600.0
    for bad in ("-0.1", "3600.5", "inf", "nan", "x"):
        with pytest.raises(ValueError, match=r"is not a number of seconds from 0 to 3600$"):
            coerce(bad)


def test_checked_names_the_option_in_a_usage_error():
    check = _optcheck.checked("size", _optcheck.integer(0))
    assert check("10") == 10
    with pytest.raises(usage.UsageError, match=r"^--size: 'x' is not an integer >= 0$"):
        check("x")


def test_server_options_error_translates_only_option_fields():
    names = {"max-recipients", "auth-methods"}
    assert _optcheck.server_options_error("max_recipients must be at least 1", names) == \
        "--max-recipients must be at least 1"
    assert _optcheck.server_options_error("auth_methods: unsupported X", names) == "--auth-methods: unsupported X"
    assert _optcheck.server_options_error("greeting_delay must be shorter", names) == "greeting_delay must be shorter"


def _defined_options(cls: Any) -> List[str]:
    """Every option name a usage.Options class defines in optFlags/optParameters (its bases' too)."""
    from twisted.python import reflect

    names: List[str] = []
    for attribute in ("optFlags", "optParameters"):
        found: List[Any] = []
        reflect.accumulateClassList(cls, attribute, found)
        names.extend(str(entry[0]) for entry in found)
    return names


@pytest.mark.parametrize("command", ["twistd", "sink"])
def test_server_option_names_agree_with_the_definitions(command):
    """
    The options whose ServerOptions errors are named (--max-clients for
    max_clients) are exactly the defined options named after a field: none
    forgotten, none invented.
    """
    import dataclasses

    from txsmtpsrv._options import ServerOptions
    from txsmtpsrv._sink import SinkOptions

    cls = Options if command == "twistd" else SinkOptions
    fields = {f.name for f in dataclasses.fields(ServerOptions)}
    expected = {name for name in _defined_options(cls) if name.replace("-", "_") in fields}
    assert expected >= {"name", "banner", "size", "max-clients", "socket-timeout", "close-timeout"}
    assert _optcheck.server_option_names(cls()) == expected


def test_a_new_sink_option_named_after_a_field_is_passed_on_and_its_error_named(tmp_path, monkeypatch):
    """
    An option added to the sink under a ServerOptions field's name reaches
    the server and its ServerOptions error names it, with nothing else to
    update (a hand-kept list of names forgot such options).
    """
    from txsmtpsrv._sink import SinkOptions

    class More(SinkOptions):
        optParameters = [["max-recipients", None, None, "Recipients per message.", int],
                         ["helo-response", None, None, "First line of the EHLO reply."]]

    monkeypatch.chdir(tmp_path)
    ok = More()
    ok.parseOptions(["--max-recipients", "7"])
    assert ok.serverKwargs["max_recipients"] == 7
    with pytest.raises(usage.UsageError, match=r"^--helo-response "):
        More().parseOptions(["--helo-response", "{nosuchfield}"])


def test_both_commands_share_the_start_up_checks(tmp_path, monkeypatch):
    """check_common: one delivery, absolute paths, the default endpoint; the same texts from both."""
    from txsmtpsrv._sink import DEFAULT_LISTEN, SinkOptions

    monkeypatch.chdir(tmp_path)
    for cls in (Options, SinkOptions):
        with pytest.raises(usage.UsageError, match="^--maildir and --mbox exclude each other"):
            cls().parseOptions(["--maildir", "m", "--mbox", "x"])
        o = cls()
        o.parseOptions(["--mbox", "box"])
        assert o["mbox"] == str(tmp_path / "box") and o["listen"]
    sink = SinkOptions()
    sink.parseOptions([])
    assert sink["maildir"] is None and sink["listen"] == [DEFAULT_LISTEN]
    twistd = Options()
    twistd.parseOptions([])
    assert twistd["maildir"] == str(tmp_path / "Maildir") and os.path.isdir(tmp_path / "Maildir" / "tmp")


def test_tls_key_file_holding_the_certificate(tmp_path, monkeypatch):
    """Both commands accept one --tls-key file holding key and certificate (the sink used to want both options)."""
    from txsmtpsrv._selfsigned import cert_pem, key_pem, self_signed
    from txsmtpsrv._sink import SinkOptions

    monkeypatch.chdir(tmp_path)
    key, cert = self_signed("localhost")
    both = tmp_path / "both.pem"
    both.write_bytes(key_pem(key) + cert_pem(cert))
    sink = SinkOptions()
    sink.parseOptions(["--tls-key", str(both)])
    twistd = Options()
    twistd.parseOptions(["--tls-key", str(both)])
    assert sink.serverKwargs["tls"] == {"key": str(both)} == {k: v for k, v in twistd.serverKwargs["tls"].items()
                                                              if k == "key"}
