# -*- test-case-name: tests.test_tap_options -*-
"""
The C{twistd smtpsrv} options (L{txsmtpsrv._tap.Options}), parsed in memory:
defaults, conversions, bad command lines, --help documenting every option,
the plugin being found, and the endpoint strings --workers binds.
"""

from __future__ import annotations

import socket

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from txsmtpsrv._sharedports import _endpoint_arguments, shareable_address as _shareable_address
from txsmtpsrv._cli import DEFAULT_LISTEN
from txsmtpsrv._tap import Options, makeService

from tests._certs import make_ca, write_pem
from tests._tap import _scratch_directory  # noqa: F401 (the autouse fixture)
from tests._tap import parse


# ---------------------------------------------------------------------------
# Options


def test_defaults(tmp_path, monkeypatch):
    """No options: one loopback listener on 2525, ./Maildir (absolute), one process, 1000 clients."""
    monkeypatch.chdir(tmp_path)
    options = parse()
    assert options["listen"] == [DEFAULT_LISTEN] == ["tcp:2525:interface=127.0.0.1"]
    assert options["maildir"] == str(tmp_path / "Maildir")
    assert options["mbox"] is None
    assert options["workers"] == 1
    assert options["max-clients"] == 1000
    assert not options["lmtp"]
    assert options.credentialCheckers() == []


def test_listen_is_repeatable():
    """--listen and -l add endpoints in order and replace the default."""
    options = parse("-l", "tcp:25", "--listen", "unix:/tmp/x.sock", "--listen=tcp6:25")
    assert options["listen"] == ["tcp:25", "unix:/tmp/x.sock", "tcp6:25"]


def test_values_are_converted(tmp_path, monkeypatch):
    """Numbers become ints/floats and paths absolute."""
    monkeypatch.chdir(tmp_path)
    leaf = make_ca().issue("mx.test")
    write_pem(str(tmp_path), "k.pem", leaf.key_pem)
    write_pem(str(tmp_path), "c.pem", leaf.cert_pem)
    options = parse("--size", "1000", "--max-clients", "5", "--socket-timeout", "1.5",
                    "--close-timeout", "2", "--workers", "3", "--mbox", "box",
                    "--tls-key", "k.pem", "--tls-cert", "c.pem")
    assert (options["size"], options["max-clients"], options["workers"]) == (1000, 5, 3)
    assert (options["socket-timeout"], options["close-timeout"]) == (1.5, 2.0)
    assert options["mbox"] == str(tmp_path / "box")
    assert options["maildir"] is None
    assert options["tls-key"] == str(tmp_path / "k.pem")
    assert options["tls-cert"] == str(tmp_path / "c.pem")


@pytest.mark.parametrize("argv", [
    ["--workers", "0"],
    ["--size", "-1"],
    ["--max-clients", "0"],
    ["--socket-timeout", "0"],
    ["--close-timeout", "x"],
    ["--maildir", "a", "--mbox", "b"],
    ["--workers", "2", "-l", "unix:/tmp/x.sock:mode=9x"],
    ["--workers", "2", "-l", "tcp:notaport"],
    ["--workers", "2", "--adopt", "3:INET"],
    ["--adopt", "x:INET"],
    ["--adopt", "3:APPLETALK"],
    ["--hooks", "no_such_module_txsmtpsrv:Hooks"],
    ["--auth", "no-such-checker:x"],
    ["--xclient-trusted", "10.0.0.0/33"],
    ["--xclient-trusted", "127.0.0.1,not-a-network"],
    ["--xclient-trusted", ","],
])
def test_bad_command_lines(argv):
    """Invalid values are usage errors, reported before anything starts."""
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_help_documents_every_option():
    """--help lists every option, including those the task names, each with some text."""
    options = Options()
    text = str(options)
    names = {name.rstrip("=") for name in options.longOpt}
    required = {"listen", "maildir", "mbox", "hooks", "name", "banner", "size", "max-clients",
                "socket-timeout", "close-timeout", "lmtp", "tls-key", "tls-cert", "workers", "auth",
                "help-auth", "adopt", "worker"}
    assert required <= names
    for name in names:
        assert f"--{name}" in text, name
        assert options.docs.get(name), f"--{name} has no help text"
    assert "-l, --listen=" in text
    assert "tcp:2525:interface=127.0.0.1" in text
    assert "./Maildir" in text


def test_plugin_is_found():
    """twistd finds the smtpsrv plugin and it points at this module."""
    import twisted.plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    maker = makers["smtpsrv"]
    assert maker.options is Options
    assert maker.makeService is makeService
    assert maker.description == "An SMTP/LMTP mail receiver."


def test_endpoint_argument_splitting():
    """Endpoint strings split like Twisted's: colons, key=value and backslash escapes."""
    assert _endpoint_arguments("tcp:25:interface=\\:\\:1") == (["tcp", "25"], {"interface": "::1"})
    assert _endpoint_arguments("tcp:25:127.0.0.1:100") == (["tcp", "25", "127.0.0.1", "100"], {})


@pytest.mark.parametrize("description, expected", [
    ("tcp:25", (socket.AF_INET, "0.0.0.0", 25, 50)),
    ("tcp:25:interface=127.0.0.1:backlog=7", (socket.AF_INET, "127.0.0.1", 25, 7)),
    ("tcp:25:127.0.0.1:9", (socket.AF_INET, "127.0.0.1", 25, 9)),
    ("tcp:0:interface=\\:\\:1", (socket.AF_INET6, "::1", 0, 50)),
    ("tcp6:25", (socket.AF_INET6, "::", 25, 50)),
    ("tcp6:25:9:\\:\\:1", (socket.AF_INET6, "::1", 25, 9)),
])
def test_shareable_addresses(description, expected):
    """tcp: and tcp6: strings give the address --workers binds (tcp6 takes backlog before interface)."""
    assert _shareable_address(description) == expected
