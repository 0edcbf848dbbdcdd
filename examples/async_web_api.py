# -*- test-case-name: tests.test_examples -*-
"""
Hooks written as C{async def} that ask an HTTP API what to do.

Shows how to call out to a web service from hooks with
C{twisted.web.client.Agent} and a small body reader, and how to stay robust: every
request has a time limit, and anything other than a clear answer (API down,
slow, 5xx, garbage) becomes a temporary failure, C{451 4.3.0}, so the client
keeps the message and retries later instead of losing it.

The API (base URL from the command line):

  - C{GET  <api>/recipients/<address>}: 200 means "accept this recipient",
    404 means "no such user" (C{550 5.1.1}); anything else is a 451.
  - C{POST <api>/messages}: the raw message (C{Content-Type: message/rfc822})
    with the envelope in C{X-Mail-From} / C{X-Rcpt-To} headers; a 2xx
    accepts it, anything else is a 451.

Any HTTP/1.0 or 1.1 server will do: bodies with C{Content-Length}, chunked
or ended by closing the connection are all read.  Run it (try
``python -m http.server 8080``, which answers 404 to everything, or your
real service):

    python examples/async_web_api.py http://127.0.0.1:8080 tcp:2525:interface=127.0.0.1 [timeout-seconds]

then ``swaks --server 127.0.0.1:2525 --to you@example.test``.
"""

from __future__ import annotations

import io
import sys
from typing import Any, Optional
from urllib.parse import quote

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from txsmtpsrv import Address, Hooks, Session, SMTPError, SMTPServer

log = Logger()


class _Body(Protocol):
    """
    Collect a response body, at most C{limit} bytes.

    Unlike C{twisted.web.client.readBody}, a body without C{Content-Length}
    that ends when the server closes the connection (HTTP/1.0 style, RFC 9112
    section 6.3) counts as complete: Twisted reports that end as
    C{PotentialDataLoss}, which C{readBody} turns into C{PartialDownloadError}.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._fail(Failure(ValueError(f"response body over {self.limit} bytes")))
        elif not self.done.called:
            self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            if not self.done.called:
                self.done.callback(b"".join(self.chunks))
        else:
            self._fail(reason)

    def _fail(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)
            self._stop()

    def _cancel(self, _: object) -> None:
        # Timed out: drop the connection rather than read the rest.
        self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def read_body(response: IResponse, limit: int = 1024 * 1024) -> defer.Deferred[bytes]:
    """The body of C{response} (see L{_Body}); cancelling it drops the connection."""
    body = _Body(limit)
    response.deliverBody(body)
    return body.done


def _temporary_failure() -> SMTPError:
    return SMTPError(451, "Temporary failure, please try again later", "4.3.0")


class WebAPIHooks(Hooks):
    """
    Ask C{api_url} about each recipient and POST each message to it.

    @param timeout: seconds one API call (connect, answer and body) may take.
    """

    def __init__(self, reactor: Any, api_url: str, timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        # A persistent pool: one TCP connection serves many API calls.
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, connectTimeout=timeout, pool=self.pool)

    async def _call(self, method: bytes, url: str, headers: Optional[Headers] = None,
                    body: Optional[bytes] = None) -> tuple[int, bytes]:
        """One API call, bounded by C{timeout}; returns (status, body) or raises."""
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None

        async def whole() -> tuple[int, bytes]:
            response: IResponse = await self.agent.request(method, url.encode("ascii"), headers, producer)
            return response.code, await read_body(response)

        # addTimeout cancels the request (or the body read) when time is up.
        call = defer.Deferred.fromCoroutine(whole())
        return await call.addTimeout(self.timeout, self.reactor)

    async def on_rcpt_to(self, session: Session, address: Address) -> None:
        url = f"{self.api_url}/recipients/{quote(address.address, safe='@')}"
        try:
            status, _ = await self._call(b"GET", url)
        except Exception as e:  # timeout, refused connection, broken response...
            log.warn("recipient API failed for <{rcpt}>: {error!r} (session {session_id})",
                     rcpt=address.address, error=e, session_id=session.id)
            raise _temporary_failure() from None
        if status == 404:
            raise SMTPError(550, f"No such user here: <{address.address}>", "5.1.1")
        if status != 200:
            log.warn("recipient API answered {status} for <{rcpt}>", status=status, rcpt=address.address)
            raise _temporary_failure()

    async def on_data(self, session: Session, stream: Any) -> None:
        # The server's size limit bounds what content() holds in memory.
        body = await stream.content()
        envelope = session.envelope
        headers = Headers({
            b"Content-Type": [b"message/rfc822"],
            b"X-Mail-From": [(envelope.mail_from.address or "").encode("utf-8")],
            b"X-Rcpt-To": [", ".join(r.address for r in envelope.rcpt_to).encode("utf-8")],
            b"X-Session-Id": [session.id.encode("ascii", "replace")],
        })
        try:
            status, _ = await self._call(b"POST", f"{self.api_url}/messages", headers, body)
        except Exception as e:
            log.warn("message API failed: {error!r} (session {session_id})", error=e, session_id=session.id)
            raise _temporary_failure() from None
        if not 200 <= status < 300:
            log.warn("message API answered {status} (session {session_id})", status=status,
                     session_id=session.id)
            raise _temporary_failure()
        log.info("message of {size} bytes handed to the API (session {session_id})", size=len(body),
                 session_id=session.id)


async def main(reactor: Any, api_url: str = "http://127.0.0.1:8080",
               endpoint: str = "tcp:2525:interface=127.0.0.1", timeout: str = "10") -> None:
    """Serve on C{endpoint}, deferring every decision to the API at C{api_url}."""
    hooks = WebAPIHooks(reactor, api_url, float(timeout))
    # hook_timeout is the server's own backstop; our per-call timeout answers first.
    server = SMTPServer(hooks, reactor=reactor, name="api-gateway.localhost", size=10 * 1024 * 1024,
                        hook_timeout=max(60.0, 3 * float(timeout)))
    port = await server.listen(endpoint)

    async def shutdown() -> None:
        await server.close()
        await hooks.pool.closeCachedConnections()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromCoroutine(shutdown()))
    log.info("listening on {address}, asking {api}", address=port.getHost(), api=hooks.api_url)
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
