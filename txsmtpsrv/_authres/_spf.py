# -*- test-case-name: tests.test_spf -*-
"""
SPF (RFC 7208) C{check_host()}: records, mechanisms, macros and limits.

Pure logic over an injected asynchronous L{Lookup}: it awaits DNS answers
but imports nothing from Twisted, so it runs under C{Deferred.fromCoroutine}
in the server and over a dictionary in unit tests. Limits follow section
4.6.4: at most 10 terms that query DNS (include, a, mx, ptr, exists,
redirect), at most 10 MX or PTR names per term, at most 2 void lookups;
a whole record is parsed (and any syntax error is a C{permerror}) before
anything is evaluated. On C{fail}, the record's C{exp=} explanation is
fetched and expanded (section 6.2), for the text of a rejection.
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from ._results import DNSTempError, Lookup, SPFVerdict

__all__ = ["SPFError", "a_label", "check_host", "check_identity", "parse_record"]

IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
MAX_NAMES = 10  # MX hosts, PTR names


class SPFError(Exception):
    """Ends an evaluation with C{result} (permerror or temperror)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def _perm(reason: str) -> SPFError:
    return SPFError("permerror", reason)


# -- parsing ------------------------------------------------------------------

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_MACRO = re.compile(r"%(?:\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))", re.I)
_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]*")
_LITERAL_EXP = re.compile(r"[\x20-\x24\x26-\x7e]*")  # explain-string: spaces too
_CIDR = re.compile(r"(0|[1-9][0-9]{0,2})\Z")
_TOPLABEL = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]+\Z|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]\Z", re.A)


@dataclass(frozen=True)
class Term:
    """A directive (C{qualifier} set) or a modifier (C{qualifier} None)."""

    name: str
    qualifier: Optional[str]
    domain: Optional[str] = None  # macro-string, unexpanded
    network: Optional[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = None
    cidr4: int = 32
    cidr6: int = 128


def _check_macro_string(text: str, exp: bool = False) -> None:
    """Raise permerror unless C{text} is a valid macro-string (RFC 7208 7.1)."""
    pos = 0
    literal = _LITERAL_EXP if exp else _LITERAL
    while pos < len(text):
        pos = literal.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text):
            return
        match = _MACRO.match(text, pos)
        if match is None:
            raise _perm(f"bad macro in {text!r}")
        letter = (match.group(1) or "").lower()
        if letter:
            if letter not in "slodiphv" + ("crt" if exp else ""):
                raise _perm(f"bad macro letter in {text!r}")
            if match.group(2) and int(match.group(2)) == 0:
                raise _perm(f"zero macro transformer in {text!r}")
        pos = match.end()


def _check_domain_spec(spec: str) -> None:
    """A domain-spec: a macro-string ending in a top label or a macro."""
    if not spec:
        raise _perm("empty domain-spec")
    _check_macro_string(spec)
    if spec.endswith("}"):
        return  # domain-end = macro-expand
    labels = spec.rstrip(".").split(".")
    if len(labels) < 2 or not _TOPLABEL.match(labels[-1]) or labels[-1].isdigit():
        raise _perm(f"bad domain-spec {spec!r}")


def _cidr(text: Optional[str], limit: int) -> int:
    if text is None:
        return limit
    if not _CIDR.match(text) or int(text) > limit:
        raise _perm(f"bad CIDR length /{text}")
    return int(text)


# The CIDR lengths are found from the end, so a "/" macro delimiter (%{l/}) stays in the domain.
_DUAL = re.compile(r"(?P<domain>.*?)(?:/(?P<v4>[0-9]+))?(?://(?P<v6>[0-9]+))?\Z", re.S)


def _parse_term(text: str) -> Term:
    qualifier = "+"
    explicit = text[0] in _QUALIFIERS
    if explicit:
        qualifier, text = text[0], text[1:]
    match = _NAME.match(text)
    if match is None:
        raise _perm(f"bad term {text!r}")
    name, rest = match.group().lower(), text[match.end():]
    if rest.startswith("="):  # a modifier
        if explicit:
            raise _perm(f"a modifier takes no qualifier: {text!r}")
        if name in ("redirect", "exp"):
            _check_domain_spec(rest[1:])
        else:
            _check_macro_string(rest[1:])
        return Term(name, None, rest[1:])
    if name not in _MECHANISMS:
        raise _perm(f"unknown mechanism {name!r}")
    if name == "all":
        if rest:
            raise _perm("'all' takes no argument")
        return Term(name, qualifier)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise _perm(f"{name} needs a domain")
        _check_domain_spec(rest[1:])
        return Term(name, qualifier, rest[1:])
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _perm(f"{name} needs a network")
        address, _, length = rest[1:].partition("/")
        bits = 32 if name == "ip4" else 128
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise _perm(f"bad {name} address {address!r}") from None
        if ip.version != (4 if name == "ip4" else 6):
            raise _perm(f"bad {name} address {address!r}")
        prefix = _cidr(length if "/" in rest else None, bits)
        return Term(name, qualifier, network=ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    # a, mx, ptr: optional ":domain", a and mx an optional dual CIDR
    domain: Optional[str] = None
    if rest.startswith(":"):
        rest = rest[1:]
        if name == "ptr":
            _check_domain_spec(rest)
            return Term(name, qualifier, rest)
        dual = _DUAL.match(rest)
        assert dual is not None
        domain = dual.group("domain")
        _check_domain_spec(domain)
    elif name == "ptr":
        if rest:
            raise _perm(f"bad ptr term {text!r}")
        return Term(name, qualifier)
    else:
        dual = _DUAL.match(rest)
        if dual is None or dual.group("domain"):
            raise _perm(f"bad {name} term {text!r}")
    return Term(name, qualifier, domain, cidr4=_cidr(dual.group("v4"), 32), cidr6=_cidr(dual.group("v6"), 128))


def parse_record(record: str) -> List[Term]:
    """Parse a whole C{v=spf1} record; raises permerror (L{SPFError}) on any syntax error."""
    parts = record.split(" ")
    if parts[0].lower() != "v=spf1":
        raise _perm("not an SPF record")
    terms = [_parse_term(part) for part in parts[1:] if part]
    modifiers = [t.name for t in terms if t.qualifier is None]
    for name in ("redirect", "exp"):
        if modifiers.count(name) > 1:
            raise _perm(f"more than one {name}=")
    return terms


# -- macros ---------------------------------------------------------------------


class _Context:
    """The state of one C{check_host()} run and its nested includes."""

    def __init__(self, lookup: Lookup, ip: IP, sender: str, helo: str) -> None:
        self.lookup = lookup
        self.ip = ip
        local, _, domain = sender.rpartition("@")
        self.sender = f"{local or 'postmaster'}@{domain}"
        self.local = local or "postmaster"
        self.sender_domain = domain
        self.helo = helo
        self.receiver = "unknown"
        self.explanation = ""
        self.dns_terms = 0
        self.voids = 0
        self._validated: Dict[str, str] = {}

    async def query(self, name: str, rrtype: str, void_counts: bool = True) -> List[Any]:
        answers = await self.lookup(name, rrtype)
        if not answers and void_counts:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _perm("more than 2 void DNS lookups")
        return answers

    def count_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _perm("more than 10 DNS-querying terms")

    async def validated_name(self, target: str) -> str:
        """The C{p} macro: a PTR name of the client that resolves back to it, preferring C{target}."""
        if target not in self._validated:
            names = await _validated_names(self, target)
            exact = [n for n in names if n == target or n.endswith("." + target)]
            self._validated[target] = (exact or names or ["unknown"])[0]
        return self._validated[target]

    async def expand(self, spec: str, domain: str, exp: bool = False) -> str:
        out: List[str] = []
        pos = 0
        pattern = _LITERAL_EXP if exp else _LITERAL
        while pos < len(spec):
            literal = pattern.match(spec, pos).end()  # type: ignore[union-attr]
            out.append(spec[pos:literal])
            pos = literal
            if pos >= len(spec):
                break
            match = _MACRO.match(spec, pos)
            assert match is not None  # checked when parsed
            pos = match.end()
            if match.group(5):
                out.append("%")
            elif match.group(6):
                out.append(" ")
            elif match.group(7):
                out.append("%20")
            else:
                out.append(await self._macro(match, domain))
        return "".join(out)

    async def _macro(self, match: "re.Match[str]", domain: str) -> str:
        letter = match.group(1)
        key = letter.lower()
        value: str
        if key == "s":
            value = self.sender
        elif key == "l":
            value = self.local
        elif key == "o":
            value = self.sender_domain
        elif key == "d":
            value = domain
        elif key == "i":
            value = _dotted(self.ip)
        elif key == "v":
            value = "in-addr" if self.ip.version == 4 else "ip6"
        elif key == "h":
            value = self.helo
        elif key == "c":  # the following three only in explanations
            value = str(self.ip) if self.ip.version == 4 else self.ip.compressed
        elif key == "r":
            value = self.receiver
        elif key == "t":
            value = str(int(time.time()))
        else:  # p
            value = await self.validated_name(domain)
        delimiters = match.group(4) or "."
        parts = re.split("[" + re.escape(delimiters) + "]", value)
        if match.group(3):
            parts.reverse()
        if match.group(2):
            parts = parts[-int(match.group(2)):]
        value = ".".join(parts)
        if letter.isupper():
            value = urllib.parse.quote(value, safe="")
        return value


def _dotted(ip: IP) -> str:
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def _target(name: str) -> str:
    """An expanded domain-spec as a query name: no trailing dot, at most 253 octets."""
    name = name.rstrip(".")
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


async def _addresses(ctx: _Context, host: str, void_counts: bool) -> List[IP]:
    rrtype = "A" if ctx.ip.version == 4 else "AAAA"
    found: List[IP] = []
    for answer in await ctx.query(host, rrtype, void_counts):
        try:
            found.append(ipaddress.ip_address(str(answer)))
        except ValueError:
            continue
    return found


def _within(ip: IP, address: IP, term: Term) -> bool:
    if ip.version != address.version:
        return False
    prefix = term.cidr4 if ip.version == 4 else term.cidr6
    return ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False)


async def _validated_names(ctx: _Context, target: str) -> List[str]:
    """PTR names of the client whose A/AAAA records contain it (RFC 7208 5.5); errors mean none."""
    try:
        names = await ctx.query(ctx.ip.reverse_pointer, "PTR")
    except DNSTempError:
        return []
    ordered = sorted((str(n).rstrip(".").lower() for n in names[:MAX_NAMES]),
                     key=lambda n: not (n == target or n.endswith("." + target)))
    valid = []
    for name in ordered:
        try:
            if ctx.ip in await _addresses(ctx, name, void_counts=False):
                valid.append(name)
        except DNSTempError:
            continue
    return valid


# -- evaluation -------------------------------------------------------------------


async def _record(ctx: _Context, domain: str) -> Optional[List[Term]]:
    """The parsed SPF record of C{domain}, or None when it has none."""
    texts = await ctx.lookup(domain, "TXT")
    records = []
    for text in texts:
        raw = text if isinstance(text, bytes) else str(text).encode()
        if raw[:6].lower() == b"v=spf1" and (len(raw) == 6 or raw[6:7] == b" "):
            records.append(raw)
    if not records:
        return None
    if len(records) > 1:
        raise _perm(f"{domain} has more than one SPF record")
    try:
        return parse_record(records[0].decode("ascii"))
    except UnicodeDecodeError:
        raise _perm(f"{domain}'s SPF record is not ASCII") from None


_PRINTABLE = re.compile(r"[^\x20-\x7e]")


async def _explain(ctx: _Context, terms: List[Term], domain: str) -> str:
    """The C{exp=} text of a failing record (RFC 7208 6.2); any trouble gives C{""}."""
    exp = next((t for t in terms if t.name == "exp"), None)
    if exp is None or exp.domain is None:
        return ""
    try:
        texts = await ctx.lookup(_target(await ctx.expand(exp.domain, domain)), "TXT")
        if len(texts) != 1:
            return ""
        raw = texts[0]
        text = (raw if isinstance(raw, bytes) else str(raw).encode()).decode("ascii")
        _check_macro_string(text, exp=True)
        return _PRINTABLE.sub("?", await ctx.expand(text, domain, exp=True))[:300]
    except (SPFError, DNSTempError, UnicodeDecodeError):
        return ""


def _valid_domain(domain: str) -> bool:
    labels = domain.rstrip(".").split(".")
    return (len(labels) > 1 and all(0 < len(label) <= 63 for label in labels) and len(domain) <= 253
            and domain.isascii())


async def _check(ctx: _Context, domain: str) -> Tuple[str, str]:
    if not _valid_domain(domain):
        return "none", f"{domain!r} is not a domain name"
    terms = await _record(ctx, domain)
    if terms is None:
        return "none", f"no SPF record for {domain}"
    for term in terms:
        if term.qualifier is None:
            continue
        if await _matches(ctx, term, domain):
            result = _QUALIFIERS[term.qualifier]
            if result == "fail":
                ctx.explanation = await _explain(ctx, terms, domain)
            return result, f"{domain}: matched {term.name}"
    redirect = next((t for t in terms if t.name == "redirect"), None)
    if redirect is not None:
        ctx.count_term()
        assert redirect.domain is not None
        target = _target(await ctx.expand(redirect.domain, domain))
        result, reason = await _check(ctx, target)
        if result == "none":
            return "permerror", f"redirect to {target}, which has no SPF record"
        return result, reason
    return "neutral", f"{domain}: no mechanism matched"


async def _matches(ctx: _Context, term: Term, domain: str) -> bool:
    name = term.name
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        assert term.network is not None
        return ctx.ip.version == term.network.version and ctx.ip in term.network
    ctx.count_term()
    target = _target(await ctx.expand(term.domain, domain)) if term.domain else domain
    if name == "include":
        result, reason = await _check(ctx, target)
        if result == "pass":
            return True
        if result in ("temperror", "permerror"):
            raise SPFError(result, f"include:{target}: {reason}")
        if result == "none":
            raise _perm(f"include:{target} has no SPF record")
        return False
    if name == "a":
        return any(_within(ctx.ip, a, term) for a in await _addresses(ctx, target, True))
    if name == "mx":
        hosts = await ctx.query(target, "MX")
        if len(hosts) > MAX_NAMES:
            raise _perm(f"{target} has more than {MAX_NAMES} MX records")
        for _preference, host in sorted(hosts):
            host = str(host).rstrip(".")
            if host and any(_within(ctx.ip, a, term) for a in await _addresses(ctx, host, False)):
                return True
        return False
    if name == "ptr":
        return bool([n for n in await _validated_names(ctx, target)
                     if n == target.lower() or n.endswith("." + target.lower())])
    # exists: an A query whatever the client's address family
    return bool(await ctx.query(target, "A"))


def _client_ip(ip: str) -> IP:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def check_host(lookup: Lookup, ip: str, domain: str, sender: str, helo: str = "") -> Tuple[str, str]:
    """RFC 7208 C{check_host()}: C{(result, reason)}; see L{_check_host}."""
    result, reason, _explanation = await _check_host(lookup, ip, domain, sender, helo)
    return result, reason


async def _check_host(lookup: Lookup, ip: str, domain: str, sender: str, helo: str = "",
                      receiver: str = "unknown") -> Tuple[str, str, str]:
    """
    RFC 7208 C{check_host(ip, domain, sender)}.

    @param lookup: the DNS (see L{Lookup}).
    @param helo: the HELO name, for the C{%{h}} macro.
    @param receiver: our name, for the C{%{r}} macro of explanations.
    @return: C{(result, reason, explanation)}, result one of pass, fail,
        softfail, neutral, none, temperror, permerror; the explanation of a
        C{fail} (C{exp=}), else C{""}. Never raises for DNS or record trouble.
    """
    try:
        ctx = _Context(lookup, _client_ip(ip), sender, helo)
    except ValueError:
        return "none", f"{ip!r} is not an IP address", ""
    ctx.receiver = receiver
    try:
        result, reason = await _check(ctx, domain.rstrip(".").lower())
        return result, reason, ctx.explanation if result == "fail" else ""
    except SPFError as e:
        return e.result, e.reason, ""
    except DNSTempError as e:
        return "temperror", f"DNS: {e}", ""


async def check_identity(lookup: Lookup, ip: str, identity: str, mail_from: Optional[str],
                         helo: str, receiver: str = "unknown") -> SPFVerdict:
    """
    SPF for the C{"mailfrom"} or C{"helo"} identity (RFC 7208 2.3, 2.4): the
    HELO name is checked as C{postmaster@helo}; a null reverse-path as well.
    """
    helo_name = a_label(helo) or ""
    if identity == "helo" or not mail_from:
        sender = f"postmaster@{helo_name}"
        domain: Optional[str] = helo_name
    else:
        local, _, given = mail_from.rpartition("@")
        domain = a_label(given)
        sender = f"{local}@{domain}" if domain else mail_from
    if not domain:  # an address literal, a bare IP, no domain at all (RFC 7208 2.3)
        return SPFVerdict("none", identity, helo if identity == "helo" else "", sender, "no domain to check")
    result, reason, explanation = await _check_host(lookup, ip, domain, sender, helo_name, receiver)
    return SPFVerdict(result, identity, domain, sender, reason, explanation)


def a_label(name: str) -> Optional[str]:
    """
    C{name} as an ASCII domain name (IDNA for a UTF-8 one, lower case, no
    final dot), or None for an address literal, an IP address or anything
    that is not a multi-label domain name.
    """
    name = name.strip().rstrip(".")
    if not name or name.startswith("["):
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.lower()
    return name if _valid_domain(name) else None
