#!/usr/bin/env python3
"""
txsmtpsrv's own share of a small message's instructions: the bench sink's
SMTPServer (as in ``_peers.py``) fed in memory, through a transport that drops
what it is given, so no reactor, socket or kernel work is in it.

    valgrind --tool=callgrind --callgrind-out-file=a.out python bench/inmemory.py persist 50
    valgrind --tool=callgrind --callgrind-out-file=b.out python bench/inmemory.py persist 250
    # (Ir of b - Ir of a) / 200 = instructions per message; churn: per connection

persist: one connection, HELO, then per message the reads MAIL, RCPT, DATA and a
1 KiB body as ``smtp-source`` sends them; churn: per connection connect, HELO, one
message, QUIT, close (the driver's ``StringTransport`` per connection included).
20 warm-up units run first in both runs, so start-up and warm-up cancel out.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peers  # noqa: E402

_peers._twisted_logging_to_stderr()  # warn and above, as the bench sink

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from txsmtpsrv import SMTPServer  # noqa: E402


class SinkHooks:
    def on_data(self, session, stream):
        return stream.collect(lambda chunk: None)


class Drop(StringTransport):
    def write(self, data):
        pass


SERVER = SMTPServer(SinkHooks(), name="bench", size=0, socket_timeout=300)
BODY = (b"From: a\r\n" + b"x" * 76 + b"\r\n") * 12 + b".\r\n"
DONE = Failure(ConnectionDone())


def connect():
    transport = Drop(hostAddress=IPv4Address("TCP", "127.0.0.1", 25),
                     peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol = SERVER.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    protocol.dataReceived(b"HELO client.test\r\n")
    return protocol


def message(protocol):
    protocol.dataReceived(b"MAIL FROM:<bench@client.test>\r\n")
    protocol.dataReceived(b"RCPT TO:<sink@server.test>\r\n")
    protocol.dataReceived(b"DATA\r\n")
    protocol.dataReceived(BODY)


def main(mode, count):
    if mode == "persist":
        protocol = connect()
        for _ in range(20 + count):
            message(protocol)
    elif mode == "churn":
        for _ in range(20 + count):
            protocol = connect()
            message(protocol)
            protocol.dataReceived(b"QUIT\r\n")
            protocol.connectionLost(DONE)
    else:
        raise SystemExit("usage: inmemory.py persist|churn COUNT")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
