# -*- test-case-name: tests.test_example_web_api -*-
"""
examples/async_web_api.py against real HTTP servers that end bodies each way.

An HTTP API may give its body a C{Content-Length}, send it chunked, or end
it by closing the connection (no length at all, HTTP/1.0 and 1.1 alike);
the example must understand all three, not answer 451 to every call. Each
test runs the example as a process (warnings shown, so a
C{DeprecationWarning} in its HTTP code fails the test) in front of a
standard-library HTTP server on 127.0.0.1 and talks to it with C{smtplib}.
"""

from __future__ import annotations

import http.server
import smtplib
import threading
from typing import Any, Dict, Iterator, List

import pytest

from tests.test_examples import MESSAGE, WAIT_TIMEOUT, run_example  # noqa: F401 (fixture)

FRAMINGS = ["content-length", "chunked", "close-http/1.1", "close-http/1.0"]


class FramingAPI(http.server.ThreadingHTTPServer):
    """The example's API (known@ → 200, others → 404; POST → 201), framing bodies one way."""

    daemon_threads = True

    def __init__(self, framing: str, body_size: int = 64) -> None:
        super().__init__(("127.0.0.1", 0), FramingHandler)
        self.framing = framing
        self.body_size = body_size
        self.posts: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FramingHandler(http.server.BaseHTTPRequestHandler):
    server: FramingAPI

    def setup(self) -> None:
        super().setup()
        self.protocol_version = "HTTP/1.0" if self.server.framing == "close-http/1.0" else "HTTP/1.1"

    def _answer(self, status: int) -> None:
        body = (b'{"answer": "%d"}' % status).ljust(self.server.body_size, b" ")
        framing = self.server.framing
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if framing == "content-length":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:  # no length: the body ends when we close the connection
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    def do_GET(self) -> None:
        self._answer(200 if self.path.endswith("/known@example.test") else 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with self.server.lock:
            self.server.posts.append({"path": self.path, "body": body})
        self._answer(201)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(api: FramingAPI) -> Iterator[FramingAPI]:
    thread = threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()
        thread.join(timeout=5)


@pytest.fixture(params=FRAMINGS)
def framing_api(request: Any) -> Iterator[FramingAPI]:
    """A running FramingAPI for each way of ending a body."""
    yield from serve(FramingAPI(request.param))


@pytest.fixture
def warnings_shown(monkeypatch: Any) -> None:
    """Examples started after this print every DeprecationWarning to stderr."""
    monkeypatch.setenv("PYTHONWARNINGS", "always::DeprecationWarning")


def test_every_body_framing_is_understood(run_example: Any, framing_api: FramingAPI,
                                         warnings_shown: None) -> None:
    """200 → 250, 404 → 550 and the message POSTed, whatever framing the API's bodies use; no warning."""
    example = run_example("async_web_api.py", framing_api.url, "tcp:0:interface=127.0.0.1", "5")
    port = example.wait_for_port()
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
        client.ehlo("client.test")
        for _ in range(2):  # a second transaction reuses (or replaces) the pooled connection
            assert client.mail("a@client.test")[0] == 250
            assert client.rcpt("nobody@example.test")[0] == 550
            assert client.rcpt("known@example.test")[0] == 250
            assert client.data(MESSAGE)[0] == 250
    with framing_api.lock:
        assert [p["body"] for p in framing_api.posts] == [MESSAGE, MESSAGE]
    example.wait_for(r"message of \d+ bytes handed to the API")
    assert "DeprecationWarning" not in example.text()
    assert "API failed" not in example.text()


class TruncatingHandler(FramingHandler):
    """Promises 100 bytes, sends 10, closes: a body cut short."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True


def test_truncated_body_is_temporary_failure(run_example: Any) -> None:
    """A body shorter than its Content-Length is no answer: 451, not 250."""
    api = FramingAPI("content-length")
    api.RequestHandlerClass = TruncatingHandler
    for running in serve(api):
        example = run_example("async_web_api.py", running.url, "tcp:0:interface=127.0.0.1", "5")
        port = example.wait_for_port()
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
            client.ehlo("client.test")
            assert client.mail("a@client.test")[0] == 250
            code, text = client.rcpt("known@example.test")
            assert (code, text[:5]) == (451, b"4.3.0")
        example.wait_for(r"recipient API failed for <known@example.test>")


def test_oversized_body_is_temporary_failure(run_example: Any) -> None:
    """An answer over the example's 1 MiB cap is not buffered: 451."""
    for running in serve(FramingAPI("close-http/1.1", body_size=2 * 1024 * 1024)):
        example = run_example("async_web_api.py", running.url, "tcp:0:interface=127.0.0.1", "5")
        port = example.wait_for_port()
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_TIMEOUT) as client:
            client.ehlo("client.test")
            assert client.mail("a@client.test")[0] == 250
            assert client.rcpt("known@example.test")[0] == 451
        example.wait_for(r"recipient API failed for <known@example.test>: .*over 1048576 bytes")
