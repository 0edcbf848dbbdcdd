"""
The test world of the authentication tests: keys, a DNS zone with SPF,
DKIM and DMARC records, and messages signed (and ARC-sealed) by dkimpy.
"""

from __future__ import annotations

import base64
import functools
from typing import Any, Dict, List, Optional, Sequence

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests._dnszone import Zone

CLIENT_IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


@functools.lru_cache(maxsize=None)
def key(name: str) -> bytes:
    """A PKCS#1 PEM private key (1024 bits: quick to make), one per name for the whole test run."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())


@functools.lru_cache(maxsize=None)
def public_record(name: str) -> str:
    """The C{v=DKIM1} TXT record for L{key}(name)."""
    private = serialization.load_pem_private_key(key(name), password=None)
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@functools.lru_cache(maxsize=None)
def ed25519_key(name: str) -> tuple:
    """C{(private seed, public key)}, base64, of an Ed25519 key (RFC 8463), one per name."""
    import nacl.signing

    signing = nacl.signing.SigningKey.generate()
    return base64.b64encode(bytes(signing)), base64.b64encode(bytes(signing.verify_key)).decode()


def zone() -> Zone:
    """SPF, DKIM and DMARC records for the example domains the tests use."""
    return {
        # SPF
        "pass.test": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all"), ("A", "203.0.113.5")],
        "fail.test": [("TXT", "v=spf1 -all")],
        "softfail.test": [("TXT", "v=spf1 ~all")],
        "neutral.test": [("TXT", "v=spf1 ?all")],
        "nospf.test": [("A", "203.0.113.9")],
        "permerror.test": [("TXT", "v=spf1 ip4:300.1.1.1 -all")],
        "temperror.test": [("SERVFAIL", None)],
        "include.test": [("TXT", "v=spf1 include:pass.test -all")],
        "redirect.test": [("TXT", "v=spf1 redirect=pass.test")],
        "a.test": [("TXT", "v=spf1 a/24 -all"), ("A", "192.0.2.200")],
        "mx.test": [("TXT", "v=spf1 mx -all"), ("MX", (10, "mail.mx.test"))],
        "mail.mx.test": [("A", CLIENT_IP)],
        "macro.test": [("TXT", "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all")],
        "10.2.0.192.bob._spf.macro.test": [("A", "127.0.0.2")],
        "helo.test": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],
        "xn--bcher-kva.test": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],  # bücher.test
        "_dmarc.xn--bcher-kva.test": [("TXT", "v=DMARC1; p=quarantine")],
        "loop.test": [("TXT", "v=spf1 include:loop.test -all")],
        "explained.test": [("TXT", "v=spf1 include:fail.test -all exp=why.%{d}")],
        "why.explained.test": [("TXT", "%{i} is not one of %{d}'s mail servers (%{c}, %{r}); see %{l}")],
        "void.test": [("TXT", "v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test ~all")],
        "mail.test": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],
        # DKIM keys
        "sel._domainkey.mail.test": [("TXT", public_record("mail.test"))],
        "sel._domainkey.other.test": [("TXT", public_record("other.test"))],
        "ed._domainkey.mail.test": [("TXT", "v=DKIM1; k=ed25519; p=" + ed25519_key("mail.test")[1])],
        "sel._domainkey.sub.mail.test": [("TXT", public_record("sub.mail.test"))],
        "arc._domainkey.forwarder.test": [("TXT", public_record("forwarder.test"))],
        "arc._domainkey.second.test": [("TXT", public_record("second.test"))],
        "bad._domainkey.mail.test": [("TXT", "v=DKIM1; k=rsa; p=bm90IGEga2V5")],
        "revoked._domainkey.mail.test": [("TXT", "v=DKIM1; k=rsa; p=")],
        "temp._domainkey.mail.test": [("SERVFAIL", None)],
        # DMARC
        "_dmarc.mail.test": [("TXT", "v=DMARC1; p=reject; adkim=r; aspf=r")],
        "_dmarc.strict.test": [("TXT", "v=DMARC1; p=quarantine; adkim=s; aspf=s")],
        "sel._domainkey.strict.test": [("TXT", public_record("strict.test"))],
        "sel._domainkey.sub.strict.test": [("TXT", public_record("sub.strict.test"))],
        "strict.test": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],
        "_dmarc.temp.test": [("SERVFAIL", None)],
    }


def message(from_addr: str = "alice@mail.test", body: bytes = b"Hello there.\r\n",
            extra: Sequence[bytes] = ()) -> bytes:
    headers = [b"From: Alice <" + from_addr.encode() + b">", b"To: bob@example.org", b"Subject: test",
               b"Date: Tue, 25 Nov 2025 10:00:00 +0000", b"Message-ID: <1@mail.test>", *extra]
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


def sign(msg: bytes, domain: str = "mail.test", selector: str = "sel", key_name: Optional[str] = None,
         canonicalize: Any = (b"relaxed", b"simple"), length: bool = False) -> bytes:
    """C{msg} with a DKIM-Signature prepended (dkimpy signs)."""
    signature = dkim.sign(msg, selector.encode(), domain.encode(), key(key_name or domain),
                          canonicalize=canonicalize, include_headers=[b"from", b"to", b"subject", b"date"],
                          length=length)
    return signature + msg


def sign_ed25519(msg: bytes, domain: str = "mail.test") -> bytes:
    """C{msg} with an ed25519-sha256 DKIM-Signature (selector "ed") prepended."""
    signature = dkim.sign(msg, b"ed", domain.encode(), ed25519_key(domain)[0], signature_algorithm=b"ed25519-sha256",
                          include_headers=[b"from", b"to", b"subject", b"date"])
    return signature + msg


def seal(msg: bytes, domain: str, selector: str = "arc", srv_id: str = "forwarder.test",
         results: str = "spf=pass smtp.mailfrom=mail.test") -> bytes:
    """C{msg} with an ARC set added by C{domain} (dkimpy seals), after its own A-R header."""
    with_ar = f"Authentication-Results: {srv_id}; {results}\r\n".encode() + msg
    arc_set: List[bytes] = dkim.arc_sign(with_ar, selector.encode(), domain.encode(), key(domain), srv_id.encode(),
                                         include_headers=[b"from", b"to", b"subject", b"date"])
    return b"".join(arc_set) + with_ar


