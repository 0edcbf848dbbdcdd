# -*- test-case-name: tests.test_examples -*-
"""
An SMTP server behind HAProxy that knows (and logs) the real client address.

Shows L{txsmtpsrv.proxyEndpoint}: it wraps any server endpoint so each
connection must start with a PROXY protocol header (v1 or v2) from one of
the trusted networks; the session then reports the client HAProxy talked
to, not HAProxy itself, so logs, C{Received} headers and your access checks
use the real address. Connections from other addresses are closed.

The HAProxy side is in ``examples/haproxy.cfg`` (``send-proxy-v2`` on the
C{server} line). Run it:

    python examples/behind_haproxy.py                                   # 127.0.0.1:2525, trusts 127.0.0.1
    python examples/behind_haproxy.py tcp:2525:interface=10.0.0.5 10.0.0.0/24,fd00::/8
    haproxy -db -f examples/haproxy.cfg                                 # 127.0.0.1:2500 as shipped

then ``swaks --server 127.0.0.1:2500 --to you@example.test``; this program
logs ``client 203.0.113.7:51234 via proxy 127.0.0.1`` for each connection.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from txsmtpsrv import Hooks, Session, SMTPServer, proxyEndpoint

log = Logger()


class ClientLoggingHooks(Hooks):
    """Log who is really connecting, and the size of each message (then discard it)."""

    def on_connect(self, session: Session) -> None:
        info = session.proxy  # the parsed PROXY header (a ProxyInfo), or None
        if info is not None and info.proxied:
            unique = (info.unique_id or b"").decode("ascii", "replace")
            log.info("client {client}:{client_port} via proxy {proxy} (session {session_id}{unique})",
                     client=session.remote_address, client_port=session.remote_port,
                     proxy=info.proxy_address, session_id=session.id,
                     unique=f", haproxy id {unique}" if unique else "")
        else:  # e.g. HAProxy's health checks (PROXY v2 LOCAL)
            log.info("direct connection from {client} (session {session_id})",
                     client=session.remote_address, session_id=session.id)

    async def on_data(self, session: Session, stream: Any) -> None:
        size = 0

        def count(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)

        await stream.collect(count)
        log.info("message from client {client}: <{sender}> to {count} recipient(s), {size} bytes",
                 client=session.remote_address, sender=session.envelope.mail_from.address,
                 count=len(session.envelope.rcpt_to), size=size)


async def main(reactor: Any, listen: str = "tcp:2525:interface=127.0.0.1",
               trusted: str = "127.0.0.1/32,::1/128") -> None:
    """Listen on C{listen} behind a proxy from the C{trusted} networks (comma-separated)."""
    networks = [n.strip() for n in trusted.split(",") if n.strip()]
    endpoint = proxyEndpoint(serverFromString(reactor, listen), trusted=networks, reactor=reactor)
    server = SMTPServer(ClientLoggingHooks(), reactor=reactor, name="mx.localhost")
    port = await server.listen(endpoint)
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    log.info("listening on {address} for PROXY headers from {networks}",
             address=port.getHost(), networks=", ".join(networks))
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
