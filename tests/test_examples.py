# -*- test-case-name: tests.test_examples -*-
"""
Every program in C{examples/} runs as a real process and does its job.

Each test starts an example with C{sys.executable} (PYTHONPATH = the repo),
listening on 127.0.0.1 port 0 or a temporary UNIX socket; the port is read
from the example's own "listening on" log line, so no port is guessed. A
standard-library client (smtplib) then talks to it and the test checks the
effect: a file in a Maildir, per-recipient LMTP replies, a POST to a stub
HTTP API, a log line naming the client HAProxy saw. Every wait is bounded;
every process is stopped (SIGTERM, then kill) in cleanup. The hooks are also
exercised in memory where that is cheaper.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

import pytest

from tests._certs import make_ca, unverified_client_context, write_pem
from tests._support import HAProxy, haproxy_path, stop_process
from txsmtpsrv.testing import TestClient, make_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
START_TIMEOUT = 30.0
WAIT_TIMEOUT = 15.0
LISTENING = re.compile(r"listening on .*?port=(\d+)")


# ---------------------------------------------------------------------------
# Helpers


class Example:
    """An example program running as a subprocess, its output collected by reader threads."""

    def __init__(self, script: str, args: List[str], cwd: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.argv = [sys.executable, os.path.join(EXAMPLES, script), *args]
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read, args=(pipe, name), daemon=True)
            for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, pipe: Any, name: str) -> None:
        for raw in iter(pipe.readline, b""):
            with self.changed:
                self.output[name].append(raw.decode("utf-8", "replace"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def text(self, name: str = "stderr") -> str:
        with self.changed:
            return "".join(self.output[name])

    def wait_for(self, pattern: str | re.Pattern[str], name: str = "stderr",
                 timeout: float = WAIT_TIMEOUT) -> re.Match[str]:
        """Wait until C{pattern} appears in the output; fail with the output if it doesn't."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                m = regex.search("".join(self.output[name]))
                if m is not None:
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not any(r.is_alive() for r in self.readers)):
                    break
                self.changed.wait(min(remaining, 0.5))
        pytest.fail(f"{regex.pattern!r} not seen in {name} of {self.argv} (exit {self.proc.poll()});\n"
                    f"stdout:\n{self.text('stdout')}\nstderr:\n{self.text('stderr')}")

    def wait_for_port(self) -> int:
        """The TCP port from the example's "listening on" line, once it accepts connections."""
        port = int(self.wait_for(LISTENING, timeout=START_TIMEOUT).group(1))
        wait_until_accepting(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
        return port

    def stop(self) -> None:
        """SIGTERM, then kill if it lingers; join the reader threads."""
        stop_process(self.proc, 10)
        for reader in self.readers:
            reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def wait_until_accepting(connect: Callable[[], socket.socket], timeout: float = START_TIMEOUT) -> None:
    """Retry C{connect} (bounded) until it succeeds; close the probe connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe = connect()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            probe.close()
            return


@pytest.fixture
def run_example(tmp_path: Any) -> Any:
    """Start an example (stopped at teardown)."""
    started: List[Example] = []

    def run(script: str, *args: str) -> Example:
        example = Example(script, list(args), str(tmp_path))
        started.append(example)
        return example

    yield run
    for example in reversed(started):
        example.stop()
    for example in started:
        # Hooks must turn every failure into a reply; nothing may escape as a traceback.
        assert "Traceback" not in example.text(), example.text()
        if os.environ.get("TXSMTPSRV_SHOW_EXAMPLE_LOGS"):
            sys.stderr.write(f"\n==== {example.argv[1:]}\n{example.text()}")


def load_example(name: str) -> ModuleType:
    """Import C{examples/<name>.py} as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def maildir_messages(path: str) -> List[bytes]:
    """Contents of the messages in C{path}/new, oldest name first."""
    new = os.path.join(path, "new")
    if not os.path.isdir(new):
        return []
    result = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), "rb") as f:
            result.append(f.read())
    return result


MESSAGE = b"From: a@client.test\r\nTo: b@example.test\r\nSubject: example test\r\n\r\nHello from the test.\r\n"


# ---------------------------------------------------------------------------
# sink.py


def test_sink_prints_message(run_example: Any) -> None:
    """sink.py prints the envelope and body of a message it received."""
    example = run_example("sink.py", "tcp:0:interface=127.0.0.1")
    port = example.wait_for_port()
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
        refused = client.sendmail("a@client.test", ["b@example.test"], MESSAGE)
    assert refused == {}
    example.wait_for(r"---------- end", name="stdout")
    out = example.text("stdout")
    assert "MAIL FROM: a@client.test" in out
    assert "RCPT TO: b@example.test" in out
    assert "Subject: example test\nHello" not in out  # the blank line survives
    assert "Subject: example test\n\nHello from the test.\n" in out


# ---------------------------------------------------------------------------
# maildir_receiver.py


def test_maildir_receiver_stores_and_refuses(run_example: Any, tmp_path: Any) -> None:
    """maildir_receiver.py stores mail for its domain in Maildir/new and refuses other domains with 550."""
    maildir = str(tmp_path / "Maildir")
    example = run_example("maildir_receiver.py", maildir, "example.test", "tcp:0:interface=127.0.0.1")
    port = example.wait_for_port()
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test")[0] == 250
        code, text = client.rcpt("someone@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.1.2")
        assert client.rcpt("b@EXAMPLE.test")[0] == 250
        code, _ = client.data(MESSAGE)
        assert code == 250
    (stored,) = maildir_messages(maildir)
    assert stored.startswith(b"Return-Path: <a@client.test>\nReceived: from client.test")
    assert b"Subject: example test\n\nHello from the test.\n" in stored
    assert os.listdir(os.path.join(maildir, "tmp")) == []
    example.wait_for(r"refused recipient someone@elsewhere.test")


def test_maildir_receiver_hooks_in_memory(tmp_path: Any, monkeypatch: Any) -> None:
    """DomainMaildirHooks works in memory: 550 for other domains, a Maildir file for ours."""
    from txsmtpsrv import _diskio

    # In memory nothing runs the reactor that delivery threads answer through: file work inline.
    monkeypatch.setattr(_diskio, "DEFAULT_THREADS", 0)
    module = load_example("maildir_receiver")
    maildir = str(tmp_path / "M")
    server, _clock = make_server(module.DomainMaildirHooks(maildir, "example.test"))
    client = TestClient(server)
    replies = client.sendmail("a@client.test", ["x@other.test", "y@example.test"], MESSAGE)
    assert [r.code for r in replies] == [250, 250, 550, 250, 354, 250]
    assert len(maildir_messages(maildir)) == 1


# ---------------------------------------------------------------------------
# submission_server.py


def submit(port: int, user: str, password: str, message: bytes = MESSAGE,
           context: Optional[ssl.SSLContext] = None) -> smtplib.SMTP:
    """Connect, STARTTLS, log in; return the client (caller quits)."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT)
    client.ehlo("client.test")
    client.starttls(context=context or unverified_client_context())
    client.ehlo("client.test")
    client.login(user, password)
    return client


def test_submission_server(run_example: Any, tmp_path: Any) -> None:
    """submission_server.py: TLS before AUTH/MAIL, PLAIN and LOGIN against cred, size limit, Maildir."""
    maildir = str(tmp_path / "Maildir")
    example = run_example("submission_server.py", "--listen", "tcp:0:interface=127.0.0.1",
                          "--maildir", maildir, "--size", "2000")
    port = example.wait_for_port()
    module = load_example("submission_server")

    # In clear: STARTTLS offered, AUTH not, MAIL refused.
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.has_extn("size") and client.esmtp_features["size"] == "2000"
        code, _ = client.mail("a@client.test")
        assert code == 530

    # After STARTTLS, AUTH PLAIN / LOGIN; a wrong password gets 535.
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
        client.ehlo("client.test")
        client.starttls(context=unverified_client_context())
        client.ehlo("client.test")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.login(module.DEMO_USER, "wrong")
        assert caught.value.smtp_code == 535
        code, _ = client.mail("a@client.test")
        assert code == 530  # still not authenticated

    for mechanism in ("PLAIN", "LOGIN"):
        client = smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT)
        try:
            client.ehlo("client.test")
            client.starttls(context=unverified_client_context())
            client.ehlo("client.test")
            client.user, client.password = module.DEMO_USER, module.DEMO_PASSWORD
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=True)
            assert code == 235
            assert client.sendmail("a@client.test", ["b@example.test"],
                                   MESSAGE.replace(b"example test", mechanism.encode())) == {}
            # Too large for --size 2000: 552 at MAIL when announced with SIZE=...
            big = MESSAGE + b"x" * 3000 + b"\r\n"
            with pytest.raises(smtplib.SMTPSenderRefused) as too_big:
                client.sendmail("a@client.test", ["b@example.test"], big)
            assert too_big.value.smtp_code == 552
            # ... and at the end of DATA when not announced (counted while streaming).
            assert client.mail("a@client.test")[0] == 250
            assert client.rcpt("b@example.test")[0] == 250
            assert client.data(big)[0] == 552
        finally:
            client.quit()

    stored = maildir_messages(maildir)
    assert len(stored) == 2
    assert all(b"with ESMTPSA" in m for m in stored)
    assert {m.split(b"Subject: ")[1].split(b"\n")[0] for m in stored} == {b"PLAIN", b"LOGIN"}
    example.wait_for(r"demo submits a message from <a@client.test>")
    assert module.DEMO_PASSWORD not in example.text()


def test_submission_server_with_certificate_files(run_example: Any, tmp_path: Any) -> None:
    """submission_server.py --key/--cert serves that certificate, which a verifying client accepts."""
    ca = make_ca()
    leaf = ca.issue("submission.test", names=["submission.test"])
    key = write_pem(str(tmp_path), "key.pem", leaf.key_pem)
    cert = write_pem(str(tmp_path), "cert.pem", leaf.cert_pem)
    maildir = str(tmp_path / "Maildir")
    example = run_example("submission_server.py", "--listen", "tcp:0:interface=127.0.0.1",
                          "--maildir", maildir, "--key", key, "--cert", cert, "--name", "submission.test")
    port = example.wait_for_port()
    module = load_example("submission_server")
    context = ssl.create_default_context(cadata=ca.cert_pem.decode("ascii"))
    # The certificate is for submission.test; we connect to 127.0.0.1, so name it explicitly.
    client = smtplib.SMTP(timeout=WAIT_TIMEOUT)
    client._host = "submission.test"  # smtplib uses this as server_hostname for starttls()
    client.connect("127.0.0.1", port)
    client._host = "submission.test"
    try:
        client.ehlo("client.test")
        client.starttls(context=context)  # verifies chain and name
        client.ehlo("client.test")
        client.login(module.DEMO_USER, module.DEMO_PASSWORD)
        assert client.sendmail("a@client.test", ["b@example.test"], MESSAGE) == {}
    finally:
        client.quit()
    assert len(maildir_messages(maildir)) == 1
    assert "development TLS certificate" not in example.text()


# ---------------------------------------------------------------------------
# lmtp_unix.py


@pytest.fixture
def socket_dir() -> Any:
    """A short temporary directory for UNIX sockets (paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="txsmtpsrv-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def lmtp_transaction(client: smtplib.LMTP, sender: str, recipients: List[str],
                     message: bytes) -> tuple[Dict[str, int], List[tuple[int, bytes]]]:
    """MAIL, RCPTs, DATA; return RCPT codes and the per-recipient replies after the message."""
    assert client.mail(sender)[0] == 250
    rcpt_codes = {r: client.rcpt(r)[0] for r in recipients}
    accepted = [r for r in recipients if rcpt_codes[r] == 250]
    replies = [client.data(message)]  # smtplib reads only the first LMTP reply...
    replies += [client.getreply() for _ in accepted[1:]]  # ...the others follow, one per recipient
    return rcpt_codes, replies


def test_lmtp_unix_per_recipient(run_example: Any, tmp_path: Any, socket_dir: str) -> None:
    """lmtp_unix.py on a UNIX socket: each known user gets a Maildir copy, an unknown one a 550."""
    sock = os.path.join(socket_dir, "lmtp.sock")
    root = str(tmp_path / "mail")
    example = run_example("lmtp_unix.py", f"unix:{sock}", root, "alice", "bob")
    example.wait_for(r"LMTP listening on", timeout=START_TIMEOUT)

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock)
        except OSError:
            s.close()
            raise
        return s

    wait_until_accepting(connect)
    client = smtplib.LMTP(sock, timeout=WAIT_TIMEOUT)
    try:
        code, _ = client.ehlo("client.test")  # LHLO
        assert code == 250
        rcpt_codes, replies = lmtp_transaction(
            client, "a@client.test", ["alice@example.test", "carol@example.test", "Bob@example.test"], MESSAGE)
    finally:
        client.quit()
    assert rcpt_codes == {"alice@example.test": 250, "carol@example.test": 250, "Bob@example.test": 250}
    assert [code for code, _ in replies] == [250, 550, 250]
    assert replies[1][1].startswith(b"5.1.1 ") and b"carol@example.test" in replies[1][1]
    for user in ("alice", "bob"):
        (stored,) = maildir_messages(os.path.join(root, user))
        assert b"with LMTP" in stored
        assert stored.endswith(b"Subject: example test\n\nHello from the test.\n")
    assert not os.path.exists(os.path.join(root, "carol"))
    example.wait_for(r"no mailbox for <carol@example.test>")


def test_lmtp_hooks_in_memory(tmp_path: Any, monkeypatch: Any) -> None:
    """LMTPMaildirHooks in memory: the DATA replies are one per recipient, in order."""
    from txsmtpsrv import _diskio

    monkeypatch.setattr(_diskio, "DEFAULT_THREADS", 0)  # in memory: file work inline, as above
    module = load_example("lmtp_unix")
    root = str(tmp_path / "mail")
    server, _clock = make_server(module.LMTPMaildirHooks(root, ["alice"]), lmtp=True)
    client = TestClient(server)
    assert client.command("LHLO client.test").code == 250
    replies = client.sendmail("a@client.test", ["nobody@x.test", "alice@x.test"], MESSAGE, ehlo=None)
    assert [r.code for r in replies] == [250, 250, 250, 354, 550, 250]
    assert len(maildir_messages(os.path.join(root, "alice"))) == 1


# ---------------------------------------------------------------------------
# behind_haproxy.py


def test_behind_haproxy_logs_real_client(run_example: Any, tmp_path: Any) -> None:
    """behind_haproxy.py behind a real HAProxy (send-proxy-v2) logs the client's own address, not HAProxy's."""
    haproxy = haproxy_path()
    example = run_example("behind_haproxy.py", "tcp:0:interface=127.0.0.1", "127.0.0.1/32")
    port = int(example.wait_for(LISTENING, timeout=START_TIMEOUT).group(1))

    options = "send-proxy-v2 proxy-v2-options unique-id,crc32c"
    with HAProxy(haproxy, str(tmp_path), port, options, timeout=20) as proxy:
        mail_through_haproxy(example, proxy.port, proxy.log)


def mail_through_haproxy(example: Any, port: int, haproxy_log: Callable[[], str]) -> None:
    """
    One message through HAProxy listening on C{port}, from 127.0.0.2 so the client's address differs from
    HAProxy's (127.0.0.1): behind_haproxy.py logs the real client with HAProxy's unique id (the shipped
    unique-id-format: the client's address and port in hex first), then the message.
    """
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT, source_address=("127.0.0.2", 0)) as client:
            client_port = client.sock.getsockname()[1]
            assert client.sendmail("a@client.test", ["b@example.test"], MESSAGE) == {}
    except (OSError, smtplib.SMTPException) as e:
        pytest.fail(f"no SMTP through haproxy ({e!r}); haproxy log:\n{haproxy_log()}"
                    f"\nexample stderr:\n{example.text()}")
    m = example.wait_for(rf"client 127\.0\.0\.2:{client_port} via proxy 127\.0\.0\.1 \(session \S+, haproxy id (\S+)\)")
    assert m.group(1).startswith(f"7F000002:{client_port:04X}_")
    example.wait_for(r"message from client 127\.0\.0\.2: <a@client\.test> to 1 recipient\(s\)")


# ---------------------------------------------------------------------------
# async_web_api.py


class StubAPI(http.server.ThreadingHTTPServer):
    """A recipient/message API on 127.0.0.1 that records every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StubAPIHandler)
        self.requests: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the "slow" answer early at cleanup

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The example gave up on the "slow" answer (its timeout): a reset is expected.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StubAPIHandler(http.server.BaseHTTPRequestHandler):
    """known@ → 200, broken@ → 500, slow@ → late 200, others → 404; POST /messages → 201."""

    server: StubAPI

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": self.path,
                                         "headers": dict(self.headers), "body": body})
        return body

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # Said, not implied by HTTP/1.0: Twisted's Agent pools an HTTP/1.0 connection without
        # "Connection: close", so the POST after a GET could go out on a socket this server
        # was closing, and fail (a POST is not retried): 451, once in a while.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        user = self.path.rsplit("/", 1)[-1].split("%40")[0].split("@")[0]
        if user == "slow":
            self.server.release.wait(5)
        status = {"known": 200, "slow": 200, "broken": 500}.get(user, 404)
        self._answer(status, {"user": user})

    def do_POST(self) -> None:
        self._record()
        self._answer(201 if self.path == "/messages" else 404, {"ok": True})

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def stub_api() -> Any:
    """A running StubAPI, shut down at teardown."""
    api = StubAPI()
    thread = threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield api
    api.release.set()
    api.shutdown()
    api.server_close()
    thread.join(timeout=5)


def test_async_web_api(run_example: Any, stub_api: StubAPI) -> None:
    """async_web_api.py asks the API about recipients (200 → 250, 404 → 550, 500/slow → 451) and POSTs the message."""
    # A 2.5 s API timeout: long enough for a busy machine's ordinary calls, well under
    # the stub's 5 s "slow" answer.
    example = run_example("async_web_api.py", stub_api.url, "tcp:0:interface=127.0.0.1", "2.5")
    port = example.wait_for_port()
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test")[0] == 250
        assert client.rcpt("nobody@example.test")[:1] == (550,)
        assert client.rcpt("broken@example.test")[:1] == (451,)
        started = time.monotonic()
        assert client.rcpt("slow@example.test")[:1] == (451,)  # the 2.5 s API timeout answers
        assert time.monotonic() - started < 4.9
        assert client.rcpt("known@example.test")[0] == 250
        code, _ = client.data(MESSAGE)
        assert code == 250, example.text()
    with stub_api.lock:
        requests = list(stub_api.requests)
    gets = [r["path"] for r in requests if r["method"] == "GET"]
    assert gets == [f"/recipients/{u}@example.test" for u in ("nobody", "broken", "slow", "known")]
    (post,) = [r for r in requests if r["method"] == "POST"]
    assert post["path"] == "/messages"
    assert post["headers"]["Content-Type"] == "message/rfc822"
    assert post["headers"]["X-Mail-From"] == "a@client.test"
    assert post["headers"]["X-Rcpt-To"] == "known@example.test"
    assert post["body"] == MESSAGE
    example.wait_for(r"message of \d+ bytes handed to the API")


def test_async_web_api_down_is_temporary(run_example: Any) -> None:
    """async_web_api.py with its API unreachable answers 451, never 250 or 550."""
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
        example = run_example("async_web_api.py", url, "tcp:0:interface=127.0.0.1", "2")
        port = example.wait_for_port()
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
            client.ehlo("client.test")
            assert client.mail("a@client.test")[0] == 250
            code, text = client.rcpt("known@example.test")
            assert (code, text[:5]) == (451, b"4.3.0")
    finally:
        unused.close()
    example.wait_for(r"recipient API failed for <known@example.test>")
