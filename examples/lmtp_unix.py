# -*- test-case-name: tests.test_examples -*-
"""
An LMTP server on a UNIX socket, delivering each recipient to its own Maildir.

Shows LMTP (RFC 2033), the protocol an MTA such as Postfix uses to hand
mail to a mail store: the server answers once per recipient after the
message, so one recipient can fail without the others. Here C{on_data}
spools the body once, stores a copy in C{ROOT/<user>/} (a Maildir) for each
known user, and returns a list with one answer per recipient: C{None} for
delivered, an L{SMTPError} (C{550 5.1.1} for an unknown user, C{451 4.3.0}
when storing failed) for the others.

Run it:

    python examples/lmtp_unix.py unix:/tmp/lmtp.sock ./mail alice bob

then point Postfix at it (C{mailbox_transport = lmtp:unix:/tmp/lmtp.sock})
or try it by hand with ``swaks --socket /tmp/lmtp.sock --protocol LMTP
--to alice@example.test,carol@example.test``: alice gets a 250, carol a 550.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from txsmtpsrv import Hooks, Session, SMTPError, SMTPServer
from txsmtpsrv import MaildirDelivery

log = Logger()

_CHUNK = 64 * 1024


class _SpoolReplay:
    """A stand-in for a L{MessageStream} that replays a spooled body, for one delivery."""

    def __init__(self, spool: IO[bytes]) -> None:
        self._spool = spool

    def collect(self, callback: Callable[[bytes], Any]) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(self._replay(callback))

    async def _replay(self, callback: Callable[[bytes], Any]) -> None:
        self._spool.seek(0)
        while chunk := self._spool.read(_CHUNK):
            result = callback(chunk)
            if isinstance(result, defer.Deferred):
                await result


class LMTPMaildirHooks(Hooks):
    """
    Deliver to C{root/<local part>/} for the given C{users}; every recipient
    gets its own answer.

    Unknown users are accepted at RCPT and refused after DATA on purpose, to
    show per-recipient results; a real mail store would rather refuse them
    at RCPT with the same C{550}.
    """

    def __init__(self, root: str, users: Sequence[str], hostname: Optional[str] = None) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.mailboxes: Dict[str, MaildirDelivery] = {
            user.lower(): MaildirDelivery(os.path.join(self.root, user.lower()), hostname) for user in users
        }

    async def on_data(self, session: Session, stream: Any) -> List[Optional[SMTPError]]:
        # Spool once (in memory up to 1 MiB, then on disk), store one copy per recipient.
        with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
            await stream.collect(spool.write)
            results: List[Optional[SMTPError]] = []
            for rcpt in session.envelope.rcpt_to:
                mailbox = self.mailboxes.get(rcpt.local_part.lower())
                if mailbox is None:
                    log.info("no mailbox for <{rcpt}> (session {session_id})", rcpt=rcpt.address,
                             session_id=session.id)
                    results.append(SMTPError(550, f"No such user here: <{rcpt.address}>", "5.1.1"))
                    continue
                try:
                    await mailbox.on_data(session, _SpoolReplay(spool))
                except SMTPError as e:  # MaildirDelivery's 451 on a disk error (already logged)
                    results.append(e)
                else:
                    results.append(None)  # None: the default "250 2.0.0 OK" for this recipient
            return results


async def main(reactor: Any, endpoint: str = "unix:/tmp/lmtp.sock", root: str = "mail",
               *users: str) -> None:
    """Serve LMTP on C{endpoint} until interrupted, for C{users} (default: alice, bob)."""
    hooks = LMTPMaildirHooks(root, users or ("alice", "bob"), hostname="lmtp.localhost")
    server = SMTPServer(hooks, reactor=reactor, name="lmtp.localhost", lmtp=True,
                        hide_starttls=True)  # a local socket: nothing to encrypt
    port = await server.listen(endpoint)
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    log.info("LMTP listening on {address}, mailboxes {users} under {root}",
             address=port.getHost(), users=sorted(hooks.mailboxes), root=hooks.root)
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
