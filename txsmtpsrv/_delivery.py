# -*- test-case-name: tests.test_delivery_maildir,tests.test_delivery_mbox,tests.test_delivery_print,tests.test_delivery_trace -*-
"""
Built-in deliveries: hooks objects whose C{on_data} stores each message.

L{MaildirDelivery} (L{txsmtpsrv._maildir}) and L{MboxDelivery}
(L{txsmtpsrv._mbox}) are what C{twistd smtpsrv} uses out of the box;
L{PrintDelivery} is the debugging sink of the examples. Each is a plain hooks
object, so C{SMTPServer(MaildirDelivery("~/Maildir"))} is a complete mail
receiver.

The contract of the file deliveries is the one an MTA owes its clients
(RFC 5321 section 6.1): the C{250} goes out only once the message is on
stable storage (written, C{fsync}ed, renamed or appended, directory
C{fsync}ed); any local failure answers C{451 4.3.0} and leaves no partial
message behind, so the client retries and nothing is lost. A crash between
storing and the client reading the C{250} can duplicate a message (the client
retries one we kept), as RFC 5321 6.1 prefers to losing it.

The file work runs in a small thread pool (L{txsmtpsrv._diskio}), below
the reactor thread's priority, so a message waiting for the disk -- or the
kernel's CPU work for its C{fsync} -- does not stall the other clients, and the
C{fsync}s that make renames (Maildir) or appends (mbox) durable are shared by
every message that finished meanwhile: group commit. Memory stays bounded:
at most about two 64 KiB batches of a message are held while the disk
catches up, after which the client is paused.
"""

from __future__ import annotations

import io
import sys
from typing import IO, Any, Optional

from twisted.internet.defer import Deferred

from txsmtpsrv._maildir import MaildirDelivery
from txsmtpsrv._mbox import MboxDelivery
from txsmtpsrv._session import Session
from txsmtpsrv._trace import received_header, return_path_header

__all__ = [
    "MaildirDelivery",
    "MboxDelivery",
    "PrintDelivery",
    "received_header",
    "return_path_header",
]

class PrintDelivery:
    """
    Write each message to a file object (standard output by default), framed
    like Python's old C{smtpd.DebuggingServer}. This is a delivery target,
    not logging: it is meant for examples and for watching what a client
    sends. The message is read whole into memory first (so concurrent
    messages don't interleave); use it only where messages are small.

    @param stream: a text or binary file object; defaults to C{sys.stdout}
        at the time of each message.
    """

    def __init__(self, stream: Optional[IO[Any]] = None) -> None:
        self.stream = stream

    def on_data(self, session: Session, stream: Any) -> "Deferred[None]":
        """Read the body, then print envelope and message in one go."""
        done: Deferred[None] = stream.content().addCallback(self._print, session)
        return done

    def _print(self, body: bytes, session: Session) -> None:
        envelope = session.envelope
        sender = envelope.mail_from.address if envelope.mail_from is not None else ""
        lines = [
            "---------- MESSAGE FOLLOWS ----------",
            f"X-Session-Id: {session.id}",
            f"X-Peer: {session.remote_address}",
            f"X-MailFrom: <{sender}>",
            "X-RcptTo: " + ", ".join(f"<{r.address}>" for r in envelope.rcpt_to),
        ]
        text = body.decode("utf-8", "replace").replace("\r\n", "\n")
        if text and not text.endswith("\n"):
            text += "\n"
        out = "\n".join(lines) + "\n" + text + "------------ END MESSAGE ------------\n"
        target = self.stream if self.stream is not None else sys.stdout
        if isinstance(target, (io.RawIOBase, io.BufferedIOBase)):
            target.write(out.encode("utf-8"))
        else:
            target.write(out)
        target.flush()
