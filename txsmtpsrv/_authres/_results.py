# -*- test-case-name: tests.test_authres -*-
"""
Verdict values (SPF, DKIM, DMARC, ARC) and the C{Authentication-Results}
header (RFC 8601) built from them.

Pure: no Twisted. The values are what hooks read from
C{session.envelope.auth}; L{AuthResults.header} renders them with the
C{authres} package, folded at each result so no line grows past 998 octets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, List, Optional, Tuple, Union

__all__ = ["ARCVerdict", "AuthResults", "DKIMVerdict", "DMARCVerdict", "DNSTempError", "Lookup",
           "SPFVerdict", "authserv_id_of"]


class DNSTempError(Exception):
    """A DNS answer could not be had (timeout, SERVFAIL, budget spent): a C{temperror}."""


#: C{await lookup(name, rrtype)} with rrtype one of TXT, A, AAAA, MX, PTR:
#: TXT gives C{bytes} (strings of one record joined), A/AAAA address text,
#: MX C{(preference, host)}, PTR host names. NXDOMAIN and "no data" give
#: C{[]}; anything else raises L{DNSTempError}.
Answer = Union[bytes, str, Tuple[int, str]]
Lookup = Callable[[str, str], Awaitable[List[Answer]]]

#: What may appear in a header value we write: printable ASCII without the
#: characters that end a token, start a comment or quote.
_UNSAFE = re.compile(r'[^\x21-\x7e]|[;()"\\]')


def _safe(text: str, limit: int = 255) -> str:
    return _UNSAFE.sub("_", text[:limit]) or "_"


def _comment(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]|[()\\]", "_", text[:200])


@dataclass(frozen=True)
class SPFVerdict:
    """
    SPF (RFC 7208) for one identity.

    @ivar result: pass, fail, softfail, neutral, none, temperror or permerror.
    @ivar identity: C{"mailfrom"} or C{"helo"}.
    @ivar domain: the domain checked (the MAIL FROM domain, or the HELO name).
    @ivar sender: the mailbox checked (C{postmaster@helo} for HELO or C{<>}).
    @ivar reason: why, for logs and the header comment.
    @ivar explanation: for a C{fail}, the domain's own words (its C{exp=}
        record, macros expanded, printable ASCII), else C{""}.
    """

    result: str
    identity: str
    domain: str
    sender: str = ""
    reason: str = ""
    explanation: str = ""


@dataclass(frozen=True)
class DKIMVerdict:
    """
    One DKIM-Signature (RFC 6376) and what became of it.

    @ivar result: pass, fail, temperror or permerror; C{none} (and no
        other field) for a message without signatures.
    @ivar domain: the signing domain (C{d=}), C{""} if unreadable.
    @ivar selector: C{s=}.
    @ivar identity: C{i=} (defaults to C{@d}).
    @ivar algorithm: C{a=}.
    @ivar signature: the start of C{b=}, to tell signatures apart (RFC 6008).
    """

    result: str
    domain: str = ""
    selector: str = ""
    identity: str = ""
    algorithm: str = ""
    signature: str = ""
    reason: str = ""


@dataclass(frozen=True)
class DMARCVerdict:
    """
    DMARC (RFC 7489) for the C{From:} domain.

    @ivar result: pass, fail, none, temperror or permerror.
    @ivar from_domain: the RFC5322.From domain.
    @ivar policy: the policy that applies (C{p=}, or C{sp=} for a
        subdomain): none, quarantine or reject; C{""} without a record.
    @ivar disposition: what the policy asks for this message: C{none} on
        pass; for a fail C{policy}, unless C{pct=} sampled it down.
    @ivar spf_aligned: an SPF pass whose domain aligns with the From domain.
    @ivar dkim_aligned: a DKIM pass whose d= aligns.
    """

    result: str
    from_domain: str = ""
    policy: str = ""
    disposition: str = "none"
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@dataclass(frozen=True)
class ARCVerdict:
    """
    ARC (RFC 8617) chain validation: pass, fail or none.

    @ivar instances: the highest instance (C{i=}) found, 0 for none.
    @ivar oldest_pass: the oldest instance whose AMS still validates (0 if
        unknown), for a hook that trusts some sealers.
    @ivar sealers: the C{d=} of each ARC-Seal, newest first.
    """

    result: str
    instances: int = 0
    oldest_pass: int = 0
    sealers: Tuple[str, ...] = ()
    reason: str = ""


@dataclass
class AuthResults:
    """
    The authentication verdicts of one transaction: C{session.envelope.auth}.

    SPF is known from the first RCPT on; DKIM, ARC and DMARC once the body
    has been received, before the user's C{on_data} is called. A method not
    enabled stays C{None} (C{dkim} empty).
    """

    spf_helo: Optional[SPFVerdict] = None
    spf_mailfrom: Optional[SPFVerdict] = None
    dkim: List[DKIMVerdict] = field(default_factory=list)
    dmarc: Optional[DMARCVerdict] = None
    arc: Optional[ARCVerdict] = None
    _state: Any = field(default=None, repr=False, compare=False)

    @property
    def spf(self) -> Optional[SPFVerdict]:
        """The SPF verdict DMARC uses: MAIL FROM's (the HELO's for C{<>})."""
        return self.spf_mailfrom

    def header(self, authserv_id: str) -> bytes:
        """
        The C{Authentication-Results:} field (RFC 8601), folded, CRLF-ended.

        C{reason} values are written as header comments only after
        sanitising: they can quote attacker-controlled text.
        """
        from authres import all_features
        from authres.core import AuthenticationResult, AuthenticationResultProperty as Prop

        results: List[AuthenticationResult] = []
        for spf in (self.spf_mailfrom, self.spf_helo):
            if spf is not None:
                results.append(AuthenticationResult(
                    "spf", result=spf.result, result_comment=_comment(spf.reason) or None,
                    # smtp.helo is the name given; smtp.mailfrom the address (RFC 8601 2.7.2)
                    properties=[Prop("smtp", spf.identity, _safe(spf.domain if spf.identity == "helo"
                                                                 else spf.sender or spf.domain))]))
        for sig in self.dkim:
            props = []
            if sig.domain:
                props.append(Prop("header", "d", _safe(sig.domain)))
            if sig.selector:
                props.append(Prop("header", "s", _safe(sig.selector)))
            if sig.identity:
                props.append(Prop("header", "i", _safe(sig.identity)))
            if sig.algorithm:
                props.append(Prop("header", "a", _safe(sig.algorithm)))
            if sig.signature:
                props.append(Prop("header", "b", _safe(sig.signature[:8])))
            results.append(AuthenticationResult("dkim", result=sig.result,
                                                result_comment=_comment(sig.reason) or None, properties=props))
        if self.arc is not None:
            comment = self.arc.reason if self.arc.result != "pass" else f"i={self.arc.instances}"
            results.append(AuthenticationResult("arc", result=self.arc.result,
                                                result_comment=_comment(comment) or None))
        if self.dmarc is not None:
            d = self.dmarc
            comment = f"p={d.policy} dis={d.disposition}" if d.policy else d.reason
            props = [Prop("header", "from", _safe(d.from_domain))] if d.from_domain else []
            results.append(AuthenticationResult("dmarc", result=d.result, result_comment=_comment(comment) or None,
                                                properties=props))
        text = str(all_features().header(authserv_id=_safe(authserv_id), results=results))
        return (text.replace("; ", ";\r\n\t") + "\r\n").encode("ascii", "replace")


_AUTHSERV = re.compile(rb"^[ \t\r\n]*(?:\((?:[^()\\]|\\.)*\)[ \t\r\n]*)*([^ \t\r\n;()]+)")


def authserv_id_of(value: bytes) -> Optional[str]:
    """The authserv-id an C{Authentication-Results} value starts with (lower-cased), if any."""
    match = _AUTHSERV.match(value)
    return match.group(1).decode("ascii", "replace").lower() if match else None

