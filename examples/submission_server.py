# -*- test-case-name: tests.test_examples -*-
"""
An authenticated mail submission server (the port 587 job, RFC 6409).

Shows the policy a submission service needs:

  - STARTTLS with your key and certificate (C{--key}/C{--cert}), or a
    self-signed development certificate when none are given;
  - C{needs_upgrade}: MAIL and AUTH are refused until the connection is
    encrypted, so passwords never cross the network in clear;
  - AUTH PLAIN / LOGIN checked by a C{twisted.cred} checker through
    L{txsmtpsrv.CredAuthenticator} (here an in-memory database with one demo
    user; use C{FilePasswordDB} or your own checker in real life), and MAIL
    refused until the client has authenticated;
  - a message size limit (advertised as SIZE, enforced while streaming);
  - accepted messages stored in a Maildir.

Run it:

    python examples/submission_server.py --maildir ./Maildir --listen tcp:2587:interface=127.0.0.1
    python examples/submission_server.py --key key.pem --cert cert.pem --size 1048576

and submit with ``swaks --server 127.0.0.1:2587 -tls --auth PLAIN
--auth-user demo --auth-password demo-password --to you@example.test``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from txsmtpsrv import (
    Address,
    CredAuthenticator,
    Hooks,
    Session,
    SMTPServer,
    TLSConfig,
    development_certificate,
)
from txsmtpsrv import MaildirDelivery

log = Logger()

#: The demo account; a real server reads its users from a file or a database.
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"


def demo_checker() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A C{twisted.cred} checker knowing only the demo user (cred wants bytes)."""
    return InMemoryUsernamePasswordDatabaseDontUse(**{DEMO_USER: DEMO_PASSWORD.encode()})


class SubmissionHooks(Hooks):
    """
    Authenticate with a C{twisted.cred} checker, then store messages in a
    Maildir. C{on_auth} is the L{CredAuthenticator} itself; defining it is
    what makes the server offer AUTH and require it before MAIL.
    """

    def __init__(self, maildir: str, checker: Any = None, hostname: Optional[str] = None) -> None:
        self.on_auth = CredAuthenticator(checker if checker is not None else demo_checker())
        self.delivery = MaildirDelivery(maildir, hostname)

    def on_mail_from(self, session: Session, address: Address) -> None:
        # Only reached once authenticated; session.user is the checker's avatar id.
        user = session.user.decode("utf-8", "replace") if isinstance(session.user, bytes) else session.user
        log.info("{user} submits a message from <{sender}> (session {session_id})",
                 user=user, sender=address.address, session_id=session.id)

    def on_data(self, session: Session, stream: Any) -> "defer.Deferred[None]":
        return self.delivery.on_data(session, stream)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="submission_server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:2587:interface=127.0.0.1", help="server endpoint string")
    parser.add_argument("--maildir", default="Maildir", help="where accepted messages are stored")
    parser.add_argument("--name", default="submission.localhost", help="host name in greeting and certificate")
    parser.add_argument("--key", help="TLS private key (PEM file)")
    parser.add_argument("--cert", help="TLS certificate, with its chain (PEM file)")
    parser.add_argument("--size", type=int, default=10 * 1024 * 1024, help="largest message in octets")
    return parser.parse_args(list(argv))


def tls_config(key: Optional[str], cert: Optional[str], name: str) -> TLSConfig:
    """The configured certificate, or a throw-away self-signed one for trying things out."""
    if key or cert:
        return TLSConfig(key=key, cert=cert)  # a combined PEM may be given as either
    return development_certificate(name)


def make_server(args: argparse.Namespace, reactor: Any = None) -> SMTPServer:
    """The submission policy, as server options."""
    hooks = SubmissionHooks(args.maildir, hostname=args.name)
    return SMTPServer(
        hooks,
        reactor=reactor,
        name=args.name,
        tls=tls_config(args.key, args.cert, args.name),
        needs_upgrade=True,            # STARTTLS before MAIL or AUTH
        allow_insecure_auth=False,     # and AUTH is not even offered before it
        auth_optional=False,           # MAIL needs a login (530 5.7.0 otherwise)
        auth_methods=("PLAIN", "LOGIN"),
        size=args.size,
    )


async def main(reactor: Any, *argv: str) -> None:
    """Parse the command line and serve until interrupted."""
    args = parse_args(argv)
    server = make_server(args, reactor)
    port = await server.listen(args.listen)
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    log.info("listening on {address} (submission with STARTTLS and AUTH, size limit {size})",
             address=port.getHost(), size=args.size)
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
