# -*- test-case-name: tests.test_dkim -*-
"""
DKIM (RFC 6376) and ARC (RFC 8617) verification with flat memory.

C{dkimpy} checks signatures but wants the whole message as one C{bytes}
value and hashes the body from it. To verify a 50 MiB message without
holding it, we split the work: L{MessageScanner} collects only the header
section (bounded) and streams the body through L{BodyHasher}s, one per
distinct body canonicalization, hash and C{l=} that the signatures ask for;
then dkimpy verifies each signature over the header section alone, with its
body-hash step replaced by a comparison with our digest (C{_Verifier}).
The canonicalization reproduces dkimpy's own (C{\\r?\\n} line ends, the
relaxed and simple rules, the empty-body cases) chunk by chunk, holding back
at most a CR and a collapsed run of white space; a property test compares
the two on random bodies and random chunkings.

Public keys are looked up beforehand (asynchronously, by the caller) and
handed in as a dictionary, so dkimpy's synchronous C{dnsfunc} never touches
the network. Pure: nothing here imports Twisted.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import ARC_HASH_ALGORITHMS, HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value

from ._results import ARCVerdict, DKIMVerdict, DNSTempError

__all__ = ["BodyHasher", "MessageScanner", "key_names", "verify_arc", "verify_dkim"]

#: (body canonicalization, a= value, l= or None)
HashKey = Tuple[bytes, bytes, Optional[int]]
#: A key record: the TXT text, None when there is none, or the DNS error.
KeyAnswer = Union[bytes, None, DNSTempError]

_ARC_NAMES = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_CRLFS = b"\r\n" * 32768
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEADER_END = re.compile(rb"(?:\A|\n)(\r?\n)")


class BodyHasher:
    """
    Canonicalize a body as it streams (RFC 6376 3.4.3/3.4.4, as dkimpy does)
    and feed it to hash functions, each cut at its own C{l=}.
    """

    def __init__(self, relaxed: bool) -> None:
        self._relaxed = relaxed
        self._carry = b""  # a trailing CR, and for relaxed a run of WSP before it
        self._held = 0  # CRLFs at the end not yet hashed: dropped if nothing follows
        self._any = False  # anything but empty lines hashed yet
        self._hashes: List[Tuple[Any, Optional[int], List[int]]] = []

    def add(self, hash_factory: Callable[[], Any], limit: Optional[int]) -> Any:
        """Hash the canonical body with a new C{hash_factory()} object, at most C{limit} bytes."""
        h = hash_factory()
        self._hashes.append((h, limit, [0]))
        return h

    def _emit(self, data: bytes) -> None:
        for h, limit, count in self._hashes:
            if limit is not None:
                room = limit - count[0]
                if room <= 0:
                    continue
                if len(data) > room:
                    data_part = data[:room]
                    count[0] += len(data_part)
                    h.update(data_part)
                    continue
                count[0] += len(data)
            h.update(data)

    def _emit_held(self) -> None:
        while self._held:
            n = min(self._held, 32768)
            self._emit(_CRLFS[:2 * n])
            self._held -= n

    def feed(self, chunk: bytes) -> None:
        """Hash the next bytes of the body (as received, any chunking)."""
        buf = self._carry + chunk if self._carry else chunk
        if self._relaxed:
            end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            cut = len(buf[:end].rstrip(b" \t"))
            # A WSP run before the end is one SP or nothing, whatever its length.
            self._carry = (b" " if cut < end else b"") + (b"\r" if end < len(buf) else b"")
        else:
            cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            self._carry = buf[cut:]
        self._segment(buf[:cut])

    def _segment(self, seg: bytes) -> None:
        if not seg:
            return
        # Plain bytes methods, not regular expressions: they run at memory speed on
        # ordinary text, where a regex would try a match at every space.
        if seg.count(b"\n") != seg.count(b"\r\n"):
            seg = _BARE_LF.sub(b"\r\n", seg)
        if self._relaxed:
            if b"\t" in seg:
                seg = seg.replace(b"\t", b" ")
            while b"  " in seg:  # each pass halves every run of blanks
                seg = seg.replace(b"  ", b" ")
            if b" \r\n" in seg:  # a blank run is one SP now: drop it before a line end
                seg = seg.replace(b" \r\n", b"\r\n")
        stripped = seg.rstrip(b"\r\n")
        tail = seg[len(stripped):]  # starts with CR: every LF follows one now
        if tail.endswith(b"\r"):  # a bare CR (the CR of a CRLF is never last here)
            pairs = 0
        else:
            bare = tail.rfind(b"\r\r")  # a bare CR ends the run of CRLFs
            pairs = (len(tail) - bare - 1) // 2 if bare >= 0 else len(tail) // 2
        body = seg[:len(seg) - 2 * pairs]
        if body:
            self._emit_held()
            self._emit(body)
            self._any = True
            self._held = pairs
        else:
            self._held += pairs

    def finish(self) -> None:
        """The body ended: hash what was held back and the final CRLF."""
        carry, self._carry = self._carry, b""
        self._segment(carry)
        self._held = 0
        if self._any or not self._relaxed:
            self._emit(b"\r\n")


def _tags(value: bytes) -> Optional[Dict[bytes, bytes]]:
    try:
        return parse_tag_value(re.sub(rb"\r?\n", b"", value))  # type: ignore[no-any-return]
    except InvalidTagValueList:
        return None


def parse_headers(section: bytes) -> List[Tuple[bytes, bytes]]:
    """C{(name, raw value)} fields of a header section; continuation lines kept in the value."""
    fields: List[Tuple[bytes, bytes]] = []
    for line in re.split(rb"(?<=\n)", section):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        else:
            name, colon, value = line.partition(b":")
            fields.append((name.strip() if colon else b"", value))
    return fields


def _hash_key(tags: Dict[bytes, bytes], default_c: bytes) -> Optional[HashKey]:
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", default_c))
        limit = int(tags[b"l"]) if b"l" in tags else None
    except (InvalidCanonicalizationPolicyError, ValueError):
        return None
    a = tags.get(b"a", b"")
    if a not in HASH_ALGORITHMS and a not in ARC_HASH_ALGORITHMS:
        return None
    return policy.body_algorithm.name, a, limit


class MessageScanner:
    """
    Split a streamed message into its header section (kept, up to
    C{max_header} bytes) and its body (handed to C{body_sink} and hashed
    for the signatures found in the header section).

    @ivar header: the header section as received, once known;
        C{None} if it was larger than C{max_header} (then everything is body).
    @ivar separator: the empty line that ended the header section.
    """

    def __init__(self, body_sink: Callable[[bytes], None], max_header: int = 1 << 20,
                 max_hashes: int = 8, arc: bool = True) -> None:
        self._sink = body_sink
        self._max_header = max_header
        self._max_hashes = max_hashes
        self._arc = arc
        self._buffer = b""
        self._searched = 0
        self.header_done = False
        self.header: Optional[bytes] = None
        self.separator = b""
        self.fields: List[Tuple[bytes, bytes]] = []
        self._hashers: Dict[bytes, BodyHasher] = {}
        self._digests: Dict[HashKey, Any] = {}
        self.body_hashes: Dict[HashKey, bytes] = {}

    def feed(self, chunk: bytes) -> None:
        if self.header_done:
            self._body(chunk)
            return
        self._buffer += chunk
        end = _HEADER_END.search(self._buffer, max(0, self._searched - 3))
        if end is None or end.start(1) > self._max_header:
            self._searched = len(self._buffer)
            if len(self._buffer) > self._max_header:
                self.header_done = True
                rest, self._buffer = self._buffer, b""
                self._sink(rest)
            return
        self.header_done = True
        buffer, self._buffer = self._buffer, b""
        self.header = buffer[:end.start(1)]
        self.separator = end.group(1)
        self.fields = parse_headers(self.header)
        self._plan()
        self._body(buffer[end.end():])

    def _plan(self) -> None:
        """Start a hash for each body canonicalization/algorithm/length a signature names."""
        wanted: Set[HashKey] = set()
        for name, value in self.fields:
            lower = name.lower()
            if lower == b"dkim-signature" or (self._arc and lower == b"arc-message-signature"):
                tags = _tags(value)
                key = _hash_key(tags, b"simple/simple" if lower == b"dkim-signature" else b"relaxed/relaxed") \
                    if tags is not None else None
                if key is not None and len(wanted) < self._max_hashes:
                    wanted.add(key)
        for key in sorted(wanted, key=repr):
            canon, a, limit = key
            hasher = self._hashers.setdefault(canon, BodyHasher(canon == b"relaxed"))
            self._digests[key] = hasher.add(HASH_ALGORITHMS.get(a) or ARC_HASH_ALGORITHMS[a], limit)

    def _body(self, data: bytes) -> None:
        if data:
            for hasher in self._hashers.values():
                hasher.feed(data)
            self._sink(data)

    def finish(self) -> None:
        """The message ended."""
        if not self.header_done:  # a message of header fields only
            self.header_done = True
            buffer, self._buffer = self._buffer, b""
            if len(buffer) <= self._max_header:
                self.header = buffer
                self.fields = parse_headers(self.parse_header)
                self._plan()
            else:
                self._sink(buffer)
        for hasher in self._hashers.values():
            hasher.finish()
        self.body_hashes = {key: h.digest() for key, h in self._digests.items()}

    @property
    def parse_header(self) -> bytes:
        """The header section, its last line ended (for parsing)."""
        header = self.header or b""
        return header if header.endswith(b"\n") or not header else header + b"\r\n"

    def signature_fields(self, arc: bool) -> List[Dict[bytes, bytes]]:
        """Tags of the DKIM-Signature fields (and ARC-Seal/AMS if C{arc}) that parse."""
        names = {b"dkim-signature"} | ({b"arc-seal", b"arc-message-signature"} if arc else set())
        found = []
        for name, value in self.fields:
            if name.lower() in names:
                tags = _tags(value)
                if tags is not None:
                    found.append(tags)
        return found


def key_names(tag_lists: List[Dict[bytes, bytes]]) -> List[str]:
    """The C{selector._domainkey.domain} names to look up, in order, without duplicates."""
    names: List[str] = []
    for tags in tag_lists:
        s, d = tags.get(b"s"), tags.get(b"d")
        if s and d:
            try:
                name = (s + b"._domainkey." + d).decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                continue
            if name not in names:
                names.append(name)
    return names


class _BodyHashMismatch(dkim.ValidationError):  # type: ignore[misc]
    pass


class _Mixin:
    """
    Replaces dkimpy's body hashing by our streamed digests. This overrides
    dkimpy's C{DomainSigner.verify_sig_process} (dkimpy 1.1; setup.py keeps
    below 2): the header checks and the RSA/Ed25519 verification stay dkimpy's.
    """

    body_hashes: Dict[HashKey, bytes] = {}

    def verify_sig_process(self, sig: Dict[bytes, bytes], include_headers: Any, sig_header: Any,
                           dnsfunc: Any) -> Any:
        if b"bh" in sig:
            key = _hash_key(sig, b"simple/simple")
            if key is None or key not in self.body_hashes:
                raise dkim.ValidationError("body not hashed (bad c=, a= or l=, or too many variants)")
            try:
                expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except ValueError as e:
                raise dkim.MessageFormatError(str(e)) from None
            if expected != self.body_hashes[key]:
                raise _BodyHashMismatch("body hash mismatch")
            sig = {k: v for k, v in sig.items() if k != b"bh"}
        return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)  # type: ignore[misc]


class _DKIM(_Mixin, dkim.DKIM):  # type: ignore[misc]
    pass


class _ARC(_Mixin, dkim.ARC):  # type: ignore[misc]
    pass


def _dnsfunc(keys: Dict[str, KeyAnswer]) -> Callable[..., Optional[bytes]]:
    def lookup(name: bytes, timeout: float = 5) -> Optional[bytes]:
        answer = keys.get(name.decode("ascii", "replace").lower().rstrip("."))
        if isinstance(answer, DNSTempError):
            raise dkim.DnsTimeoutError(str(answer))
        return answer

    return lookup


def _text(value: Optional[bytes]) -> str:
    return value.decode("ascii", "replace") if value else ""


def verify_dkim(header: bytes, body_hashes: Dict[HashKey, bytes], keys: Dict[str, KeyAnswer],
                max_signatures: int = 10, minkey: int = 1024) -> List[DKIMVerdict]:
    """
    Verify every DKIM-Signature (up to C{max_signatures}) of a message.

    @param header: the header section.
    @param body_hashes: the digests from L{MessageScanner}.
    @param keys: key records by C{selector._domainkey.domain}.
    """
    fields = [value for name, value in parse_headers(header) if name.lower() == b"dkim-signature"]
    if not fields:
        return []
    try:
        verifier = _DKIM(header + b"\r\n", minkey=minkey)
    except Exception as e:  # DKIMException, or dkimpy's parser tripping (a first line that is a continuation)
        return [DKIMVerdict("permerror", reason=f"unreadable header section: {e}") for _ in fields[:max_signatures]]
    verifier.body_hashes = body_hashes
    verdicts = []
    for index, value in enumerate(fields[:max_signatures]):
        tags = _tags(value) or {}
        d, s = tags.get(b"d"), tags.get(b"s")
        ident = dict(domain=_text(d), selector=_text(s), identity=_text(tags.get(b"i")),
                     algorithm=_text(tags.get(b"a")), signature=re.sub(r"\s+", "", _text(tags.get(b"b")))[:16])
        verdicts.append(_one_signature(verifier, index, tags, keys, ident))
    return verdicts


def _one_signature(verifier: _DKIM, index: int, tags: Dict[bytes, bytes], keys: Dict[str, KeyAnswer],
                   ident: Dict[str, str]) -> DKIMVerdict:
    if not tags:
        return DKIMVerdict("permerror", reason="unparseable DKIM-Signature", **ident)
    if tags.get(b"a") == b"rsa-sha1":  # RFC 8301 3.1: verifiers MUST NOT let these pass
        return DKIMVerdict("permerror", reason="rsa-sha1 signatures are not accepted (RFC 8301)", **ident)
    if b"h" in tags and b"from" not in [h.strip().lower() for h in re.split(rb"\s*:\s*", tags[b"h"])]:
        return DKIMVerdict("permerror", reason="From field not signed", **ident)  # RFC 6376 6.1.1
    names = key_names([tags])
    answer = keys.get(names[0]) if names else None
    if isinstance(answer, DNSTempError):
        return DKIMVerdict("temperror", reason=f"key lookup: {answer}", **ident)
    if names and not answer:
        try:  # a signature that fails its syntax checks says so before the missing key
            dkim.validate_signature_fields(dict(tags))
        except dkim.DKIMException as e:
            return DKIMVerdict("permerror", reason=str(e), **ident)
        return DKIMVerdict("permerror", reason=f"no key at {names[0]}", **ident)
    if answer:
        try:
            dkim.evaluate_pk(names[0], answer)
        except dkim.DKIMException as e:
            return DKIMVerdict("permerror", reason=f"bad key: {e}", **ident)
    try:
        ok = verifier.verify(index, dnsfunc=_dnsfunc(keys))
    except _BodyHashMismatch:
        return DKIMVerdict("fail", reason="body hash did not verify", **ident)
    except dkim.DKIMException as e:
        return DKIMVerdict("permerror", reason=str(e), **ident)
    except Exception as e:  # dkimpy on hostile input: never let it take the message down
        return DKIMVerdict("permerror", reason=f"{type(e).__name__}: {e}", **ident)
    return DKIMVerdict("pass" if ok else "fail", reason="" if ok else "signature did not verify", **ident)


def verify_arc(header: bytes, body_hashes: Dict[HashKey, bytes], keys: Dict[str, KeyAnswer],
               minkey: int = 1024) -> ARCVerdict:
    """Validate the ARC chain (RFC 8617 5.2): pass, fail or none."""
    fields = [(name.lower(), value) for name, value in parse_headers(header) if name.lower() in _ARC_NAMES]
    if not fields:
        return ARCVerdict("none")
    numbers = [int(m.group(1)) for _, value in fields for m in [re.search(rb"(?:^|;)\s*i\s*=\s*(\d{1,9})", value)]
                 if m]
    if len(numbers) < len(fields) or max(numbers) > 50:  # RFC 8617 4.2.1: i=1..50 on every field
        return ARCVerdict("fail", reason="ARC field without a valid instance (i=1..50)")
    try:
        arc = _ARC(header + b"\r\n", minkey=minkey)
        arc.body_hashes = body_hashes
        cv, results, reason = arc.verify(dnsfunc=_dnsfunc(keys))
    except Exception as e:  # DKIMException, or dkimpy tripping over hostile input
        return ARCVerdict("fail", reason=f"{type(e).__name__}: {e}")
    instances = max((r.get("instance", 0) for r in results), default=0)
    sealers = tuple(_text(r.get("as-domain")) for r in results)
    oldest = min((r["instance"] for r in results if r.get("ams-valid")), default=0)
    signed = [t for t in (_tags(v) for n, v in fields if n != b"arc-authentication-results") if t]
    temp = [name for name in key_names(signed) if isinstance(keys.get(name), DNSTempError)]
    if cv == dkim.CV_Pass:
        return ARCVerdict("pass", instances, oldest, sealers)
    if cv == dkim.CV_None:
        return ARCVerdict("none", reason=str(reason))
    if temp:
        reason = f"key lookup failed temporarily for {', '.join(temp)}"
    return ARCVerdict("fail", instances, oldest, sealers, reason=str(reason))
