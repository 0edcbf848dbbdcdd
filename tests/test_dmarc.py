"""
Tests for L{txsmtpsrv._authres._dmarc}: policy discovery and alignment (RFC 7489).
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests._dnszone import Zone
from tests.test_spf import zone_lookup
from txsmtpsrv._authres._dmarc import aligned, check_dmarc, from_domain, organizational_domain, parse_record
from txsmtpsrv._authres._results import DKIMVerdict, DMARCVerdict, SPFVerdict

ZONE: Zone = {
    "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject; rua=mailto:d@example.com")],
    "_dmarc.strict.example": [("TXT", "v=DMARC1; p=quarantine; sp=reject; adkim=s; aspf=s")],
    "_dmarc.half.example": [("TXT", "v=DMARC1; p=reject; pct=50")],
    "_dmarc.twice.example": [("TXT", "v=DMARC1; p=none"), ("TXT", "v=DMARC1; p=reject")],
    "_dmarc.nop.example": [("TXT", "v=DMARC1; adkim=s")],
    "_dmarc.nop-rua.example": [("TXT", "v=DMARC1; p=bogus; rua=mailto:x@nop-rua.example")],
    "_dmarc.notdmarc.example": [("TXT", "v=spf1 -all")],
    "_dmarc.temp.example": [("SERVFAIL", None)],
}


def spf(result: str, domain: str) -> SPFVerdict:
    return SPFVerdict(result, "mailfrom", domain, f"x@{domain}")


def dkim(result: str, domain: str) -> DKIMVerdict:
    return DKIMVerdict(result, domain, "sel")


class DMARCTests(SynchronousTestCase):
    def dmarc(self, domain: str, spf_v: Optional[SPFVerdict] = None, dkim_v: List[DKIMVerdict] = (),  # type: ignore
              sample: float = 0.0) -> DMARCVerdict:
        d: Deferred[Any] = Deferred.fromCoroutine(
            check_dmarc(zone_lookup(ZONE), domain, spf_v, list(dkim_v), sample=lambda: sample))
        return self.successResultOf(d)  # type: ignore[no-any-return]

    def test_pass_by_spf_or_dkim(self) -> None:
        v = self.dmarc("example.com", spf("pass", "example.com"))
        self.assertEqual((v.result, v.policy, v.disposition, v.spf_aligned, v.dkim_aligned),
                         ("pass", "reject", "none", True, False))
        v = self.dmarc("example.com", spf("fail", "example.com"), [dkim("pass", "example.com")])
        self.assertEqual((v.result, v.dkim_aligned), ("pass", True))

    def test_relaxed_alignment(self) -> None:
        """Relaxed: same organizational domain is enough, both ways."""
        self.assertEqual(self.dmarc("example.com", spf("pass", "bounces.example.com")).result, "pass")
        self.assertEqual(self.dmarc("news.example.com", None, [dkim("pass", "example.com")]).result, "pass")
        self.assertEqual(self.dmarc("example.com", spf("pass", "example.net")).result, "fail")

    def test_strict_alignment(self) -> None:
        self.assertEqual(self.dmarc("strict.example", spf("pass", "strict.example")).result, "pass")
        v = self.dmarc("strict.example", spf("pass", "mail.strict.example"), [dkim("pass", "sub.strict.example")])
        self.assertEqual((v.result, v.policy, v.disposition), ("fail", "quarantine", "quarantine"))

    def test_subdomain_policy(self) -> None:
        v = self.dmarc("sub.strict.example", spf("fail", "sub.strict.example"))
        self.assertEqual((v.result, v.policy, v.disposition), ("fail", "reject", "reject"))
        v = self.dmarc("sub.example.com")
        self.assertEqual((v.result, v.policy), ("fail", "reject"))  # no sp=: p applies

    def test_failing_dkim_does_not_count(self) -> None:
        self.assertEqual(self.dmarc("example.com", None, [dkim("fail", "example.com")]).result, "fail")

    def test_pct_sampling(self) -> None:
        self.assertEqual(self.dmarc("half.example", sample=0.2).disposition, "reject")
        self.assertEqual(self.dmarc("half.example", sample=0.7).disposition, "quarantine")

    def test_none(self) -> None:
        for domain in ("nodmarc.example", "notdmarc.example", "twice.example"):
            self.assertEqual(self.dmarc(domain, spf("pass", domain)).result, "none", domain)

    def test_invalid_policy(self) -> None:
        self.assertEqual(self.dmarc("nop.example").result, "permerror")
        v = self.dmarc("nop-rua.example")  # a valid rua: act as p=none
        self.assertEqual((v.result, v.policy, v.disposition), ("fail", "none", "none"))

    def test_temperror(self) -> None:
        self.assertEqual(self.dmarc("temp.example").result, "temperror")


class HelperTests(SynchronousTestCase):
    def test_organizational_domain(self) -> None:
        self.assertEqual(organizational_domain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(organizational_domain("Mail.Example.COM."), "example.com")
        self.assertEqual(organizational_domain("co.uk"), "co.uk")

    def test_aligned(self) -> None:
        self.assertTrue(aligned("a.example.co.uk", "b.example.co.uk", strict=False))
        self.assertFalse(aligned("a.example.co.uk", "b.example.co.uk", strict=True))
        self.assertFalse(aligned("example.co.uk", "other.co.uk", strict=False))

    def test_from_domain(self) -> None:
        self.assertEqual(from_domain([b" Alice <alice@Example.COM>\r\n"]), ("example.com", ""))
        self.assertEqual(from_domain([b" a@x.example, b@x.example"]), ("x.example", ""))
        self.assertIsNone(from_domain([b" a@x.example, b@y.example"])[0])
        self.assertIsNone(from_domain([b" a@x.example", b" b@x.example"])[0])
        self.assertIsNone(from_domain([])[0])
        self.assertIsNone(from_domain([b" undisclosed"])[0])
        self.assertEqual(from_domain(["Jörg <jörg@Bücher.test>".encode()]), ("xn--bcher-kva.test", ""))
        self.assertIsNone(from_domain([b" a@[192.0.2.1]"])[0])

    def test_parse_record(self) -> None:
        self.assertEqual(parse_record(b"v=DMARC1;p=none; pct=20"), {"v": "DMARC1", "p": "none", "pct": "20"})
        self.assertIsNone(parse_record(b"p=none; v=DMARC1"))
        self.assertIsNone(parse_record(b"v=dmarc1; p=none"))
