# -*- test-case-name: tests.test_dmarc -*-
"""
DMARC (RFC 7489): policy discovery, identifier alignment, the verdict.

Pure logic over an injected asynchronous L{Lookup} (see L{_results}); the
organizational domain comes from the Public Suffix List via the
C{publicsuffixlist} package (its bundled list, loaded once).
"""

from __future__ import annotations

import email.utils
import random
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ._results import DKIMVerdict, DMARCVerdict, DNSTempError, Lookup, SPFVerdict
from ._spf import a_label

__all__ = ["check_dmarc", "from_domain", "organizational_domain", "parse_record"]

_psl = None
_POLICIES = ("none", "quarantine", "reject")


def organizational_domain(domain: str) -> str:
    """The registered domain (RFC 7489 3.2): one label below the longest public suffix."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList

        _psl = PublicSuffixList()
    domain = domain.lower().rstrip(".")
    return _psl.privatesuffix(domain) or domain


def aligned(a: str, b: str, strict: bool) -> bool:
    """Identifier alignment (RFC 7489 3.1): equal, or (relaxed) the same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if strict or a == b:
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def from_domain(values: Sequence[bytes]) -> Tuple[Optional[str], str]:
    """
    The RFC5322.From domain (RFC 7489 6.6.1) from the raw From field values.

    @return: C{(domain, "")}, or C{(None, why)} when there is no usable one:
        no From, several, or several different domains.
    """
    if len(values) != 1:
        return None, "no From field" if not values else "more than one From field"
    text = re.sub(r"\r?\n", "", values[0].decode("utf-8", "replace"))
    domains = {a_label(addr.rpartition("@")[2]) or "" for _name, addr in email.utils.getaddresses([text])
               if "@" in addr}
    domains.discard("")  # no usable domain: an address literal, an IP, a single label
    if len(domains) != 1:
        return None, "no domain in From" if not domains else "From names several domains"
    return domains.pop(), ""


def parse_record(text: bytes) -> Optional[Dict[str, str]]:
    """The tags of a C{v=DMARC1} record (names lower-cased), or None if it is not one."""
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    tags: Dict[str, str] = {}
    for part in decoded.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not eq:
            continue  # not a tag: ignored, as unknown tags are
        tags.setdefault(name, value.strip())
    if list(tags)[:1] != ["v"] or tags["v"] != "DMARC1":
        return None
    return tags


async def _discover(lookup: Lookup, domain: str) -> Optional[List[Dict[str, str]]]:
    records = []
    for text in await lookup(f"_dmarc.{domain}", "TXT"):
        tags = parse_record(text if isinstance(text, bytes) else str(text).encode())
        if tags is not None:
            records.append(tags)
    return records or None


def _downgrade(policy: str) -> str:
    return {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")


async def check_dmarc(lookup: Lookup, author_domain: str, spf: Optional[SPFVerdict],
                      dkim: Sequence[DKIMVerdict], sample: Callable[[], float] = random.random) -> DMARCVerdict:
    """
    DMARC for C{author_domain} given the SPF (MAIL FROM) and DKIM verdicts.

    @param sample: a number in [0, 1) for C{pct=} sampling (tests fix it).
    """
    org = organizational_domain(author_domain)
    try:
        records = await _discover(lookup, author_domain)
        at_org = False
        if records is None and org != author_domain:
            records = await _discover(lookup, org)
            at_org = True
    except DNSTempError as e:
        return DMARCVerdict("temperror", author_domain, reason=f"DNS: {e}")
    if records is None:
        return DMARCVerdict("none", author_domain, reason="no DMARC record")
    if len(records) > 1:
        return DMARCVerdict("none", author_domain, reason="more than one DMARC record")
    tags = records[0]
    policy = tags.get("p", "").lower()
    if at_org and tags.get("sp", "").lower() in _POLICIES:
        policy = tags["sp"].lower()
    if policy not in _POLICIES:
        if "rua" not in tags:
            return DMARCVerdict("permerror", author_domain, reason="DMARC record without a valid p=")
        policy = "none"
    strict_spf = tags.get("aspf", "r").lower() == "s"
    strict_dkim = tags.get("adkim", "r").lower() == "s"
    spf_ok = bool(spf is not None and spf.result == "pass" and aligned(spf.domain, author_domain, strict_spf))
    dkim_ok = any(v.result == "pass" and aligned(v.domain, author_domain, strict_dkim) for v in dkim)
    if spf_ok or dkim_ok:
        return DMARCVerdict("pass", author_domain, policy, "none", spf_ok, dkim_ok)
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    disposition = policy if sample() * 100 < pct else _downgrade(policy)
    return DMARCVerdict("fail", author_domain, policy, disposition, False, False,
                        reason="no aligned SPF or DKIM pass")
