# -*- test-case-name: tests.test_bench_peers -*-
"""
The benchmark's plumbing for its peers (bench/_peers.py, _toolchains.py, _smtp_source.py).

Benchmarks are not tests and never assert timings; these tests check what the benchmark
promises regardless of speed: a peer whose toolchain is missing is skipped with a note
saying what to install, smtp-source's load is split and counted as documented (with a fake
smtp-source, so no Postfix is needed), the Python sinks offer STARTTLS with a given
certificate (the interface the TLS scenarios use), and a bad command line is refused.
Node, Go and Postfix themselves are installed only by ``bench/install-peers.sh``, not by
tests/run.sh, so nothing here needs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import _certs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)

import _common  # noqa: E402
import _load  # noqa: E402
import _peers  # noqa: E402
import _smtp_source  # noqa: E402
import _mypyc  # noqa: E402


@pytest.fixture
def no_tools(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment in which no peer toolchain can be found and the cache is private."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("TXSMTPSRV_BENCH_PATH", str(empty))
    monkeypatch.setenv("TXSMTPSRV_BENCH_CACHE", str(tmp_path / "cache"))
    return dict(os.environ)


def test_missing_toolchains_give_notes(no_tools: dict[str, str]) -> None:
    """Without node, go or Postfix each native peer is unavailable, with what to install."""
    notes = {kind: _peers.unavailable(kind) for kind in _peers.NATIVE_KINDS}
    assert notes["node"] is not None and "node not found" in notes["node"]
    assert notes["go-smtp"] is not None and "go not found" in notes["go-smtp"]
    assert notes["smtp-sink"] is not None and "smtp-sink not found" in notes["smtp-sink"]
    for note in notes.values():
        assert note is not None and "bench/install-peers.sh" in note
    assert _smtp_source.available() is not None
    assert _peers.unavailable("txsmtpsrv") is None  # the Python kinds do not need those tools


def test_bench_skips_missing_peers_and_reports_them(no_tools: dict[str, str]) -> None:
    """A run naming absent peers measures the others and lists the absent ones with a note."""
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench.py"), "--quick", "--scenarios", "latency",
         "--servers", "txsmtpsrv,node,go-smtp,smtp-sink"],
        capture_output=True, text=True, env=no_tools, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "node not measured: node not found" in proc.stdout
    assert "go-smtp not measured: go not found" in proc.stdout
    assert "smtp-sink not measured: smtp-sink not found" in proc.stdout
    assert "skipping node" in proc.stderr
    assert "latency" in proc.stdout and "txsmtpsrv" in proc.stdout


def test_smtp_source_client_needs_smtp_source(no_tools: dict[str, str]) -> None:
    """--client smtp-source without Postfix stops at once, saying what is missing."""
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench.py"), "--quick", "--client", "smtp-source",
         "--servers", "txsmtpsrv"],
        capture_output=True, text=True, env=no_tools, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 2
    assert "smtp-source not found" in proc.stderr


def test_smtp_source_refuses_pipelining() -> None:
    """smtp-source cannot pipeline: asking for both is a usage error."""
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench.py"), "--client", "smtp-source", "--pipelining"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 2
    assert "does not pipeline" in proc.stderr


FAKE_SMTP_SOURCE = """#!/bin/sh
# A stand-in for Postfix's smtp-source: logs its arguments, prints -c counters.
echo "$@" >> "{log}"
m=1
while [ $# -gt 0 ]; do
    case "$1" in -m) m=$2; shift;; esac
    shift
done
fail_after={fail_after}
i=1
while [ $i -le $m ]; do
    if [ $i -gt $fail_after ]; then
        echo "smtp-source: fatal: DATA: 554 5.0.0 refused" >&2
        exit 1
    fi
    printf '\\r%d' $i
    i=$((i + 1))
done
"""


@pytest.fixture
def fake_smtp_source(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Install a fake smtp-source on TXSMTPSRV_BENCH_PATH; yields a function making it fail."""
    tools = tmp_path / "tools"
    tools.mkdir()
    log = tmp_path / "argv.log"
    monkeypatch.setenv("TXSMTPSRV_BENCH_PATH", str(tools))

    def write(fail_after: int = 10**9) -> Any:
        script = tools / "smtp-source"
        script.write_text(FAKE_SMTP_SOURCE.format(log=log, fail_after=fail_after))
        script.chmod(0o755)
        return log

    yield write


def _run_load(**kwargs: Any) -> _load.Tally:
    tally = _load.Tally()
    asyncio.run(_smtp_source.message_load(4242, tally=tally, deadline=30, size=1024, **kwargs))
    return tally


def test_smtp_source_persist_keeps_messages_per_connection(fake_smtp_source: Any) -> None:
    """persist: runs of -m sessions*per_connection with -d, so each connection sends ~per_connection."""
    log = fake_smtp_source()
    tally = _run_load(sessions=20, total=4500, per_connection=100)
    assert (tally.delivered, tally.failures) == (4500, 0)
    runs = log.read_text().splitlines()
    assert len(runs) == 3
    assert [r.split()[r.split().index("-m") + 1] for r in runs] == ["2000", "2000", "500"]
    for r in runs:
        words = r.split()
        assert "-d" in words and "-c" in words
        assert words[words.index("-s") + 1] == "20"
        assert words[words.index("-l") + 1] == "1024"
        assert words[-1] == "127.0.0.1:4242"


def test_smtp_source_churn_is_one_run_without_d(fake_smtp_source: Any) -> None:
    """churn: one run, a connection per message (no -d)."""
    log = fake_smtp_source()
    tally = _run_load(sessions=20, total=300, per_connection=1)
    assert (tally.delivered, tally.failures) == (300, 0)
    (run,) = log.read_text().splitlines()
    assert "-d" not in run.split() and " -m 300 " in f" {run} "


def test_smtp_source_failure_counts_undelivered(fake_smtp_source: Any) -> None:
    """A refused message (smtp-source exits 1) counts the rest of its run as failed, with the reason."""
    fake_smtp_source(fail_after=150)
    tally = _run_load(sessions=20, total=4000, per_connection=100)
    assert tally.delivered == 150
    assert tally.failures == 1850
    assert "exited 1 after 150/2000" in tally.errors[0] and "554 5.0.0 refused" in tally.errors[0]


def test_counter_parsing() -> None:
    """The last -c counter is the number delivered; nothing printed means none."""
    assert _smtp_source._counted(b"\r1\r2\r3\r10") == 10
    assert _smtp_source._counted(b"") == 0


# ---------------------------------------------------------------- STARTTLS interface


def _start(kind: str, *extra: str) -> tuple[subprocess.Popen[bytes], int, int, str]:
    argv = _peers.command(kind)
    proc = subprocess.Popen(argv + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_peers.server_env(), cwd=REPO)
    assert proc.stdout is not None
    end = time.monotonic() + 30
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    parts = line.decode().split(None, 3)
    assert parts[:1] == ["READY"], (line, proc.stderr.read() if proc.poll() is not None else b"")
    return proc, int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else ""


@pytest.fixture(scope="module")
def leaf() -> tuple[str, str, _certs.CA]:
    ca = _certs.make_ca()
    directory = _certs.pem_dir("bench-peers-")
    paths = _certs.write_leaf(directory, "sink", ca.issue("bench"))
    return paths["sink.crt"], paths["sink.key"], ca


@pytest.mark.parametrize("kind", ["txsmtpsrv", "twisted.mail"])
def test_python_sinks_offer_starttls_with_given_certificate(kind: str, leaf: Any) -> None:
    """--cert/--key: STARTTLS with exactly that certificate, then a message is accepted."""
    cert, key, ca = leaf
    proc, port, pid, _ = _start(kind, "--cert", cert, "--key", key)
    try:
        assert pid == proc.pid
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")
            client.starttls(context=_certs.client_context(ca))
            sock: Any = client.sock
            assert sock.version() is not None
            client.ehlo("client.test")
            client.sendmail("a@client.test", ["b@server.test"], b"Subject: x\r\n\r\nbody\r\n")
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_bad_server_command_lines() -> None:
    """smtp-sink has no TLS; --cert needs --key; unknown kinds are refused."""
    with pytest.raises(ValueError):
        _peers.command("smtp-sink", "c.pem", "k.pem")
    with pytest.raises(ValueError):
        _peers.command("postfix")
    for argv in (["smtp-sink", "--cert", "c", "--key", "k"], ["node", "--cert", "c"], ["nope"]):
        proc = subprocess.run([sys.executable, os.path.join(BENCH, "_peers.py"), *argv],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (argv, proc.stderr)


def test_tls_bench_smoke_run_resumes(tmp_path: Any) -> None:
    """bench/tls.py --quick against txsmtpsrv: every scenario measured, and every resuming connection resumed
    (issue 13: TLS session resumption works); the figures themselves are not checked."""
    out = tmp_path / "tls.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "tls.py"), "--quick", "--servers", "txsmtpsrv", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    figures = result["servers"]["txsmtpsrv"]
    assert {"persist", "large", "plain", "full", "resumed", "handshake"} <= set(figures)
    assert figures["resumed"]["resumed_share"] == 1.0
    assert result["openssl"]["resumed_share"] == 1.0


@pytest.mark.parametrize("code, error", [
    ("print('hello', flush=True)", "unexpected start line b'hello\\n'"),
    ("import sys; sys.exit(3)", "exited with 3 before listening"),
    ("import time; time.sleep(30)", "no READY line within 1 s"),
])
def test_wait_ready_refuses(code: str, error: str) -> None:
    """Every bench script's server start fails with the reason, bounded in time."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        with pytest.raises(_common.NotReady) as caught:
            _common.wait_ready(proc, 1.0)
        assert str(caught.value) == error
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_wait_ready_reads_port_pid_detail() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "print('READY 2525 42 kind=x y', flush=True)"],
                            stdout=subprocess.PIPE)
    try:
        assert _common.wait_ready(proc, 30.0) == (2525, 42, "kind=x y")
    finally:
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


# -- bench/_mypyc.py: the compiled build for txsmtpsrv+mypyc ----------------------------------------


def _fake_pip_wheel(monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    """subprocess.run makes a one-file wheel in its -w directory (or fails) instead of compiling."""
    import zipfile

    def run(cmd: list[str], **kwargs: Any) -> Any:
        if fail:
            raise subprocess.CalledProcessError(1, cmd)
        with zipfile.ZipFile(os.path.join(cmd[cmd.index("-w") + 1], "txsmtpsrv-0-py3-none-any.whl"), "w") as z:
            z.writestr("txsmtpsrv/_fake.so", "x")

    monkeypatch.setattr(_mypyc.subprocess, "run", run)
    monkeypatch.setattr(_mypyc, "check_tree", lambda tree: None)


@pytest.mark.parametrize("fail", [False, True])
def test_mypyc_build_tree_leaves_only_the_tree(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    """The wheel's directory goes; a temporary tree stays only when the build worked (and says where)."""
    import io

    monkeypatch.setattr(_mypyc.tempfile, "tempdir", str(tmp_path))
    _fake_pip_wheel(monkeypatch, fail)
    log = io.StringIO()
    if fail:
        with pytest.raises(subprocess.CalledProcessError):
            _mypyc.build_tree(log=log)
        assert os.listdir(tmp_path) == []
    else:
        tree = _mypyc.build_tree(log=log)
        assert os.listdir(tmp_path) == [os.path.basename(tree)]
        assert os.path.exists(os.path.join(tree, "txsmtpsrv", "_fake.so"))
        assert f"--mypyc-tree {tree}" in log.getvalue()
