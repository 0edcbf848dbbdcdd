# -*- test-case-name: tests.test_cycles_loopback -*-
"""
A txsmtpsrv server in a process of its own, for C{tests/test_cycles_loopback.py}:
it tells what the connections served between two commands left for Python's
cyclic garbage collector.

A process of its own, because the question is about every object of the
connection, Twisted's TCP and TLS transports included, with logging begun as a
daemon begins it (a test run's log buffer would hold the connections).

    python tests/_cycle_server.py   ->  "listening PORT SMTPS_PORT PROXY_PORT"
    stdin "start"                   ->  "started"   (once no connection is open: collector run, then off)
    stdin "report"                  ->  one JSON line, once no connection is open:
                                        {"garbage": [type names], "alive": [type names]}
"""

from __future__ import annotations

import gc
import json
import sys
from collections import Counter
from typing import Any, Dict, List


def _ours(objects: List[Any]) -> List[str]:
    """The type names of those of C{objects} that are txsmtpsrv's."""
    names = []
    for o in objects:
        module = type(o).__module__
        if isinstance(module, str) and module.startswith("txsmtpsrv"):
            names.append(module + "." + type(o).__qualname__)
    return names


class Hooks:
    """A sink reading every body; recipients at refused.test are refused, as an MX refuses unknown users."""

    def on_rcpt_to(self, session: Any, address: Any) -> None:
        from txsmtpsrv import SMTPError

        if address.address.endswith("@refused.test"):
            raise SMTPError(550, "no such user", enhanced="5.1.1")

    def on_data(self, session: Any, stream: Any) -> Any:
        return stream.collect(lambda chunk: None)


def main() -> None:
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import gatherResults
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
                                textFileLogObserver)
    from twisted.protocols.basic import LineReceiver

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False)
    from txsmtpsrv import SMTPServer

    # STARTTLS and implicit TLS on the development certificate.
    server = SMTPServer(Hooks(), name="cycles.test", socket_timeout=30)
    smtps = SMTPServer(Hooks(), name="cycles.test", socket_timeout=30, secure=True)
    before: Dict[str, Counter[str]] = {}

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line == b"start":
                self._when_closed(self._start, 500)
            elif line == b"report":
                self._when_closed(self._report, 500)

        def _when_closed(self, then: Any, tries: int) -> None:
            """Call C{then()} once every connection is closed (or after 5 s: the report says so)."""
            if (server.connections or smtps.connections) and tries:
                reactor.callLater(0.01, self._when_closed, then, tries - 1)
                return
            try:
                then()
            except Exception as e:  # the test reads one line per command: never leave it waiting
                self.sendLine(json.dumps({"error": repr(e)}).encode())

        def _start(self) -> None:
            gc.collect()
            before["counts"] = Counter(_ours(gc.get_objects()))
            gc.disable()
            self.sendLine(b"started")

        def _report(self) -> None:
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = sorted(_ours(gc.garbage))
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            gc.collect()
            alive = Counter(_ours(gc.get_objects())) - before["counts"]
            result = {"garbage": garbage, "alive": sorted(alive.elements()), "open": server.connections + smtps.connections}
            self.sendLine(json.dumps(result).encode())

        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()

    def listening(ports: List[Any]) -> None:
        sys.stdout.write("listening " + " ".join(str(port.getHost().port) for port in ports) + "\n")
        sys.stdout.flush()
        stdio.StandardIO(Control())

    gatherResults([
        server.listen("tcp:0:interface=127.0.0.1"),  # plain, STARTTLS offered
        smtps.listen("tcp:0:interface=127.0.0.1"),  # implicit TLS
        server.listen("smtpproxy:trusted=127.0.0.0/8:tcp:0:interface=127.0.0.1"),  # behind a PROXY-speaking balancer
    ]).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
