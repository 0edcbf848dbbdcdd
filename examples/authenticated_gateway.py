# -*- test-case-name: tests.test_authres_example -*-
"""
An inbound gateway that knows whether C{From:} can be trusted.

L{AuthVerifier} checks SPF, DKIM, DMARC and ARC for every message before
the hooks below see it, and prepends an C{Authentication-Results:} field.
The policy here is a common one: refuse (C{550 5.7.1}, before the final
reply, so no bounce is ever needed) what fails DMARC for a domain that
asks for C{p=reject}, and store the rest in a Maildir with the verdicts in
the header for the mail reader or the spam filter.

Run it:

    python examples/authenticated_gateway.py ./Maildir mx.example.org
    python examples/authenticated_gateway.py ./Maildir mx.example.org tcp:2526 127.0.0.1:5353

(the optional last arguments are the listen endpoint and DNS servers to ask
instead of those in /etc/resolv.conf, e.g. a local validating resolver).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from txsmtpsrv import AuthVerifier, MaildirDelivery, Session, SMTPError, SMTPServer

log = Logger()


class Gateway:
    """Refuse DMARC p=reject failures; store everything else."""

    def __init__(self, maildir: str, hostname: str) -> None:
        self.delivery = MaildirDelivery(maildir, hostname)

    def on_data(self, session: Session, stream: Any) -> "defer.Deferred[None]":
        auth = session.envelope.auth  # every verdict is in before this hook is called
        dmarc = auth.dmarc
        if dmarc is not None and dmarc.result == "fail" and dmarc.disposition == "reject":
            log.info("refused mail claiming to be from {domain} (session {session_id})",
                     domain=dmarc.from_domain, session_id=session.id)
            raise SMTPError(550, f"{dmarc.from_domain} does not let others send its mail", "5.7.1")
        # The stream begins with our Authentication-Results field.
        return self.delivery.on_data(session, stream)


async def main(reactor: Any, maildir: str = "Maildir", name: str = "mx.example.test",
               endpoint: str = "tcp:2525:interface=127.0.0.1", *nameservers: str) -> None:
    """Listen on C{endpoint} until interrupted."""
    hooks = AuthVerifier(Gateway(maildir, name), authserv_id=name, nameservers=nameservers, reactor=reactor)
    server = SMTPServer(hooks, name=name, reactor=reactor)
    port = await server.listen(endpoint)
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    log.info("listening on {address}, verifying as {name}", address=port.getHost(), name=name)
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
