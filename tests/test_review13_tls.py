# -*- test-case-name: tests.test_review13_tls -*-
"""
Review of issue 13 part 3 (session tickets): resumption must not carry a
session across client-certificate policies, and the ticket callback must
outlive every OpenSSL context that may still call it.
"""

from __future__ import annotations

import gc
import ssl
import sys
import weakref
from typing import Any, Optional, Tuple

from OpenSSL import SSL
from twisted.logger import capturedLogs
from twisted.trial import unittest

from tests._tls import material, mx_config
from tests.test_tls_tickets import SECRET, _Handle, client_context, handshake
from txsmtpsrv._tls import TLSContextHolder, tls_info

VERSIONS = [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]


#: The server's OpenSSL reasons for refusing a client under its certificate policy.
NO_CERTIFICATE = "peer did not return a certificate"
UNVERIFIED = "certificate verify failed"


def _reasons(error: SSL.Error) -> Tuple[str, ...]:
    """The reason strings of an OpenSSL error ([(library, function, reason), ...])."""
    return tuple(str(entry[2]) for entry in error.args[0] if len(entry) == 3) if error.args else ()


def attempt(holder: Any, client: ssl.SSLContext, session: Optional[ssl.SSLSession], refusal: str
            ) -> Optional[Tuple[bool, Any]]:
    """
    A handshake: (resumed, TLSInfo) when it completes; None when the server
    refused it for C{refusal} (its certificate policy). Any other failure
    (another TLS error, a handshake that stalls) propagates, so a test fails
    for what actually went wrong rather than passing as "refused".
    """
    try:
        _, resumed, server = handshake(holder, client, session)
    except SSL.Error as e:
        if refusal in _reasons(e):
            return None
        raise
    return resumed, tls_info(_Handle(server))


class PolicyAcrossResumptionTests(unittest.SynchronousTestCase):
    """
    Servers (or one server over a reload) sharing a ticket secret but not a
    client-certificate policy: a session made under the laxer policy must
    not resume under the stricter one (OpenSSL skips the certificate request
    and verification when it resumes).
    """

    def test_required_certificate_not_bypassed(self) -> None:
        """A ticket from a server asking for no certificate does not get a client past require_client_cert."""
        lax = TLSContextHolder(mx_config(ticket_secret=SECRET))
        strict = TLSContextHolder(mx_config(ticket_secret=SECRET, require_client_cert=True,
                                            ca=material().ca.cert_pem))
        for version in VERSIONS:
            client = client_context(version)  # no client certificate
            session, resumed, _ = handshake(lax, client)
            self.assertFalse(resumed)
            outcome = attempt(strict, client, session, NO_CERTIFICATE)
            if outcome is not None:  # it may only complete with a (verified) certificate
                resumed, info = outcome
                self.assertFalse(resumed, version)
                self.assertIsNotNone(info.peer_certificate, version)

    def test_unverified_certificate_not_verified_after_reload(self) -> None:
        """
        A certificate accepted unverified (no ca) and then resumed after a
        reload that sets a ca is not reported verified: the foreign CA's
        certificate was never checked against it.
        """
        m = material()
        for version in VERSIONS:
            holder = TLSContextHolder(mx_config(ticket_secret=SECRET, request_client_cert=True))
            client = client_context(version)
            client.load_cert_chain(m.paths["foreign_client.crt"], m.paths["foreign_client.key"])
            session, _, first = handshake(holder, client)
            self.assertFalse(tls_info(_Handle(first)).peer_certificate_verified)
            with capturedLogs():
                holder.reload(mx_config(ticket_secret=SECRET, request_client_cert=True, ca=m.ca.cert_pem))
            outcome = attempt(holder, client, session, UNVERIFIED)
            if outcome is not None:
                resumed, info = outcome
                self.assertFalse(info.peer_certificate_verified and info.peer_certificate is not None
                                 and info.peer_certificate.issuer == m.foreign.cert.issuer, version)
                self.assertFalse(resumed, version)

    def test_same_policy_still_resumes(self) -> None:
        """The fix must not cost resumption where the policy is the same (two holders, one secret)."""
        m = material()
        for kw in ({}, {"require_client_cert": True, "ca": m.ca.cert_pem}):
            one = TLSContextHolder(mx_config(ticket_secret=SECRET, **kw))
            two = TLSContextHolder(mx_config(ticket_secret=SECRET, **kw))
            for version in VERSIONS:
                client = client_context(version)
                if kw:
                    client.load_cert_chain(m.paths["client.crt"], m.paths["client.key"])
                session, _, _ = handshake(one, client)
                self.assertTrue(handshake(two, client, session)[1], (kw, version))


class AttemptTests(unittest.SynchronousTestCase):
    """L{attempt} calls only the expected policy refusal a refusal; the tests above rely on it."""

    def strict(self) -> TLSContextHolder:
        return TLSContextHolder(mx_config(require_client_cert=True, ca=material().ca.cert_pem))

    def test_expected_refusal(self) -> None:
        """No client certificate where one is required: the server's own reason, so None."""
        for version in VERSIONS:
            self.assertIsNone(attempt(self.strict(), client_context(version), None, NO_CERTIFICATE))

    def test_other_tls_refusal_propagates(self) -> None:
        """The server refusing for another reason than the one expected is an error, not "refused"."""
        for version in VERSIONS:
            with self.assertRaises(SSL.Error) as caught:
                attempt(self.strict(), client_context(version), None, UNVERIFIED)
            self.assertIn(NO_CERTIFICATE, _reasons(caught.exception))

    def test_unrelated_failures_propagate(self) -> None:
        """A refused connection, a timeout or a stalled handshake are not policy refusals."""
        module = sys.modules[__name__]  # where attempt() finds handshake
        for error in (ConnectionRefusedError(111, "Connection refused"), TimeoutError("timed out"),
                      AssertionError("handshake did not finish")):
            def fail(*args: Any, _error: BaseException = error) -> Any:
                raise _error
            self.patch(module, "handshake", fail)
            with self.assertRaises(type(error)):
                attempt(self.strict(), client_context(VERSIONS[0]), None, NO_CERTIFICATE)

    def test_completed_handshake(self) -> None:
        """A handshake the policy allows completes: (resumed, TLSInfo)."""
        outcome = attempt(TLSContextHolder(mx_config()), client_context(VERSIONS[0]), None, NO_CERTIFICATE)
        assert outcome is not None
        self.assertFalse(outcome[0])
        self.assertIsNone(outcome[1].peer_certificate)


class CallbackLifetimeTests(unittest.SynchronousTestCase):
    """
    OpenSSL calls the ticket callback of the connection's first context
    (C{session_ctx}) even after SNI switched it to another one. The cffi
    callback is freed with its L{TicketKeys}: those must live as long as a
    connection that may still call them, also after a reload with another
    secret dropped them from the holder.
    """

    def test_keys_outlive_reload_while_sni_connection_lives(self) -> None:
        m = material()
        sni = {"other.test": (m.mx.key_pem, m.mx.cert_pem)}
        holder = TLSContextHolder(mx_config(ticket_secret=SECRET, sni=sni))
        keys = holder._current.tickets
        self.assertIsNotNone(keys)
        alive = weakref.ref(keys)
        conn = holder.serverConnectionForTLS(None)
        # What the SNI callback does in the middle of a handshake:
        conn.set_context(holder._current.context_for_name(b"other.test"))
        del keys
        with capturedLogs():
            holder.reload(mx_config(ticket_secret=b"y" * 32, sni=sni))
        gc.collect()
        self.assertIsNotNone(alive(), "the ticket callback of a live connection's first context was freed")
        del conn
