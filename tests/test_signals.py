# -*- test-case-name: tests.test_signals -*-
"""
Signals of C{twistd smtpsrv}, for real: SIGHUP reloads the certificates in
every process (parent and workers), each logging once with the new
certificate's subject and expiry; a SIGHUP right after start-up is handled
(the handler is installed before the ports open); a failed reload is one
error line; with C{--workers} and no certificate, every process serves the
same development certificate. C{SIGUSR1} (and C{SIGHUP}) reopen C{--log-json}
after logrotate renamed it, C{SIGUSR1} rotating twistd's C{--logfile} as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import smtplib
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Set, TypeVar

from twisted.logger import eventsFromJSONLogFile, formatEvent

from tests._certs import make_ca, unverified_client_context, write_pem
from tests.test_twistd import CLEAN_EXITS, TIMEOUT, Twistd, workers_with_policy


def fingerprint(port: int, context: ssl.SSLContext) -> str:
    """SHA-256 of the certificate the server presents after STARTTLS."""
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.starttls(context=context)
        der = client.sock.getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest()


def reload_lines(log: str) -> Set[str]:
    return set(re.findall(r"^.*TLS configuration reloaded.*$", log, re.M))


def test_sighup_reaches_every_worker(tmp_path):
    """--workers 2: after the files change, SIGHUP makes parent and worker serve the new certificate."""
    ca = make_ca()
    old, new = ca.issue("old.test"), ca.issue("new.test")
    key = write_pem(str(tmp_path), "key.pem", old.key_pem)
    cert = write_pem(str(tmp_path), "cert.pem", old.cert_pem)
    server, pids_file = workers_with_policy(tmp_path, "--tls-key", key, "--tls-cert", cert)
    try:
        worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
        server.wait_for(rf"worker {worker}\] txsmtpsrv ready")
        context = unverified_client_context()
        assert {fingerprint(server.port, context) for _ in range(6)} == {hashlib.sha256(
            ssl.PEM_cert_to_DER_cert(old.cert_pem.decode())).hexdigest()}
        write_pem(str(tmp_path), "key.pem", new.key_pem)
        write_pem(str(tmp_path), "cert.pem", new.cert_pem)
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_for(r"TLS configuration reloaded: certificate CN=new\.test, expires 20\d\d-")
        server.wait_for(r"TLS configuration reloaded: certificate CN=new\.test, expires 20\d\d-")
        time.sleep(0.5)  # a third reload line would show by now
        lines = [line for line in reload_lines(server.log()) if "new.test" in line]
        assert len(lines) == 2, lines  # once per process
        assert len([line for line in lines if f"worker {worker}]" in line]) == 1
        expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(new.cert_pem.decode())).hexdigest()
        pids_file.write_text("")
        assert {fingerprint(server.port, context) for _ in range(20)} == {expected}
        assert set(int(p) for p in pids_file.read_text().split()) == {server.proc.pid, worker}
        assert server.terminate() in CLEAN_EXITS
    finally:
        server.kill()


def test_sighup_right_after_start_is_handled(tmp_path):
    """SIGHUP as soon as the port is announced: no death, one reload in the parent and in the worker."""
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--workers", "2"])
    try:
        os.kill(server.proc.pid, signal.SIGHUP)  # the worker may not even be started yet
        worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
        server.wait_for(r"TLS configuration reloaded")
        server.wait_for(rf"\[txsmtpsrv._tls#info worker {worker}\] TLS configuration reloaded")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            assert client.noop()[0] == 250
        assert server.proc.poll() is None
        assert "exited unexpectedly" not in server.log()
        assert server.terminate() in CLEAN_EXITS
    finally:
        server.kill()


def test_sighup_single_process_right_after_start(tmp_path):
    """One process: a SIGHUP sent the moment 'listening on' is logged reloads instead of killing twistd."""
    for _ in range(3):
        server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup"])
        try:
            os.kill(server.proc.pid, signal.SIGHUP)
            server.wait_for(r"TLS configuration reloaded: certificate CN=")
            assert server.terminate() in CLEAN_EXITS
        finally:
            server.kill()


def test_failed_reload_is_one_error_line(tmp_path):
    """A broken certificate file on SIGHUP: one error line, no traceback, the old certificate stays."""
    ca = make_ca()
    leaf = ca.issue("mx.test")
    key = write_pem(str(tmp_path), "key.pem", leaf.key_pem)
    cert = write_pem(str(tmp_path), "cert.pem", leaf.cert_pem)
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup",
                               "--tls-key", key, "--tls-cert", cert])
    try:
        Path(cert).write_text("not a certificate\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        line = server.wait_for(r"^.*TLS reload failed.*$").group(0)
        assert "#error]" in line and "previous certificates stay in use" in line
        expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.cert_pem.decode())).hexdigest()
        assert fingerprint(server.port, unverified_client_context()) == expected
        assert server.terminate() in CLEAN_EXITS
        assert "Traceback" not in server.log()
    finally:
        server.kill()


def test_workers_share_one_development_certificate(tmp_path):
    """--workers 2 without certificates: one development certificate, made by the parent, for all."""
    server, pids_file = workers_with_policy(tmp_path)
    try:
        worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
        server.wait_for(rf"worker {worker}\] txsmtpsrv ready")
        directory = Path(re.search(r"development certificate for all processes in (\S+) ", server.log()).group(1))
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        assert oct((directory / "key.pem").stat().st_mode & 0o777) == "0o600"
        context = unverified_client_context()
        prints = {fingerprint(server.port, context) for _ in range(20)}
        assert set(int(p) for p in pids_file.read_text().split()) == {server.proc.pid, worker}
        assert len(prints) == 1
        assert server.log().count("self-signed development TLS certificate") == 1
        assert server.terminate() in CLEAN_EXITS
        assert not directory.exists()
    finally:
        server.kill()


# ---------------------------------------------------------------------------
# --log-json and log rotation

T = TypeVar("T")


def json_events(path: Path) -> List[Dict[str, Any]]:
    """Every line of a --log-json file, each of which must be a JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def formats(events: List[Dict[str, Any]], start: str) -> List[Dict[str, Any]]:
    return [e for e in events if e.get("log_format", "").startswith(start)]


def eventually(check: Callable[[], T]) -> T:
    """Poll C{check} until it gives something true; fail after L{TIMEOUT} seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_sigusr1_and_sighup_reopen_log_json(tmp_path):
    """logrotate renames --log-json, then signals: the next events are JSON lines in a new file at the path."""
    path = tmp_path / "events.json"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--log-json", str(path)])
    try:
        path.rename(tmp_path / "events.json.1")
        os.kill(server.proc.pid, signal.SIGUSR1)
        server.wait_for(rf"JSON log reopened: {re.escape(str(path))}$")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            assert client.ehlo("rotated.test")[0] == 250
        server.wait_for(r"connection closed: .* helo=rotated\.test")
        path.rename(tmp_path / "events.json.2")
        os.kill(server.proc.pid, signal.SIGHUP)  # a reload reopens it too
        server.wait_for(r"TLS configuration reloaded")
        assert server.terminate() in CLEAN_EXITS
        assert "Traceback" not in server.log()
    finally:
        server.kill()
    first, second, third = (json_events(tmp_path / name) for name in ("events.json.1", "events.json.2", "events.json"))
    assert formats(first, "txsmtpsrv {protocol} listening on") and not formats(first, "JSON log reopened")
    assert second[0]["log_format"].startswith("JSON log reopened") and third[0]["log_format"].startswith("JSON log")
    assert [e["helo"] for e in formats(first + second + third, "connection closed:")] == ["rotated.test"]
    assert formats(second, "connection closed:") and formats(third, "TLS configuration reloaded")
    assert formats(third, "txsmtpsrv stopped listening")
    everything = [(e["log_time"], e["log_format"]) for e in first + second + third]
    assert len(everything) == len(set(everything))  # nothing written twice


def test_sigusr1_rotates_twistd_logfile_too(tmp_path):
    """twistd --logfile: its SIGUSR1 handler still runs (it rotates its file), so one signal turns both over."""
    path, text = tmp_path / "events.json", tmp_path / "text.log"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--log-json", str(path)],
                    logfile=text)
    try:
        port = int(eventually(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", text.read_text()
                                                if text.exists() else "")).group(1))
        path.rename(tmp_path / "events.json.1")
        os.kill(server.proc.pid, signal.SIGUSR1)
        eventually(lambda: path.exists() and (tmp_path / "text.log.1").exists())
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
            assert client.ehlo("rotated.test")[0] == 250
        eventually(lambda: "helo=rotated.test" in text.read_text())
        assert server.terminate() in CLEAN_EXITS
    finally:
        server.kill()
    assert "listening on 127.0.0.1:" in (tmp_path / "text.log.1").read_text()
    assert "listening on 127.0.0.1:" not in text.read_text() and "Traceback" not in text.read_text()
    # the summary keeps its {duration:.3f} in both logs (the JSON writer once left twistd's every digit)
    assert re.search(r"connection closed: .* helo=rotated\.test .* duration=\d+\.\d{3}s$", text.read_text(), re.M)
    with path.open() as f:
        [summary] = [formatEvent(e) for e in eventsFromJSONLogFile(f)
                     if e["log_format"].startswith("connection closed:")]
    assert re.fullmatch(r"connection closed: .* duration=\d+\.\d{3}s", summary)
    assert not formats(json_events(tmp_path / "events.json.1"), "connection closed:")


def test_sigusr1_reopens_log_json_with_workers(tmp_path):
    """--workers 2: the parent writes the file, the workers' events too (relayed), so its reopen covers them."""
    path = tmp_path / "events.json"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--workers", "2",
                               "--log-json", str(path)])
    try:
        worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
        server.wait_for(rf"worker {worker}\] txsmtpsrv ready")
        path.rename(tmp_path / "events.json.1")
        os.kill(server.proc.pid, signal.SIGUSR1)
        server.wait_for(r"JSON log reopened")
        os.kill(server.proc.pid, signal.SIGHUP)  # every process logs a reload: the worker's goes through the parent
        server.wait_for(rf"\[txsmtpsrv._tls#info worker {worker}\] TLS configuration reloaded")
        assert server.terminate() in CLEAN_EXITS
        assert "exited unexpectedly" not in server.log()
    finally:
        server.kill()
    old, new = json_events(tmp_path / "events.json.1"), json_events(path)
    assert [e for e in old if e.get("worker_pid") == worker] and not formats(old, "TLS configuration reloaded")
    assert {e.get("worker_pid") for e in formats(new, "TLS configuration reloaded")} == {None, worker}
