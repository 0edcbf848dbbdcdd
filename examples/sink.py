"""
A mail sink that prints each message it receives.

    python examples/sink.py            # listens on 127.0.0.1:2525
    python examples/sink.py tcp:2526:interface=127.0.0.1

Then send it something, e.g. ``swaks --server 127.0.0.1:2525 --to you@example.test``.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from txsmtpsrv import Hooks, SMTPServer


class PrintingHooks(Hooks):
    """Print the envelope and the body of every message, then accept it."""

    def __init__(self, out=sys.stdout):
        self.out = out

    async def on_data(self, session, stream):
        body = await stream.content()  # small test messages: fine to hold in memory
        env = session.envelope
        self.out.write(f"---------- {session.id} from {session.remote_address}\n"
                       f"MAIL FROM: {env.mail_from.address or '<>'}\n"
                       f"RCPT TO: {', '.join(r.address for r in env.rcpt_to)}\n\n")
        self.out.write(body.decode("utf-8", "replace").replace("\r\n", "\n"))
        self.out.write("---------- end\n")
        self.out.flush()


async def main(reactor, endpoint="tcp:2525:interface=127.0.0.1"):
    server = SMTPServer(PrintingHooks(), name="sink.localhost")
    port = await server.listen(endpoint)
    Logger().info("listening on {address}", address=port.getHost())
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
