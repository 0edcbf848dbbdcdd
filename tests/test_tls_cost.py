# -*- test-case-name: tests.test_tls_cost -*-
"""
What a TLS connection costs the server beyond the cryptography: one TLS 1.3
session ticket per full handshake (OpenSSL's default is two), none when a
client resumes with a current ticket, and interface declarations that
Twisted's C{startTLS} makes per connection kept alive so they are cached.

The tickets are counted by Python's C{ssl} client (the system OpenSSL) as it
reads them, in memory and over STARTTLS, and by C{openssl s_client}.
"""

from __future__ import annotations

import gc
import os
import shutil
import smtplib
import ssl
import tempfile
from typing import Any, List, Tuple

from twisted.internet.interfaces import ISSLTransport
from twisted.trial import unittest
from zope.interface import implementedBy, providedBy
from zope.interface.declarations import Provides

from tests._support import tool_path
from tests._tls import IO_TIMEOUT, _TLSTestCase, mx_config
from tests.test_tls_tickets import _resumption, _s_client, client_context, handshake
from txsmtpsrv import _tlsconn, _tlslayer, _tlsnative, _tlstickets
from txsmtpsrv._tls import TLSContextHolder


def _counting(context: ssl.SSLContext) -> List[int]:
    """Count the NewSessionTicket messages C{context}'s connections read (CPython's message callback)."""
    tickets: List[int] = []

    def seen(conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes) -> None:
        if direction == "read" and msg_type == ssl._TLSMessageType.NEWSESSION_TICKET:
            tickets.append(1)

    context._msg_callback = seen  # type: ignore[attr-defined]
    return tickets


class TicketCountTests(unittest.SynchronousTestCase):
    def test_set_num_tickets_found(self) -> None:
        """SSL_CTX_set_num_tickets is found next to the ticket functions (the PyPI wheel's OpenSSL)."""
        native = _tlsnative.load()
        assert native is not None
        self.assertIsNotNone(native.set_num_tickets)
        self.assertEqual(_tlstickets.TICKETS_PER_HANDSHAKE, 1)

    def test_one_ticket_per_full_handshake(self) -> None:
        """TLS 1.3 and 1.2: one ticket after a full handshake, none after resuming with a current one."""
        holder = TLSContextHolder(mx_config())
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            client = client_context(version)
            tickets = _counting(client)
            session, resumed, _ = handshake(holder, client)
            self.assertEqual((len(tickets), resumed), (1, False), version)
            del tickets[:]
            session, resumed, _ = handshake(holder, client, session)
            self.assertEqual((len(tickets), resumed), (0, True), version)
            # The ticket still works for the next connection (stateless: reusable within its period).
            _, resumed, _ = handshake(holder, client, session)
            self.assertTrue(resumed)

    def test_sni_context_one_ticket(self) -> None:
        """A per-name context (SNI) also sends one ticket."""
        holder = TLSContextHolder(mx_config(sni={"other.test": mx_config()}))
        client = client_context(ssl.TLSVersion.TLSv1_3)
        tickets = _counting(client)
        handshake(holder, client, server_name="other.test")
        self.assertEqual(len(tickets), 1)

    def test_no_tickets_when_off(self) -> None:
        """
        session_tickets=False: no ticket at all. OpenSSL's OP_NO_TICKET alone still
        sent two stateful TLS 1.3 tickets that could never resume (cache off).
        """
        holder = TLSContextHolder(mx_config(session_tickets=False))
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            client = client_context(version)
            tickets = _counting(client)
            session, _, _ = handshake(holder, client)
            self.assertEqual(tickets, [], version)
            self.assertFalse(handshake(holder, client, session)[1])


class DeclarationTests(_TLSTestCase):
    async def test_startTLS_declarations_kept(self) -> None:
        """
        After a STARTTLS the declarations Twisted gave the transport and its TLS
        protocol are the ones kept, and the next connections reuse them: the
        cache zope.interface keeps weakly hits even with no TLS connection alive.
        """
        # Twisted's startTLS, which plain TCP no longer takes (txsmtpsrv._tlslayer): the
        # PROXY wrapper's connections still do.
        self.patch(_tlslayer, "ENABLED", False)
        _tlsconn._DECLARATIONS.clear()
        _, port = await self.start()

        def client() -> Tuple[int, bool]:
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                s.starttls(context=client_context(ssl.TLSVersion.TLSv1_3))
                code = s.noop()[0]
                return code, isinstance(s.sock, ssl.SSLSocket)

        self.assertEqual(await self.thread(client), (250, True))
        [(key, kept)] = _tlsconn._DECLARATIONS.items()
        transport_class, tls_class = key
        self.assertIn("TLSMemoryBIOProtocol", [c.__name__ for c in tls_class.__mro__])
        ids = [id(d) for d in kept]
        for _ in range(3):
            self.assertEqual(await self.thread(client), (250, True))
        gc.collect()
        self.assertEqual(list(_tlsconn._DECLARATIONS), [key])
        self.assertEqual([id(d) for d in _tlsconn._DECLARATIONS[key]], ids)
        # The kept ones are what zope.interface hands out for these classes.
        self.assertIs(Provides(transport_class, ISSLTransport), kept[0])
        interfaces = [ISSLTransport, *implementedBy(transport_class)]
        self.assertEqual({id(Provides(tls_class, i)) for i in interfaces}, set(ids[1:]))

    def test_bounded(self) -> None:
        """At most _MAX_DECLARATIONS pairs of classes are kept."""
        saved = dict(_tlsconn._DECLARATIONS)
        self.addCleanup(lambda: (_tlsconn._DECLARATIONS.clear(), _tlsconn._DECLARATIONS.update(saved)))
        _tlsconn._DECLARATIONS.clear()
        for i in range(_tlsconn._MAX_DECLARATIONS + 5):
            transport = type(f"T{i}", (), {})()
            transport.protocol = None  # type: ignore[attr-defined]
            _tlsconn.keep_declarations(transport)
        self.assertEqual(len(_tlsconn._DECLARATIONS), _tlsconn._MAX_DECLARATIONS)
        self.assertEqual(list(providedBy(transport)), [])  # only looked up, never declared on the object


class OpenSSLClientTicketTests(_TLSTestCase):
    async def test_s_client_one_ticket(self) -> None:
        """openssl s_client over STARTTLS, TLS 1.3: one 'New Session Ticket' after a full handshake, it resumes."""
        openssl = tool_path("openssl", "/usr/bin")
        _, port = await self.start()
        directory = tempfile.mkdtemp(prefix="txsmtpsrv-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "session.pem")
        first = await self.thread(_s_client, openssl, port, "-tls1_3", path, True)
        self.assertEqual(_resumption(first), "New TLSv1.3")
        self.assertEqual(first.count("Post-Handshake New Session Ticket arrived"), 1, first)
        second = await self.thread(_s_client, openssl, port, "-tls1_3", path, False)
        self.assertEqual(_resumption(second), "Reused TLSv1.3")
        self.assertEqual(second.count("Post-Handshake New Session Ticket arrived"), 0, second)
