# -*- test-case-name: tests.test_cli -*-
"""
The command line of C{twistd smtpsrv} (L{txsmtpsrv._cli}): every
L{ServerOptions} limit under the same name, C{--version}, a help without the
internal flag, and start-up errors that are one line naming the option and
the value (exit status 1, no traceback, no help dump), checked on the real
twistd.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from twisted.python import usage

from txsmtpsrv import ServerOptions, __version__
from txsmtpsrv._cli import LIMITS, Options, limit_fields, worker_arguments

ROOT = Path(__file__).resolve().parent.parent


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_every_limit_is_an_option_of_the_same_name():
    """Each numeric ServerOptions field (a limit) has a --dashed-name option; a new limit fails here."""
    names = {field for field, _, _ in LIMITS}
    missing = [field for field in limit_fields() if field not in names]
    assert not missing, f"ServerOptions limits without a command-line option: {missing}"
    assert {"max_recipients", "hook_timeout", "min_data_rate", "socket_timeout", "close_timeout"} <= names


def test_limits_reach_the_server_options(tmp_path, monkeypatch):
    """Values given on the command line end up in ServerOptions, converted."""
    monkeypatch.chdir(tmp_path)
    options = parse("--max-recipients", "7", "--hook-timeout", "2.5", "--min-data-rate", "0",
                    "--socket-timeout", "9", "--close-timeout", "4", "--max-command-length", "1024",
                    "--max-unrecognized-commands", "3", "--max-auth-failures", "2",
                    "--max-allowed-unauthenticated-commands", "4", "--reverse-lookup-timeout", "0.5",
                    "--size", "100", "--max-clients", "5", "--bare-line-endings", "accept",
                    "--disabled-commands", "VRFY,EXPN", "--ignored-hosts", "10.0.0.0/8",
                    "--helo-response", "{name} hi", "--needs-upgrade")
    built = ServerOptions.build(**options.serverKwargs)
    assert (built.max_recipients, built.hook_timeout, built.min_data_rate, built.socket_timeout) == (7, 2.5, 0, 9.0)
    assert (built.close_timeout, built.max_command_length, built.max_unrecognized_commands) == (4.0, 1024, 3)
    assert (built.max_auth_failures, built.max_allowed_unauthenticated_commands) == (2, 4)
    assert (built.reverse_lookup_timeout, built.size, built.max_clients) == (0.5, 100, 5)
    assert built.bare_line_endings == "accept" and built.disabled_commands == {"VRFY", "EXPN"}
    assert [str(n) for n in built.ignored_hosts] == ["10.0.0.0/8"]
    assert built.helo_response == "{name} hi" and built.needs_upgrade


@pytest.mark.parametrize("args, message", [
    (["--max-recipients", "many"], "--max-recipients: 'many' is not an integer >= 1"),
    (["--hook-timeout", "-1"], "--hook-timeout: '-1' is not a positive number of seconds"),
    (["--max-command-length", "100"], "--max-command-length: '100' is not an integer >= 512"),
    (["--bare-line-endings", "maybe"], "--bare-line-endings: 'maybe' is not one of reject, accept"),
    (["--disabled-commands", "FOO"], "--disabled-commands: unknown command(s) FOO"),
    (["-l", "smtpproxy:trusted=notacidr:tcp:2635"],
     "--listen smtpproxy:trusted=notacidr:tcp:2635: 'notacidr' is not a network"),
    # Host bits: the network lists' own error (it trusted all of 10.0.0.0/8).
    (["-l", "smtpproxy:trusted=10.0.0.1/8:tcp:2635"],
     "--listen smtpproxy:trusted=10.0.0.1/8:tcp:2635: '10.0.0.1/8' has host bits set: write 10.0.0.0/8 for the "
     "network, or 10.0.0.1/32 for the one address"),
    (["--auth", "file:/nonexistent"], "--auth file:/nonexistent: no such file"),
    (["--metrics", "tcp:x"], "--metrics tcp:x: invalid literal"),
    # Coerced while parsing: named too (Twisted's own text, "Parameter type enforcement failed", is not).
    (["--workers", "0"], "--workers: '0' is not an integer >= 1"),
    (["--tls-ticket-lifetime", "-1"], "--tls-ticket-lifetime: '-1' is not a positive number of seconds"),
    (["--xclient-trusted", "10.0.0.0/8,nowhere"], "--xclient-trusted: 'nowhere' is not a network"),
    (["--xclient-trusted", ","], "--xclient-trusted: ',' names no network"),
    (["--xclient-trusted", "10.1.2.3/8"], "--xclient-trusted: '10.1.2.3/8' has host bits set: write 10.0.0.0/8"),
    (["--ipv6-prefix", "129"], "--ipv6-prefix: '129' is not an integer from 0 to 128"),
    (["--greeting-delay", "3601"], "--greeting-delay: '3601' is not a number of seconds from 0 to 3600"),
])
def test_bad_values_name_option_and_value(tmp_path, monkeypatch, args, message):
    """
    Each mistake is a UsageError naming the option and the value (those the
    sink shares: tests/test_optcheck.py, which also compares both commands' text).
    """
    monkeypatch.chdir(tmp_path)
    with pytest.raises(usage.UsageError) as raised:
        parse(*args)
    assert str(raised.value).startswith(message)


def test_unwritable_maildir_is_refused(tmp_path):
    """A Maildir that cannot be created (here: under a regular file) refuses to start, even as root."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(usage.UsageError, match=r"--maildir .*/file/Maildir: cannot create"):
        parse("--maildir", str(blocker / "Maildir"))


def test_maildir_is_created_and_probed(tmp_path):
    """A missing Maildir is created at start-up (cur/new/tmp) and left without probe files."""
    parse("--maildir", str(tmp_path / "box"))
    assert sorted(os.listdir(tmp_path / "box")) == ["cur", "new", "tmp"]
    assert os.listdir(tmp_path / "box" / "tmp") == []


def test_mbox_directory_is_not_created(tmp_path):
    """--mbox in a missing directory is refused and nothing is created."""
    with pytest.raises(usage.UsageError):
        parse("--mbox", str(tmp_path / "missing" / "box"))
    assert not (tmp_path / "missing").exists()


def test_help_hides_the_internal_worker_flag():
    """--help lists --workers but not the internal --worker."""
    text = str(Options())
    assert "--workers=" in text
    assert "--worker " not in text and "--worker\n" not in text
    assert "--max-recipients=" in text and "--metrics=" in text and "--log-json=" in text


def test_worker_arguments_round_trip(tmp_path, monkeypatch):
    """A worker given worker_arguments() gets the parent's server options (not --listen/--workers)."""
    monkeypatch.chdir(tmp_path)
    parent = parse("--workers", "3", "--max-recipients", "9", "--hook-timeout", "12", "--lmtp", "--name", "mx.test",
                   "--log-json", str(tmp_path / "j.json"), "-l", "tcp:0")
    args = worker_arguments(parent)
    assert not [a for a in args if a.startswith(("--workers", "--listen", "--log-json"))]
    worker = parse("--worker", *args)
    assert worker.serverKwargs == parent.serverKwargs


# ---------------------------------------------------------------------------
# The real twistd


def twistd(args: List[str], cwd: Path) -> "subprocess.Popen[bytes]":
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                             "-n", "--pidfile=", "smtpsrv", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


BAD = [
    (["-l", "bogus:1"], "--listen bogus:1"),
    (["-l", "tcp:notaport"], "--listen tcp:notaport"),
    (["-l", "smtpproxy:trusted=notacidr:tcp:2635"], "--listen smtpproxy:trusted=notacidr:tcp:2635"),
    (["--auth", "file:/nonexistent"], "--auth file:/nonexistent"),
    (["--mbox", "/nonexistent/dir/box"], "--mbox /nonexistent/dir/box"),
    (["--max-recipients", "x"], "--max-recipients: 'x'"),
    (["--no-such-option"], "--no-such-option"),
    (["--workers", "2", "-l", "adopted:5:INET"], "--workers: cannot share --listen adopted:5:INET"),
]


def test_twistd_start_up_errors_are_one_line(tmp_path):
    """Under twistd each mistake prints one line on stderr and exits 1: no traceback, no help."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = BAD + [(["--maildir", str(blocker / "Maildir")], f"--maildir {blocker}/Maildir: cannot create")]
    running = [(twistd(args, tmp_path), expected) for args, expected in cases]  # in parallel: 2 s, not 20
    for proc, expected in running:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # it started after all: stop it (and its workers) rather than leak it
                proc.terminate()
                proc.wait(timeout=60)
        lines = err.decode().splitlines()
        assert proc.returncode == 1, (expected, out, err)
        assert len(lines) == 1 and lines[0].startswith("twistd smtpsrv: error: "), (expected, err)
        assert expected in lines[0]
        assert b"Traceback" not in out + err and b"Usage:" not in out + err


def test_twistd_version(tmp_path):
    """twistd smtpsrv --version prints txsmtpsrv's version."""
    proc = twistd(["--version"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.decode().startswith(f"txsmtpsrv {__version__} (Twisted ")


def test_twistd_port_in_use_is_one_line(tmp_path):
    """A port another program holds: one critical line naming it, exit status 1, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = twistd(["-l", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    text = (out + err).decode()
    [line] = [line for line in text.splitlines() if "cannot listen" in line]
    assert f"twistd smtpsrv: error: cannot listen on tcp:{port}:interface=127.0.0.1: " in line
    assert "Address already in use" in line and "Traceback" not in text


def test_daemon_port_in_use_fails_the_start(tmp_path):
    """
    Daemonising (no -n), a port that cannot be bound is reported by the twistd
    command, which exits 1, and the pid file is removed: it used to wait for ever.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                                 f"--pidfile={pidfile}", f"--logfile={logfile}", "smtpsrv",
                                 "-l", f"tcp:{port}:interface=127.0.0.1"], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in err.decode()
    assert not pidfile.exists()
    assert f"twistd smtpsrv: error: cannot listen on tcp:{port}:interface=127.0.0.1: " in logfile.read_text()


def test_failed_start_leaves_no_temporary_directories(tmp_path, monkeypatch):
    """makeService failing after making its temporary directories removes them again."""
    import tempfile

    from twisted.internet.testing import MemoryReactorClock

    from txsmtpsrv._tap import makeService

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        options = parse("--maildir", str(tmp_path / "Maildir"), "--workers", "2", "--metrics", "tcp:0",
                        "-l", f"tcp:{port}:interface=127.0.0.1")
        with pytest.raises(usage.UsageError, match="Address already in use"):
            makeService(options, reactor=MemoryReactorClock())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Maildir"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
