"""
Tests for L{txsmtpsrv._authres._spf}: RFC 7208 check_host() over a zone in a dictionary.
"""

from __future__ import annotations

from typing import Any, Coroutine, List

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests._authzone import CLIENT_IP, OTHER_IP, zone
from tests._dnszone import Zone
from txsmtpsrv._authres._results import DNSTempError
from txsmtpsrv._authres._spf import SPFError, _Context, check_host, check_identity, parse_record


def zone_lookup(data: Zone, log: List[Any] | None = None) -> Any:
    """An async L{Lookup} answering from a zone dictionary."""
    data = {k.lower(): v for k, v in data.items()}

    async def lookup(name: str, rrtype: str) -> List[Any]:
        if log is not None:
            log.append((name, rrtype))
        records = data.get(name.lower().rstrip("."))
        if records is None:
            return []
        if any(kind in ("SERVFAIL", "HANG") for kind, _ in records):
            raise DNSTempError(f"SERVFAIL {name}")
        found = [value for kind, value in records if kind == rrtype]
        return [v.encode() if rrtype == "TXT" else v for v in found]

    return lookup


class SPFTestCase(SynchronousTestCase):
    def run_coro(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def check(self, domain: str, ip: str = CLIENT_IP, sender: str = "", extra: Zone | None = None) -> str:
        data = zone()
        data.update(extra or {})
        result, _reason = self.run_coro(check_host(zone_lookup(data), ip, domain, sender or f"alice@{domain}",
                                                   "client.test"))
        return str(result)


class ResultTests(SPFTestCase):
    """Every result value of RFC 7208 section 2.6."""

    def test_pass(self) -> None:
        self.assertEqual(self.check("pass.test"), "pass")

    def test_fail(self) -> None:
        self.assertEqual(self.check("pass.test", ip=OTHER_IP), "fail")
        self.assertEqual(self.check("fail.test"), "fail")

    def test_softfail(self) -> None:
        self.assertEqual(self.check("softfail.test"), "softfail")

    def test_neutral(self) -> None:
        self.assertEqual(self.check("neutral.test"), "neutral")
        self.assertEqual(self.check("x.test", extra={"x.test": [("TXT", "v=spf1 ip4:10.0.0.1")]}), "neutral")

    def test_none(self) -> None:
        self.assertEqual(self.check("nospf.test"), "none")
        self.assertEqual(self.check("nxdomain.test"), "none")
        self.assertEqual(self.check("single-label"), "none")
        self.assertEqual(self.check("x.test", extra={"x.test": [("TXT", "v=spf10 -all"),
                                                              ("TXT", "spf1 -all")]}), "none")

    def test_permerror(self) -> None:
        self.assertEqual(self.check("permerror.test"), "permerror")
        two = {"x.test": [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 +all")]}
        self.assertEqual(self.check("x.test", extra=two), "permerror")

    def test_temperror(self) -> None:
        self.assertEqual(self.check("temperror.test"), "temperror")
        inner = {"x.test": [("TXT", "v=spf1 include:temperror.test -all")]}
        self.assertEqual(self.check("x.test", extra=inner), "temperror")

    def test_syntax_error_after_match_is_permerror(self) -> None:
        """Section 4.6: the whole record is parsed before anything is evaluated."""
        extra = {"x.test": [("TXT", f"v=spf1 ip4:{CLIENT_IP} bogus:thing -all")]}
        self.assertEqual(self.check("x.test", extra=extra), "permerror")


class MechanismTests(SPFTestCase):
    def test_include_and_redirect(self) -> None:
        self.assertEqual(self.check("include.test"), "pass")
        self.assertEqual(self.check("include.test", ip=OTHER_IP), "fail")
        self.assertEqual(self.check("redirect.test"), "pass")
        self.assertEqual(self.check("redirect.test", ip=OTHER_IP), "fail")

    def test_include_of_domain_without_record_is_permerror(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 include:nospf.test -all")]}
        self.assertEqual(self.check("x.test", extra=extra), "permerror")

    def test_include_fail_does_not_match(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 include:fail.test ~all")]}
        self.assertEqual(self.check("x.test", extra=extra), "softfail")

    def test_redirect_to_domain_without_record_is_permerror(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 redirect=nospf.test")]}
        self.assertEqual(self.check("x.test", extra=extra), "permerror")

    def test_redirect_ignored_after_all(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 -all redirect=pass.test")]}
        self.assertEqual(self.check("x.test", extra=extra), "fail")

    def test_a_with_cidr(self) -> None:
        self.assertEqual(self.check("a.test"), "pass")  # 192.0.2.200/24 holds 192.0.2.10
        self.assertEqual(self.check("a.test", ip="192.0.3.10"), "fail")

    def test_mx(self) -> None:
        self.assertEqual(self.check("mx.test"), "pass")
        self.assertEqual(self.check("mx.test", ip=OTHER_IP), "fail")

    def test_too_many_mx_is_permerror(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 mx -all")] + [("MX", (i, f"m{i}.x.test")) for i in range(11)]}
        self.assertEqual(self.check("x.test", extra=extra), "permerror")

    def test_ip6_and_mapped_ipv4(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/24 -all")]}
        self.assertEqual(self.check("x.test", ip="2001:db8::1", extra=extra), "pass")
        self.assertEqual(self.check("x.test", ip="2001:db9::1", extra=extra), "fail")
        self.assertEqual(self.check("x.test", ip="::ffff:192.0.2.10", extra=extra), "pass")

    def test_aaaa_dual_cidr(self) -> None:
        extra = {"x.test": [("TXT", "v=spf1 a//64 -all"), ("AAAA", "2001:db8:1:2::1")]}
        self.assertEqual(self.check("x.test", ip="2001:db8:1:2::99", extra=extra), "pass")
        self.assertEqual(self.check("x.test", ip="2001:db8:1:3::1", extra=extra), "fail")

    def test_ptr(self) -> None:
        extra = {
            "x.test": [("TXT", "v=spf1 ptr -all")],
            "10.2.0.192.in-addr.arpa": [("PTR", "host.x.test")],
            "host.x.test": [("A", CLIENT_IP)],
            "liar.test": [("TXT", "v=spf1 ptr -all")],
        }
        self.assertEqual(self.check("x.test", extra=extra), "pass")
        self.assertEqual(self.check("liar.test", extra=extra), "fail")  # the PTR name is not under liar.test

    def test_ptr_not_validated(self) -> None:
        extra = {
            "x.test": [("TXT", "v=spf1 ptr -all")],
            "10.2.0.192.in-addr.arpa": [("PTR", "host.x.test")],
            "host.x.test": [("A", "203.0.113.1")],  # does not point back
        }
        self.assertEqual(self.check("x.test", extra=extra), "fail")

    def test_exists_with_macros(self) -> None:
        self.assertEqual(self.check("macro.test", sender="bob-sales@macro.test"), "pass")
        self.assertEqual(self.check("macro.test", sender="carol@macro.test"), "fail")


class LimitTests(SPFTestCase):
    def test_include_loop_hits_the_ten_lookup_limit(self) -> None:
        self.assertEqual(self.check("loop.test"), "permerror")

    def test_eleven_dns_terms_is_permerror(self) -> None:
        terms = " ".join(f"a:h{i}.x.test" for i in range(11))
        extra = {"x.test": [("TXT", f"v=spf1 {terms} -all")]}
        extra.update({f"h{i}.x.test": [("A", "203.0.113.1")] for i in range(11)})
        self.assertEqual(self.check("x.test", extra=extra), "permerror")
        ten = {"x.test": [("TXT", "v=spf1 " + " ".join(f"a:h{i}.x.test" for i in range(10)) + " -all")]}
        ten.update({f"h{i}.x.test": [("A", "203.0.113.1")] for i in range(10)})
        self.assertEqual(self.check("x.test", extra=ten), "fail")

    def test_third_void_lookup_is_permerror(self) -> None:
        self.assertEqual(self.check("void.test"), "permerror")
        two = {"x.test": [("TXT", "v=spf1 a:n1.x.test a:n2.x.test ~all")]}
        self.assertEqual(self.check("x.test", extra=two), "softfail")

    def test_ip_mechanisms_do_not_count(self) -> None:
        terms = " ".join(f"ip4:10.0.0.{i}" for i in range(30))
        extra = {"x.test": [("TXT", f"v=spf1 {terms} -all")]}
        self.assertEqual(self.check("x.test", extra=extra), "fail")


class IdentityTests(SPFTestCase):
    def test_helo_identity(self) -> None:
        verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "helo", None, "helo.test"))
        self.assertEqual((verdict.result, verdict.identity, verdict.domain, verdict.sender),
                         ("pass", "helo", "helo.test", "postmaster@helo.test"))

    def test_address_literal_helo_is_none(self) -> None:
        verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "helo", None, "[192.0.2.10]"))
        self.assertEqual(verdict.result, "none")

    def test_null_sender_uses_helo(self) -> None:
        verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "mailfrom", "", "helo.test"))
        self.assertEqual((verdict.result, verdict.domain), ("pass", "helo.test"))

    def test_explanation_of_a_fail(self) -> None:
        """RFC 7208 6.2: the exp= record, macro-expanded (c and r only there)."""
        verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "mailfrom", "bob@explained.test",
                                               "helo.test", "mx.test"))
        self.assertEqual((verdict.result, verdict.explanation),
                         ("fail", "192.0.2.10 is not one of explained.test's mail servers (192.0.2.10, mx.test); "
                                  "see bob"))
        verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "mailfrom", "a@fail.test", "h"))
        self.assertEqual((verdict.result, verdict.explanation), ("fail", ""))  # no exp=

    def test_utf8_domain_is_checked_as_its_a_label(self) -> None:
        verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "mailfrom", "jörg@Bücher.test", "h"))
        self.assertEqual((verdict.result, verdict.domain, verdict.sender),
                         ("pass", "xn--bcher-kva.test", "jörg@xn--bcher-kva.test"))

    def test_ip_helo_is_none(self) -> None:
        for helo in ("192.0.2.10", "[192.0.2.10]", "[IPv6:2001:db8::1]", "localhost", ""):
            verdict = self.run_coro(check_identity(zone_lookup(zone()), CLIENT_IP, "helo", None, helo))
            self.assertEqual(verdict.result, "none", helo)

    def test_bad_ip_is_none(self) -> None:
        result, _ = self.run_coro(check_host(zone_lookup(zone()), "unix-socket", "pass.test", "a@pass.test"))
        self.assertEqual(result, "none")


class MacroTests(SPFTestCase):
    """The examples of RFC 7208 section 7.4."""

    def expand(self, spec: str, ip: str = "192.0.2.3") -> str:
        import ipaddress

        ctx = _Context(zone_lookup({}), ipaddress.ip_address(ip), "strong-bad@email.example.com", "mx.example.org")
        return str(self.run_coro(ctx.expand(spec, "email.example.com")))

    def test_rfc_examples(self) -> None:
        for spec, expected in [
            ("%{s}", "strong-bad@email.example.com"), ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"), ("%{d4}", "email.example.com"), ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"), ("%{d1}", "com"), ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"), ("%{l}", "strong-bad"), ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"), ("%{lr-}", "bad.strong"), ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
            ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
            ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
            ("%{h}", "mx.example.org"), ("%%%_%-", "% %20"), ("%{S}", "strong-bad%40email.example.com"),
        ]:
            self.assertEqual(self.expand(spec), expected, spec)

    def test_ipv6(self) -> None:
        self.assertEqual(self.expand("%{ir}.%{v}._spf.%{d2}", ip="2001:db8::cb01"),
                         "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")

    def test_p_macro_validates(self) -> None:
        import ipaddress

        data = {"3.2.0.192.in-addr.arpa": [("PTR", "mail.example.com")], "mail.example.com": [("A", "192.0.2.3")]}
        ctx = _Context(zone_lookup(data), ipaddress.ip_address("192.0.2.3"), "a@example.com", "h")
        self.assertEqual(self.run_coro(ctx.expand("%{p}", "example.com")), "mail.example.com")
        ctx = _Context(zone_lookup({}), ipaddress.ip_address("192.0.2.3"), "a@example.com", "h")
        self.assertEqual(self.run_coro(ctx.expand("%{p}", "example.com")), "unknown")


class FuzzTests(SPFTestCase):
    """Any record text gives one of the seven results; nothing raises, nothing loops."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([
        "a", "mx", "ptr", "all", "-all", "~all", "?all", "+all", "include:pass.test", "include:loop.test",
        "include:x.test", "redirect=x.test", "redirect=fail.test", "exp=x.test", "a:%{d}", "a:%{i}.x.test",
        "exists:%{l}.%{o}", "exists:%{ir}.%{v}.x.test", "ip4:192.0.2.0/24", "ip6:::/0", "a/24//64", "mx/0",
        "ptr:x.test", "%{z}", "a:", "ip4:", "=", "unknown=%{s}", "include:%{d2r}.x.test", "a:x.test%",
        "exists:%{p}.x.test", "mx:mx.test", "include:temperror.test", "a:nx1.test", "a:nx2.test",
    ]), max_size=8), st.sampled_from([z_ip for z_ip in ("192.0.2.10", "2001:db8::1", "::ffff:192.0.2.10")]))
    def test_never_raises(self, terms: List[str], ip: str) -> None:
        record = "v=spf1 " + " ".join(terms)
        result = self.check("x.test", ip=ip, extra={"x.test": [("TXT", record)]})
        self.assertIn(result, ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"))


class ParseTests(SynchronousTestCase):
    def test_valid(self) -> None:
        terms = parse_record("v=spf1 a//64 mx/24 a:x.example.com/24//48 ptr ptr:example.com "
                             "exists:%{i}.x.example.com ip4:10.0.0.0/8 ip6:::1 ~all "
                             "redirect=_spf.example.com exp=explain.%{d} unknown-mod=%{s} "
                             "a:%{l/}.example.com/24")
        self.assertEqual([t.name for t in terms],
                         ["a", "mx", "a", "ptr", "ptr", "exists", "ip4", "ip6", "all", "redirect", "exp",
                          "unknown-mod", "a"])
        self.assertEqual((terms[-1].domain, terms[-1].cidr4), ("%{l/}.example.com", 24))
        self.assertEqual((terms[0].cidr4, terms[0].cidr6, terms[1].cidr4, terms[2].cidr6), (32, 64, 24, 48))
        self.assertEqual(terms[8].qualifier, "~")

    def test_invalid(self) -> None:
        for record in ["v=spf1 foo", "v=spf1 a:", "v=spf1 ip4:1.2.3.4/33", "v=spf1 ip6:::1/129",
                       "v=spf1 redirect=a.example redirect=b.example", "v=spf1 -exp=x.example",
                       "v=spf1 include:%{z}.example.com", "v=spf1 a:%{d0}.example.com", "v=spf1 all:x",
                       "v=spf1 include", "v=spf1 ip4:1.2.3", "v=spf1 ip4:::1", "v=spf1 a:1.2.3.4",
                       "v=spf1 mx/024", "v=spf1 ptr/24", "v=spf1 exists:%{c}.example.com",
                       "v=spf1 include:foo", "v=spf1 a:x.example.com%", "v=spf1 a/", "v=spf1 a:x.example.com/",
                       "v=spf1 mx/24/", "v=spf1 a//", "v=spf1 a/abc", "v=spf1 a:x.example.com//129"]:
            with self.assertRaises(SPFError, msg=record) as caught:
                parse_record(record)
            self.assertEqual(caught.exception.result, "permerror")
