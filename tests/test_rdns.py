# -*- test-case-name: tests.test_rdns -*-
"""
Tests for L{txsmtpsrv._rdns}: bounded, never-failing reverse DNS.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IResolver
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.names import dns, error
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txsmtpsrv._rdns import address_literal, canonical_ip, client_hostname, reverse_lookup


def ptr(owner: str, target: str | bytes) -> dns.RRHeader:
    """A PTR answer record."""
    return dns.RRHeader(owner, dns.PTR, dns.IN, 300, dns.Record_PTR(target))


def cname(owner: str, target: str) -> dns.RRHeader:
    """A CNAME answer record (RFC 2317 classless delegation)."""
    return dns.RRHeader(owner, dns.CNAME, dns.IN, 300, dns.Record_CNAME(target))


@implementer(IResolver)
class FakeResolver:
    """Answers lookupPointer from a table; records queries; can hang."""

    def __init__(self, answers: dict[str, Any] | None = None, hang: bool = False) -> None:
        self.answers = answers or {}
        self.hang = hang
        self.queries: list[tuple[str, Any]] = []
        self.cancelled = 0

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.queries.append((name, timeout))
        if self.hang:

            def cancel(d: Deferred[Any]) -> None:
                self.cancelled += 1

            return Deferred(cancel)
        result = self.answers.get(name)
        if result is None:
            return fail(error.DNSNameError(name))
        if isinstance(result, Exception):
            return fail(result)
        return succeed((result, [], []))


class ReverseLookupTests(SynchronousTestCase):
    """reverse_lookup with a fake IResolver and a fake clock."""

    def test_ptr_answer(self) -> None:
        """A PTR answer gives the name, lower-cased, without the trailing dot."""
        resolver = FakeResolver({"9.2.0.192.in-addr.arpa": [ptr("9.2.0.192.in-addr.arpa", "Mail.Example.ORG.")]})
        d = reverse_lookup("192.0.2.9", resolver=resolver, clock=Clock())
        self.assertEqual(self.successResultOf(d), "mail.example.org")
        ((name, timeout),) = resolver.queries
        self.assertEqual(name, "9.2.0.192.in-addr.arpa")
        self.assertAlmostEqual(sum(timeout), 1.5)  # short per-try timeouts, not the 60 s default

    def test_ipv6_nibbles(self) -> None:
        """IPv6 is looked up under ip6.arpa in nibble form."""
        owner = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        resolver = FakeResolver({owner: [ptr(owner, "v6.example.net")]})
        d = reverse_lookup("2001:db8::1", resolver=resolver, clock=Clock())
        self.assertEqual(self.successResultOf(d), "v6.example.net")

    def test_classless_cname_then_ptr(self) -> None:
        """CNAME records before the PTR (RFC 2317) are skipped."""
        owner = "9.2.0.192.in-addr.arpa"
        resolver = FakeResolver({owner: [cname(owner, "9.0-63.2.0.192.in-addr.arpa"), ptr("x", "host.test")]})
        self.assertEqual(self.successResultOf(reverse_lookup("192.0.2.9", resolver, clock=Clock())), "host.test")

    def test_nxdomain(self) -> None:
        """NXDOMAIN gives None and a debug log event."""
        with capturedLogs() as events:
            d = reverse_lookup("192.0.2.10", resolver=FakeResolver(), clock=Clock())
            self.assertIsNone(self.successResultOf(d))
        self.assertTrue(any(e.get("ip") == "192.0.2.10" and e["log_level"].name == "debug" for e in events))

    def test_no_ptr_record(self) -> None:
        """An answer without PTR records gives None."""
        resolver = FakeResolver({"9.2.0.192.in-addr.arpa": []})
        self.assertIsNone(self.successResultOf(reverse_lookup("192.0.2.9", resolver, clock=Clock())))

    def test_server_failure(self) -> None:
        """Any other DNS error gives None."""
        resolver = FakeResolver({"9.2.0.192.in-addr.arpa": error.DNSServerError("SERVFAIL")})
        self.assertIsNone(self.successResultOf(reverse_lookup("192.0.2.9", resolver, clock=Clock())))

    def test_resolver_raises(self) -> None:
        """A resolver that raises synchronously gives None."""

        @implementer(IResolver)
        class Broken:
            def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
                raise RuntimeError("boom")

        self.assertIsNone(self.successResultOf(reverse_lookup("192.0.2.9", Broken(), clock=Clock())))

    def test_hang_times_out(self) -> None:
        """A resolver that never answers is cancelled at the timeout and gives None."""
        clock = Clock()
        resolver = FakeResolver(hang=True)
        d = reverse_lookup("192.0.2.11", resolver=resolver, timeout=2.0, clock=clock)
        clock.advance(1.99)
        self.assertNoResult(d)
        clock.advance(0.02)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(resolver.cancelled, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_default_timeout(self) -> None:
        """The default hard cap is 1.5 seconds."""
        clock = Clock()
        d = reverse_lookup("192.0.2.11", resolver=FakeResolver(hang=True), clock=clock)
        clock.advance(1.49)
        self.assertNoResult(d)
        clock.advance(0.02)
        self.assertIsNone(self.successResultOf(d))

    def test_cancel(self) -> None:
        """Cancelling the result cancels the query and fires with None."""
        clock = Clock()
        resolver = FakeResolver(hang=True)
        d = reverse_lookup("192.0.2.11", resolver=resolver, clock=clock)
        d.cancel()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(resolver.cancelled, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_implausible_names_rejected(self) -> None:
        """PTR targets that don't look like host names (spoofed junk) give None."""
        owner = "9.2.0.192.in-addr.arpa"
        for target in (b"evil\r\nX-Header: 1", b"a b.test", b"-bad.test", b"x" * 64 + b".test", b"\xff.test", b"a..b"):
            resolver = FakeResolver({owner: [ptr(owner, target)]})
            self.assertIsNone(self.successResultOf(reverse_lookup("192.0.2.9", resolver, clock=Clock())), target)

    def test_not_an_address(self) -> None:
        """A non-IP string gives None without asking DNS."""
        resolver = FakeResolver()
        self.assertIsNone(self.successResultOf(reverse_lookup("mail.example.org", resolver, clock=Clock())))
        self.assertEqual(resolver.queries, [])

    def test_ipv4_mapped(self) -> None:
        """An IPv4-mapped IPv6 peer is looked up under in-addr.arpa."""
        resolver = FakeResolver({"9.2.0.192.in-addr.arpa": [ptr("9.2.0.192.in-addr.arpa", "v4.test")]})
        self.assertEqual(self.successResultOf(reverse_lookup("::ffff:192.0.2.9", resolver, clock=Clock())), "v4.test")

    def test_scoped_ipv6(self) -> None:
        """An IPv6 scope id is ignored for the lookup."""
        resolver = FakeResolver()
        self.successResultOf(reverse_lookup("fe80::1%eth0", resolver, clock=Clock()))
        self.assertTrue(resolver.queries[0][0].endswith(".ip6.arpa"))


class ClientHostnameTests(SynchronousTestCase):
    """client_hostname / address_literal formatting."""

    def test_name_wins(self) -> None:
        """A resolved name is used as is."""
        self.assertEqual(client_hostname("192.0.2.1", "mx.example.org"), "mx.example.org")

    def test_ipv4_literal(self) -> None:
        """Unresolved IPv4 clients show as [ip]."""
        self.assertEqual(client_hostname("192.0.2.1", None), "[192.0.2.1]")
        self.assertEqual(client_hostname("192.0.2.1", ""), "[192.0.2.1]")

    def test_ipv6_literal(self) -> None:
        """Unresolved IPv6 clients show as [IPv6:compressed]."""
        self.assertEqual(client_hostname("2001:DB8:0:0:0:0:0:1", None), "[IPv6:2001:db8::1]")
        self.assertEqual(address_literal("fe80::1%eth0"), "[IPv6:fe80::1]")

    def test_garbage(self) -> None:
        """Non-addresses are bracketed unchanged."""
        self.assertEqual(address_literal("unix"), "[unix]")


def test_canonical_ip():
    """One spelling per address: compressed IPv6, mixed-notation IPv4-mapped, no scope."""
    import ipaddress

    assert canonical_ip("2001:DB8:0:0:0:0:0:1") == "2001:db8::1"
    assert canonical_ip("::ffff:7f00:1") == "::ffff:127.0.0.1"
    assert canonical_ip(ipaddress.ip_address("::ffff:192.0.2.1")) == "::ffff:192.0.2.1"
    assert canonical_ip("fe80::1%eth0") == "fe80::1"
    assert canonical_ip("192.0.2.1") == "192.0.2.1"
    assert address_literal("::ffff:192.0.2.1") == "[192.0.2.1]"  # dual-stack peer shown as IPv4
