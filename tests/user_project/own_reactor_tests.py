"""An application that runs the reactor in its own thread: ThreadedServer uses it (crochet.no_setup)."""

import smtplib
import threading

from twisted.internet import reactor

from txsmtpsrv.testing import ThreadedServer


def test_uses_a_reactor_someone_else_runs():
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, name="AppReactor")
    thread.start()
    try:
        with ThreadedServer() as server:
            with smtplib.SMTP(*server.address) as client:
                client.sendmail("a@example.test", ["b@example.test"], b"Subject: own\r\n\r\nx\r\n")
            assert server.wait_for(1)[0].message["Subject"] == "own"
        assert not any(t.name == "CrochetReactor" for t in threading.enumerate())
    finally:
        reactor.callFromThread(reactor.stop)
        thread.join(10)
