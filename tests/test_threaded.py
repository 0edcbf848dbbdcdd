# -*- test-case-name: tests.test_threaded -*-
"""
ThreadedServer where the test process already runs the reactor (trial).

Here the reactor belongs to trial, so the C{*_async} methods run the server
on it and the blocking client runs in a thread (C{deferToThread}): the
pattern the README gives for trial and pytest-twisted. The blocking
methods must refuse, with a message that says what to do instead, rather
than deadlock. (The blocking API, with crochet's reactor thread, is tested
in a subprocess by tests/test_pytest_plugin.py.)
"""

from __future__ import annotations

import smtplib
import ssl

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from txsmtpsrv import SMTPError
from txsmtpsrv.testing import MessagesNotReceived, ThreadedServer


def send(host: str, port: int, rcpts: list[str], starttls: ssl.SSLContext | None = None) -> dict:
    with smtplib.SMTP(host, port, timeout=10) as client:
        if starttls is not None:
            client.starttls(context=starttls)
        return client.sendmail("a@example.test", rcpts, b"Subject: trial\r\n\r\nx\r\n")


class Policy:
    def on_rcpt_to(self, session: object, address: object) -> None:
        if str(address).startswith("no@"):
            raise SMTPError(550, "No", "5.1.1")


class RunningReactorTests(unittest.TestCase):
    timeout = 30

    async def test_async_api_on_trials_reactor(self) -> None:
        """start_async / wait_for_async / stop_async on the running reactor; a thread sends."""
        server = ThreadedServer(Policy(), tls="starttls")
        self.assertIs(await server.start_async(), server)
        self.assertTrue(server.running and server.port > 0)
        refused = await deferToThread(send, server.host, server.port, ["ok@example.test", "no@example.test"],
                                      server.client_context())
        self.assertEqual(list(refused), ["no@example.test"])
        [message] = await server.wait_for_async(1, timeout=5)
        self.assertEqual(message.rcpt_to, ("ok@example.test",))
        self.assertTrue(message.secure)
        self.assertEqual(message.message["Subject"], "trial")
        await server.stop_async()
        self.assertFalse(server.running)
        with self.assertRaises(OSError):
            await deferToThread(send, server.host, server.port, ["ok@example.test"])

    async def test_stop_closes_idle_connections(self) -> None:
        """stop_async answers an idle client 421 and returns once it is gone."""
        server = await ThreadedServer().start_async()
        client = smtplib.SMTP()
        await deferToThread(client.connect, server.host, server.port)
        self.assertEqual(server.server.connections, 1)
        await server.stop_async()
        self.assertEqual(server.server.connections, 0)
        code, _ = await deferToThread(client.getreply)
        self.assertEqual(code, 421)
        client.close()

    async def test_stop_ends_a_transaction_in_progress_after_close_timeout(self) -> None:
        """A client stuck mid-body gets close_timeout seconds, then is dropped; stop returns."""
        server = await ThreadedServer(close_timeout=0.2).start_async()
        client = smtplib.SMTP()

        def start_body() -> None:
            client.connect(server.host, server.port)
            client.ehlo()
            client.mail("a@example.test")
            client.rcpt("b@example.test")
            client.putcmd("DATA")
            assert client.getreply()[0] == 354
            client.send(b"Subject: never finished\r\n")

        await deferToThread(start_body)
        await server.stop_async()
        self.assertEqual(server.server.connections, 0)
        self.assertEqual(server.messages, [])
        client.close()

    async def test_wait_for_async_timeout(self) -> None:
        server = await ThreadedServer().start_async()
        try:
            with self.assertRaises(MessagesNotReceived) as e:
                await server.wait_for_async(1, timeout=0.05)
            self.assertIn("0 arrived: none", str(e.exception))
        finally:
            await server.stop_async()

    async def test_blocking_methods_refuse_in_the_reactor_thread(self) -> None:
        """start(), stop() and wait_for() would deadlock here: they raise and name the async method."""
        await deferLater(reactor, 0, lambda: None)  # now surely inside the running reactor
        server = ThreadedServer()
        with self.assertRaises(RuntimeError) as e:
            server.start()
        self.assertIn("start_async()", str(e.exception))
        with self.assertRaises(RuntimeError) as e:
            server.wait_for(1, timeout=0.01)
        self.assertIn("wait_for_async()", str(e.exception))
        await server.start_async()
        with self.assertRaises(RuntimeError) as e:
            server.stop()
        self.assertIn("stop_async()", str(e.exception))
        await server.stop_async()
