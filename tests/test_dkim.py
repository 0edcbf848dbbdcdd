"""
Tests for L{txsmtpsrv._authres._dkim}: streamed body hashing equals dkimpy's,
and every DKIM and ARC verdict over messages dkimpy signed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence

import dkim
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests import _authzone as z
from txsmtpsrv._authres._dkim import BodyHasher, KeyAnswer, MessageScanner, key_names, verify_arc, verify_dkim
from txsmtpsrv._authres._results import DNSTempError


def dkimpy_body(body: bytes, relaxed: bool) -> bytes:
    """What dkimpy hashes for C{body} (after its own C{\\r?\\n} splitting)."""
    _headers, parsed = dkim.rfc822_parse(b"X: y\r\n\r\n" + body)
    return (Relaxed if relaxed else Simple).canonicalize_body(parsed)  # type: ignore[no-any-return]


def streamed(body: bytes, relaxed: bool, cuts: Sequence[int], limit: Optional[int] = None) -> bytes:
    hasher = BodyHasher(relaxed)
    out: List[bytes] = []

    class Tap:
        def update(self, data: bytes) -> None:
            out.append(data)

    hasher.add(Tap, limit)
    start = 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]:
        hasher.feed(body[start:cut])
        start = max(start, cut)
    hasher.finish()
    return b"".join(out)


_BODY = st.lists(st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"  \r\n", b"\r\n\r\n", b"."]),
                 max_size=60).map(b"".join)


class CanonicalizationTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(_BODY, st.lists(st.integers(min_value=0, max_value=200), max_size=8), st.booleans())
    def test_same_as_dkimpy(self, body: bytes, cuts: List[int], relaxed: bool) -> None:
        self.assertEqual(streamed(body, relaxed, cuts), dkimpy_body(body, relaxed))

    @settings(max_examples=100, deadline=None)
    @given(_BODY, st.lists(st.integers(min_value=0, max_value=200), max_size=4), st.booleans(),
           st.integers(min_value=0, max_value=40))
    def test_length_limit(self, body: bytes, cuts: List[int], relaxed: bool, limit: int) -> None:
        self.assertEqual(streamed(body, relaxed, cuts, limit), dkimpy_body(body, relaxed)[:limit])

    def test_known_cases(self) -> None:
        for body, relaxed, expected in [
            (b"", False, b"\r\n"), (b"", True, b""), (b"\r\n\r\n\r\n", False, b"\r\n"),
            (b"\r\n\r\n", True, b""), (b"a  b \t\r\n\r\n", True, b"a b\r\n"), (b"x", True, b"x\r\n"),
            (b"a\nb\n", False, b"a\r\nb\r\n"),
        ]:
            self.assertEqual(streamed(body, relaxed, [1, 3]), expected, (body, relaxed))

    def test_long_runs_stay_small(self) -> None:
        """A megabyte of blanks or of empty lines is held as a count, not as bytes."""
        hasher = BodyHasher(True)
        h = hasher.add(hashlib.sha256, None)
        for _ in range(16):
            hasher.feed(b" " * 65536)
            self.assertLessEqual(len(hasher._carry), 2)
        for _ in range(16):
            hasher.feed(b"\r\n" * 32768)
        hasher.feed(b"end\r\n")
        hasher.finish()
        expected = dkimpy_body(b" " * (16 * 65536) + b"\r\n" * (16 * 32768) + b"end\r\n", True)
        self.assertEqual(h.digest(), hashlib.sha256(expected).digest())


def scan(message: bytes, chunk: int = 7) -> MessageScanner:
    body: List[bytes] = []
    scanner = MessageScanner(body.append)
    for i in range(0, len(message), chunk):
        scanner.feed(message[i:i + chunk])
    scanner.finish()
    scanner.spooled = b"".join(body)  # type: ignore[attr-defined]
    return scanner


def keys_for(scanner: MessageScanner, arc: bool = False, override: Optional[Dict[str, KeyAnswer]] = None
             ) -> Dict[str, KeyAnswer]:
    zone = z.zone()
    keys: Dict[str, KeyAnswer] = {}
    for name in key_names(scanner.signature_fields(arc)):
        records = zone.get(name, [])
        if any(kind == "SERVFAIL" for kind, _ in records):
            keys[name] = DNSTempError("SERVFAIL")
        else:
            texts = [value for kind, value in records if kind == "TXT"]
            keys[name] = texts[0].encode() if texts else None
    keys.update(override or {})
    return keys


def dkim_results(message: bytes, **kw: Any) -> List[str]:
    scanner = scan(message)
    verdicts = verify_dkim(scanner.parse_header, scanner.body_hashes, keys_for(scanner), **kw)
    return [v.result for v in verdicts]


class DKIMTests(SynchronousTestCase):
    def test_pass_any_canonicalization(self) -> None:
        for canon in [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple"),
                      (b"simple", b"relaxed")]:
            msg = z.sign(z.message(body=b"Line  one \r\n\r\nline\ttwo\r\n\r\n\r\n"), canonicalize=canon)
            self.assertEqual(dkim_results(msg), ["pass"], canon)

    def test_ed25519(self) -> None:
        """RFC 8463 signatures (dkimpy verifies them with PyNaCl)."""
        self.assertEqual(dkim_results(z.sign_ed25519(z.message())), ["pass"])
        self.assertEqual(dkim_results(z.sign_ed25519(z.message()).replace(b"Hello", b"Jello")), ["fail"])
        both = z.sign_ed25519(z.sign(z.message()))
        self.assertEqual(dkim_results(both), ["pass", "pass"])

    def test_scanner_keeps_the_body(self) -> None:
        msg = z.sign(z.message(body=b"the body\r\n"))
        scanner = scan(msg, chunk=3)
        self.assertEqual(scanner.header + scanner.separator + scanner.spooled, msg)  # type: ignore[attr-defined]

    def test_body_changed_is_fail(self) -> None:
        msg = z.sign(z.message()).replace(b"Hello there.", b"Hello THERE.")
        scanner = scan(msg)
        verdicts = verify_dkim(scanner.parse_header, scanner.body_hashes, keys_for(scanner))
        self.assertEqual([(v.result, v.reason) for v in verdicts], [("fail", "body hash did not verify")])

    def test_header_changed_is_fail(self) -> None:
        msg = z.sign(z.message()).replace(b"Subject: test", b"Subject: tset")
        self.assertEqual(dkim_results(msg), ["fail"])

    def test_every_signature(self) -> None:
        msg = z.sign(z.sign(z.message()), domain="other.test")
        scanner = scan(msg)
        verdicts = verify_dkim(scanner.parse_header, scanner.body_hashes, keys_for(scanner))
        self.assertEqual([(v.result, v.domain) for v in verdicts], [("pass", "other.test"), ("pass", "mail.test")])
        self.assertEqual(dkim_results(msg, max_signatures=1), ["pass"])

    def test_length_tag_allows_appended_text(self) -> None:
        msg = z.sign(z.message(), length=True) + b"-- appended by a list\r\n"
        self.assertEqual(dkim_results(msg), ["pass"])

    def test_permerror_cases(self) -> None:
        self.assertEqual(dkim_results(z.sign(z.message(), selector="nokey", key_name="mail.test")), ["permerror"])
        self.assertEqual(dkim_results(z.sign(z.message(), selector="bad", key_name="mail.test")), ["permerror"])
        self.assertEqual(dkim_results(z.sign(z.message(), selector="revoked", key_name="mail.test")),
                         ["permerror"])
        broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=mail.test; s=sel; b=AAAA\r\n" + z.message()
        self.assertEqual(dkim_results(broken), ["permerror"])  # no bh= nor h=
        garbage = b"DKIM-Signature: this is not a tag list\r\n" + z.message()
        self.assertEqual(dkim_results(garbage), ["permerror"])

    def test_rsa_sha1_is_not_accepted(self) -> None:
        """RFC 8301: a valid rsa-sha1 signature must not pass."""
        import dkim as dkimpy

        msg = z.message()
        signature = dkimpy.sign(msg, b"sel", b"mail.test", z.key("mail.test"), signature_algorithm=b"rsa-sha1",
                                include_headers=[b"from"])
        self.assertEqual(dkim_results(signature + msg), ["permerror"])

    def test_from_must_be_signed(self) -> None:
        """RFC 6376 6.1.1: a signature whose h= lacks From is ignored with a permanent failure."""
        import dkim as dkimpy

        msg = z.message()
        signature = dkimpy.sign(msg, b"sel", b"mail.test", z.key("mail.test"), include_headers=[b"subject", b"from"])
        self.assertEqual(dkim_results(signature + msg), ["pass"])
        unsigned_from = signature.replace(b"h=subject : from", b"h=subject")
        self.assertNotEqual(unsigned_from, signature)
        self.assertEqual(dkim_results(unsigned_from + msg), ["permerror"])

    def test_short_key_is_permerror(self) -> None:
        """Keys under the minimum (1024 bits, RFC 8301 3.2) do not count: here the minimum is raised."""
        self.assertEqual(dkim_results(z.sign(z.message())), ["pass"])
        self.assertEqual(dkim_results(z.sign(z.message()), minkey=2048), ["permerror"])

    def test_temperror_when_the_key_lookup_fails(self) -> None:
        msg = z.sign(z.message(), selector="temp", key_name="mail.test")
        self.assertEqual(dkim_results(msg), ["temperror"])

    def test_no_signature(self) -> None:
        self.assertEqual(dkim_results(z.message()), [])

    def test_key_names(self) -> None:
        scanner = scan(z.sign(z.sign(z.message()), domain="other.test"))
        self.assertEqual(key_names(scanner.signature_fields(False)),
                         ["sel._domainkey.other.test", "sel._domainkey.mail.test"])

    def test_oversized_header_section(self) -> None:
        body: List[bytes] = []
        scanner = MessageScanner(body.append, max_header=100)
        msg = z.sign(z.message())
        scanner.feed(msg[:50])
        scanner.feed(msg[50:])
        scanner.finish()
        self.assertIsNone(scanner.header)
        self.assertEqual(b"".join(body), msg)


class FuzzTests(SynchronousTestCase):
    """Hostile header sections never raise: every signature gets a verdict."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([
        b"DKIM-Signature: v=1; a=rsa-sha256; d=mail.test; s=sel; h=from; bh=AAAA; b=AAAA",
        b"DKIM-Signature: a=rsa-sha256; d=; s=; bh=; b=", b"DKIM-Signature: ;;;==;", b"DKIM-Signature:",
        b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/bogus; l=-1; d=mail.test; s=sel; h=from; bh=; b=AA",
        b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=forwarder.test; s=arc; b=AAAA",
        b"ARC-Message-Signature: i=1; a=rsa-sha256; d=forwarder.test; s=arc; h=from; bh=AAAA; b=AAAA",
        b"ARC-Authentication-Results: i=1; x", b"ARC-Seal: i=99999999999999; cv=pass",
        b"From: a@mail.test", b" folded continuation", b"\tmore", b"Subject: \xff\xfe",
        b"not a header line", b"DKIM-Signature: v=1; d=\xc3\xa9.test; s=\xff; h=from; bh=AA==; b=AA==",
    ]), max_size=12), st.binary(max_size=64))
    def test_never_raises(self, lines: List[bytes], body: bytes) -> None:
        msg = b"\r\n".join(lines) + b"\r\n\r\n" + body
        scanner = scan(msg, chunk=5)
        keys = keys_for(scanner, arc=True)
        verdicts = verify_dkim(scanner.parse_header, scanner.body_hashes, keys)
        count = sum(1 for name, _ in scanner.fields if name.lower() == b"dkim-signature")
        self.assertEqual(len(verdicts), min(count, 10))
        for verdict in verdicts:
            self.assertIn(verdict.result, ("pass", "fail", "neutral", "temperror", "permerror"))
        self.assertIn(verify_arc(scanner.parse_header, scanner.body_hashes, keys).result, ("pass", "fail", "none"))


class ARCTests(SynchronousTestCase):
    def arc(self, message: bytes) -> Any:
        scanner = scan(message)
        return verify_arc(scanner.parse_header, scanner.body_hashes, keys_for(scanner, arc=True))

    def test_none(self) -> None:
        self.assertEqual(self.arc(z.sign(z.message())).result, "none")

    def test_one_and_two_hops_pass(self) -> None:
        once = z.seal(z.sign(z.message()), "forwarder.test")
        verdict = self.arc(once)
        self.assertEqual((verdict.result, verdict.instances, verdict.sealers), ("pass", 1, ("forwarder.test",)))
        twice = z.seal(once, "second.test", srv_id="second.test", results="arc=pass")
        verdict = self.arc(twice)
        self.assertEqual((verdict.result, verdict.instances, verdict.sealers),
                         ("pass", 2, ("second.test", "forwarder.test")))

    def test_body_changed_after_sealing_fails(self) -> None:
        sealed = z.seal(z.message(), "forwarder.test").replace(b"Hello there.", b"Hello again.")
        self.assertEqual(self.arc(sealed).result, "fail")

    def test_broken_seal_fails(self) -> None:
        twice = z.seal(z.seal(z.message(), "forwarder.test"), "second.test", srv_id="second.test",
                       results="arc=pass")
        # Tamper with the first hop's ARC-Authentication-Results, which the seals cover.
        tampered = twice.replace(b"ARC-Authentication-Results: i=1; forwarder.test;\r\n spf=pass",
                                 b"ARC-Authentication-Results: i=1; forwarder.test;\r\n spf=fail")
        self.assertNotEqual(tampered, twice)
        self.assertEqual(self.arc(tampered).result, "fail")

    def test_sealer_that_saw_a_failed_chain_ends_it(self) -> None:
        """An ARC-Seal with cv=fail: the chain is failed for good (RFC 8617 5.2)."""
        failed = z.seal(z.seal(z.message(), "forwarder.test"), "second.test", srv_id="second.test",
                        results="arc=fail")
        self.assertIn(b"cv=fail", failed)
        self.assertEqual(self.arc(failed).result, "fail")

    def test_instance_above_50_fails(self) -> None:
        sealed = z.seal(z.message(), "forwarder.test").replace(b"ARC-Seal: i=1;", b"ARC-Seal: i=51;")
        self.assertEqual(self.arc(sealed).result, "fail")

    def test_missing_set_member_fails(self) -> None:
        sealed = z.seal(z.message(), "forwarder.test")
        start = sealed.index(b"ARC-Seal:")
        end = sealed.index(b"ARC-Message-Signature:")
        self.assertEqual(self.arc(sealed[:start] + sealed[end:]).result, "fail")
