"""
Benchmark servers: one SMTP sink per implementation, run as a separate process.

Run as ``python bench/_peers.py KIND`` with KIND one of ``txsmtpsrv``, ``aiosmtpd``
or ``twisted.mail``.  The process listens on 127.0.0.1 port 0, writes one line
``READY <port> <pid> <detail>`` to stdout and then serves until it is killed
(it also dies with its parent, through ``PR_SET_PDEATHSIG``).  Every server
reads each message body and throws it away, so what is measured is the SMTP
machinery, not the storage.  Only warnings and errors are logged, to stderr,
which the benchmark keeps and shows when a run fails.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from typing import Any, Callable

KINDS = ("txsmtpsrv", "aiosmtpd", "twisted.mail")

#: Same idle timeout everywhere (aiosmtpd's default); the benchmark never idles that long.
IDLE_TIMEOUT = 300


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us if the benchmark dies, so no server outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def raise_nofile(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _ready(port: int, detail: str) -> None:
    """Tell the benchmark which port we listen on (the only thing ever written to stdout)."""
    sys.stdout.write(f"READY {port} {os.getpid()} {detail}\n")
    sys.stdout.flush()


def _twisted_logging_to_stderr() -> None:
    """Send Twisted log events of level warn and above to stderr; drop the rest cheaply."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _run_reactor_listening(listen: Callable[[], Any], detail: str) -> None:
    """Run the default reactor, calling ``listen()`` (-> Deferred[IListeningPort]) first."""
    from twisted.internet import reactor

    def listening(port: Any) -> None:
        _ready(port.getHost().port, f"{detail} reactor={type(reactor).__name__}")

    def failed(failure: Any) -> None:
        sys.stderr.write(f"listen failed: {failure.getTraceback()}\n")
        reactor.stop()

    def start() -> None:
        from twisted.internet import defer

        defer.maybeDeferred(listen).addCallbacks(listening, failed)

    reactor.callWhenRunning(start)
    reactor.run()


def serve_txsmtpsrv() -> None:
    """txsmtpsrv: SMTPServer with an on_data hook that reads and discards the body."""
    _twisted_logging_to_stderr()
    import txsmtpsrv
    from txsmtpsrv import SMTPServer

    class SinkHooks:
        """Read every body chunk and drop it; the Deferred fires at the final dot."""

        def on_data(self, session: Any, stream: Any) -> Any:
            return stream.collect(lambda chunk: None)

    server = SMTPServer(SinkHooks(), name="bench", size=0, socket_timeout=IDLE_TIMEOUT)
    version = getattr(txsmtpsrv, "__version__", "dev")
    _run_reactor_listening(
        lambda: server.listen("tcp:0:interface=127.0.0.1"), f"txsmtpsrv={version}"
    )


def serve_twisted_mail() -> None:
    """twisted.mail.smtp ESMTP with an IMessageDelivery whose messages discard lines."""
    _twisted_logging_to_stderr()
    import twisted
    from twisted.internet import defer
    from twisted.mail import smtp
    from zope.interface import implementer

    @implementer(smtp.IMessage)
    class DiscardMessage:
        """Receives the body line by line (as twisted.mail delivers it) and keeps nothing."""

        def lineReceived(self, line: bytes) -> None:
            pass

        def eomReceived(self) -> defer.Deferred[None]:
            return defer.succeed(None)

        def connectionLost(self) -> None:
            pass

    @implementer(smtp.IMessageDelivery)
    class SinkDelivery:
        """Accept every sender and recipient; no Received: header (that would be extra work)."""

        def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
            return None

        def validateFrom(self, helo: Any, origin: Any) -> Any:
            return origin

        def validateTo(self, user: Any) -> Callable[[], DiscardMessage]:
            return DiscardMessage

    class SinkFactory(smtp.SMTPFactory):
        """The stock factory with ESMTP, the sink delivery and no per-message info logging."""

        protocol = smtp.ESMTP
        domain = "bench"
        timeout = IDLE_TIMEOUT

        def buildProtocol(self, addr: Any) -> Any:
            p = smtp.SMTPFactory.buildProtocol(self, addr)
            p.delivery = self.delivery
            p.timeout = self.timeout
            p.noisy = False  # its "Receiving message for delivery" log line per message
            return p

    factory = SinkFactory()
    factory.delivery = SinkDelivery()

    def listen() -> Any:
        from twisted.internet import endpoints, reactor

        return endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            factory
        )

    _run_reactor_listening(listen, f"twisted={twisted.__version__}")


def serve_aiosmtpd() -> None:
    """aiosmtpd.smtp.SMTP on a plain asyncio server (no Controller thread)."""
    import asyncio
    import logging

    import aiosmtpd
    from aiosmtpd.smtp import SMTP

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    class SinkHandler:
        """aiosmtpd has already read (and buffered) the whole body; accept and drop it."""

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    handler = SinkHandler()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="bench",
                data_size_limit=64 * 1024 * 1024,
                timeout=IDLE_TIMEOUT,
            ),
            host="127.0.0.1",
            port=0,
        )
        port = srv.sockets[0].getsockname()[1]
        _ready(port, f"aiosmtpd={aiosmtpd.__version__} loop={type(loop).__name__}")
        await srv.serve_forever()

    asyncio.run(main())


SERVERS: dict[str, Callable[[], None]] = {
    "txsmtpsrv": serve_txsmtpsrv,
    "aiosmtpd": serve_aiosmtpd,
    "twisted.mail": serve_twisted_mail,
}


def main(argv: list[str]) -> int:
    """Entry point of a server process."""
    if len(argv) != 2 or argv[1] not in SERVERS:
        sys.stderr.write(f"usage: {argv[0]} {{{','.join(KINDS)}}}\n")
        return 2
    _die_with_parent()
    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    SERVERS[argv[1]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
