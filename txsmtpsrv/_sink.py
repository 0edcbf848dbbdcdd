# -*- test-case-name: tests.test_sink_cli -*-
"""
C{python -m txsmtpsrv}: a mail sink for development, with no set-up::

    python -m txsmtpsrv                         # 127.0.0.1:8025, print each message
    python -m txsmtpsrv -l tcp:2525 --maildir ./Maildir
    python -m txsmtpsrv --lmtp -l unix:/tmp/lmtp.sock --body

It accepts every message and writes its envelope and headers (C{--body}:
the whole message) to standard output as it arrives; C{--maildir} or
C{--mbox} also store it. Options are spelled as C{twistd smtpsrv}'s, without
twistd's daemon machinery (no C{-n}, no pid file). Ctrl-C or SIGTERM stops
it gracefully: the ports close, idle clients get 421, a message in transit
may finish within C{--close-timeout}, and the exit status is 0.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, List, Optional, Sequence

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger, LogLevel, LogLevelFilterPredicate, FilteringLogObserver, \
    globalLogBeginner, textFileLogObserver
from twisted.python import usage

from ._data import MessageStream
from ._optcheck import check_common, check_listen, check_server_kwargs, checked, integer, seconds, server_option_names
from ._session import Session

__all__ = ["SinkOptions", "main"]

DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"
log = Logger()


class SinkOptions(usage.Options):
    """The command line; names and meanings as in C{twistd smtpsrv}."""

    synopsis = "Usage: python -m txsmtpsrv [options]"
    longdesc = ("A development mail sink: accepts every message and prints its envelope and headers. "
                "Ctrl-C stops it.")

    optFlags = [
        ["lmtp", None, "Speak LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient."],
        ["body", None, "Print each whole message, not only its headers."],
        ["reverse-lookup", None, "Look up clients' host names in reverse DNS (off by default here)."],
        ["no-reverse-lookup", None, "Don't look up clients' host names in reverse DNS (the default here)."],
        ["quiet", "q", "Print nothing per message (with --maildir or --mbox)."],
    ]

    optParameters = [
        ["maildir", None, None, "Also deliver into this Maildir (cur/new/tmp are created if missing)."],
        ["mbox", None, None, "Also append to this mbox file."],
        ["name", None, "localhost", "Host name for the greeting, the EHLO reply and Received headers."],
        ["banner", None, None, "Text after the host name in the 220 greeting."],
        ["size", None, None, "Largest accepted message in bytes, advertised with SIZE; 0: no limit. "
                             "[default: 32 MiB]", checked("size", integer(0))],
        ["max-clients", None, None, "Concurrent connections; more are answered 421.", checked("max-clients", integer(1))],
        ["socket-timeout", None, None, "Seconds a client may stay idle. [default: 60]",
         checked("socket-timeout", seconds)],
        ["close-timeout", None, 5.0, "Seconds a message in transit may take to finish at Ctrl-C.",
         checked("close-timeout", seconds)],
        ["tls-key", None, None, "PEM private key for STARTTLS and smtps: listeners (may also hold the certificate)."],
        ["tls-cert", None, None, "PEM certificate (and chain). Without --tls-key/--tls-cert, a self-signed "
                                 "development certificate."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self["listen"] = []
        #: L{ServerOptions} keyword arguments, checked by L{postOptions}.
        self.serverKwargs: dict[str, Any] = {}

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, e.g. tcp:2525, tcp6:8025:interface=\\:\\:1, unix:/tmp/smtp.sock, or smtps:tcp:8465 for implicit TLS; repeatable. [default: tcp:8025:interface=127.0.0.1]"""  # noqa: E501
        check_listen(description)
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        """Check every value now, as C{twistd smtpsrv} does (the same checks, the same error texts)."""
        if self["reverse-lookup"] and self["no-reverse-lookup"]:
            raise usage.UsageError("--reverse-lookup and --no-reverse-lookup exclude each other")
        check_common(self, DEFAULT_LISTEN)
        kwargs: dict[str, Any] = {"lmtp": bool(self["lmtp"]), "disable_reverse_lookup": not self["reverse-lookup"]}
        for option in server_option_names(self) - {"lmtp"}:  # every option named as a ServerOptions field
            if self[option] is not None:
                kwargs[option.replace("-", "_")] = self[option]
        tls = {field: self[option] for option, field in (("tls-key", "key"), ("tls-cert", "cert")) if self[option]}
        if tls:
            kwargs["tls"] = tls
        check_server_kwargs(self, kwargs)
        self.serverKwargs = kwargs


class _Printer:
    """Hooks that write each message's envelope and headers (or all of it) to C{out}."""

    def __init__(self, out: Optional[IO[str]], body: bool, delivery: Any) -> None:
        self._out = out
        self._body = body
        self._delivery = delivery
        self._count = 0

    async def on_data(self, session: Session, stream: Any) -> None:
        """Read the message (a sink sees small ones), store it if asked, then print."""
        envelope = session.envelope
        sender = envelope.mail_from.address if envelope.mail_from is not None else ""
        rcpts = [r.address for r in envelope.rcpt_to]
        body = await stream.content()
        if self._delivery is not None:
            copy = MessageStream(lambda: None, lambda: None)
            stored = maybeDeferred(self._delivery.on_data, session, copy)
            copy.write(body)
            copy.finish()
            await stored  # a failure becomes the server's 451: nothing is printed as received
        self._print(body, session, sender, rcpts)

    def _print(self, data: bytes, session: Session, sender: str, rcpts: List[str]) -> None:
        if self._out is None:
            return
        self._count += 1
        text = data.decode("utf-8", "replace").replace("\r\n", "\n")
        if not self._body:
            end = text.find("\n\n")
            text = (text if end < 0 else text[:end + 1])
        if text and not text.endswith("\n"):
            text += "\n"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        tls = f", {session.tls.version}" if session.tls is not None else ""
        user = f", user {session.user!r}" if session.user is not None else ""
        self._out.write(
            f"---------- message {self._count} at {when}, session {session.id} ----------\n"
            f"Peer: {session.remote_address}:{session.remote_port} "
            f"({session.opening_command} {session.host_name_appears_as}{tls}{user})\n"
            f"MAIL FROM:<{sender}>\n" + "".join(f"RCPT TO:<{r}>\n" for r in rcpts) + "\n" + text
            + ("" if self._body else f"[{len(data)} bytes]\n")
            + "\n")
        self._out.flush()


def _server(options: SinkOptions, out: Optional[IO[str]], reactor: Any) -> Any:
    from ._delivery import MaildirDelivery, MboxDelivery
    from ._server import SMTPServer

    delivery: Any = None
    if options["maildir"]:
        delivery = MaildirDelivery(options["maildir"])
    elif options["mbox"]:
        delivery = MboxDelivery(options["mbox"])
    hooks = _Printer(None if options["quiet"] else out, bool(options["body"]), delivery)
    return SMTPServer(hooks, reactor=reactor, **options.serverKwargs)


async def _run(reactor: Any, options: SinkOptions, out: IO[str]) -> None:
    from ._sharedports import SMTPS, listen_endpoint

    server = _server(options, out, reactor)
    for description in options["listen"]:
        implicit = description.startswith(SMTPS)
        try:
            port = await server.listen(listen_endpoint(reactor, description, lambda: server.tls))
        except Exception as e:
            sys.stderr.write(f"python -m txsmtpsrv: cannot listen on {description}: {e}\n")
            await server.close()
            raise SystemExit(1)
        host = port.getHost()
        where = f"{host.host}:{host.port}" if hasattr(host, "port") else str(getattr(host, "name", host))
        log.info("txsmtpsrv sink ({protocol}) listening on {where}{tls}", where=where,
                 protocol="LMTP" if options["lmtp"] else "SMTP", tls=" (implicit TLS)" if implicit else "")
    stopped: Deferred[None] = Deferred()

    def shutdown() -> "Deferred[None]":
        log.info("stopping: closing the ports and the connections")
        closed: Deferred[None] = server.close().addBoth(lambda _: stopped.callback(None))
        return closed

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    await stopped


def main(argv: Optional[Sequence[str]] = None, out: Optional[IO[str]] = None) -> None:
    """Parse C{argv} (default C{sys.argv[1:]}), run until Ctrl-C or SIGTERM, exit with a status."""
    options = SinkOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))  # type: ignore[no-untyped-call]  # Twisted: unannotated
    except usage.UsageError as e:
        sys.stderr.write(f"python -m txsmtpsrv: {e}\n(see python -m txsmtpsrv --help)\n")
        raise SystemExit(2)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])],
        redirectStandardIO=False)
    from twisted.internet import task

    task.react(lambda reactor: Deferred.fromCoroutine(_run(reactor, options, out or sys.stdout)))
