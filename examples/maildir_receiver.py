# -*- test-case-name: tests.test_examples -*-
"""
Receive mail for one domain into a Maildir.

Shows the smallest useful mail receiver: L{txsmtpsrv.SMTPServer} with a
hooks object that refuses recipients outside a configured domain (C{550
5.1.2} at RCPT time, so nothing is ever accepted for other domains) and
hands each accepted message to L{MaildirDelivery}, which answers C{250}
only once the message is safely in C{Maildir/new}.

Run it:

    python examples/maildir_receiver.py ./Maildir                      # example.test, 127.0.0.1:2525
    python examples/maildir_receiver.py ./Maildir example.org tcp:2526:interface=127.0.0.1

then ``swaks --server 127.0.0.1:2525 --to you@example.test`` and look in
``./Maildir/new``. ``twistd -n smtpsrv`` does the same job with options.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from txsmtpsrv import Address, Hooks, Session, SMTPError, SMTPServer
from txsmtpsrv import MaildirDelivery

log = Logger()


class DomainMaildirHooks(Hooks):
    """Accept recipients of C{domain} only; store each message in C{maildir}."""

    def __init__(self, maildir: str, domain: str, hostname: str | None = None) -> None:
        self.domain = domain.lower().rstrip(".")
        self.delivery = MaildirDelivery(maildir, hostname)

    def on_rcpt_to(self, session: Session, address: Address) -> None:
        # Refuse at RCPT: the client learns at once, and no bounce is ever needed.
        if (address.domain or "").lower().rstrip(".") != self.domain:
            log.info("refused recipient {rcpt} (session {session_id})", rcpt=address.address,
                     session_id=session.id)
            raise SMTPError(550, f"Relay access denied: we only accept mail for {self.domain}", "5.1.2")

    def on_data(self, session: Session, stream: Any) -> "defer.Deferred[None]":
        # MaildirDelivery logs the stored file and answers 451 on any disk error.
        return self.delivery.on_data(session, stream)


async def main(reactor: Any, maildir: str = "Maildir", domain: str = "example.test",
               endpoint: str = "tcp:2525:interface=127.0.0.1") -> None:
    """Listen on C{endpoint} until interrupted, storing mail for C{domain} in C{maildir}."""
    name = "mx." + domain
    hooks = DomainMaildirHooks(maildir, domain, hostname=name)
    server = SMTPServer(hooks, name=name, reactor=reactor)
    port = await server.listen(endpoint)
    # Remove what crashed deliveries left in tmp/ (36 h old), now and every hour.
    hooks.delivery.start_cleaning(reactor)
    # Let clients finish their transaction when asked to stop (Ctrl-C, SIGTERM).
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    reactor.addSystemEventTrigger("before", "shutdown", hooks.delivery.stop_cleaning)
    log.info("listening on {address}, storing mail for @{domain} in {path}",
             address=port.getHost(), domain=hooks.domain, path=hooks.delivery.path)
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
