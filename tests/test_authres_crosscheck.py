"""
Cross-checks against implementations nobody here wrote, on the same zone and messages:

 - SPF: Mail::SPF's C{spfquery} (Debian spf-tools-perl), pointed at our test
   DNS server with Net::DNS's C{RES_NAMESERVERS}/C{RES_OPTIONS=port:N};
 - DKIM: OpenDKIM's C{opendkim-testmsg} (Debian opendkim-tools). It reads
   C{/etc/resolv.conf} (port 53) only, so it runs in its own user, mount
   and network namespace (C{unshare -rmn}): there a bind-mounted
   resolv.conf names 127.0.0.1, where the same zone is served on port 53.

Under CI (tests/run.sh installs the tools) a missing tool fails the test.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Tuple

import pytest
from twisted.internet.defer import Deferred

from tests import _authzone as z
from tests._dnszone import ZoneProcess
from tests._support import require, tool_path
from tests.test_dkim import keys_for, scan
from tests.test_spf import zone_lookup
from txsmtpsrv._authres._dkim import verify_dkim
from txsmtpsrv._authres._spf import check_identity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPF_CASES: List[Tuple[str, str]] = [
    (f"a@{d}", ip)
    for d in ["pass.test", "fail.test", "softfail.test", "neutral.test", "nospf.test", "permerror.test",
              "temperror.test", "include.test", "redirect.test", "a.test", "mx.test", "loop.test", "void.test",
              "nxdomain.test", "v6.test", "ptr.test", "two.test", "syntax.test", "redirect-none.test",
              "include-none.test", "many.test", "eleven.test", "explained.test"]
    for ip in (z.CLIENT_IP, z.OTHER_IP, "2001:db8::25")
] + [("bob-sales@macro.test", z.CLIENT_IP), ("carol@macro.test", z.CLIENT_IP)]


def spf_zone() -> Dict[str, Any]:
    zone = z.zone()
    zone.update({
        "v6.test": [("TXT", "v=spf1 ip6:2001:db8::/64 a:pass.test ~all")],
        "ptr.test": [("TXT", "v=spf1 ptr -all")],
        "10.2.0.192.in-addr.arpa": [("PTR", "host.ptr.test")],
        "host.ptr.test": [("A", z.CLIENT_IP)],
        "two.test": [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 +all")],
        # (An unknown macro letter, mx:%{q}.test, is a permerror for us wherever it stands, RFC 7208
        # 4.6; Mail::SPF expands macros lazily and only fails when it reaches one: not compared.)
        "syntax.test": [("TXT", "v=spf1 ip4:192.0.2.0/24 frobnicate:x.test -all")],
        "redirect-none.test": [("TXT", "v=spf1 redirect=nospf.test")],
        "include-none.test": [("TXT", "v=spf1 include:nospf.test ?all")],
        "many.test": [("TXT", "v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(10)) + " -all")],
        "eleven.test": [("TXT", "v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11)) + " -all")],
    })
    zone.update({f"h{i}.many.test": [("A", "203.0.113.1")] for i in range(11)})
    return zone


HELO_CASES = [(h, ip) for h in ["helo.test", "pass.test", "fail.test", "nospf.test", "softfail.test"]
              for ip in (z.CLIENT_IP, z.OTHER_IP)]


def spfquery_results(spfquery: str, scope: str, lines: List[str], port: int) -> List[str]:
    """One spfquery process over many queries (--file -), each answer read from its Received-SPF line."""
    env = dict(os.environ, RES_NAMESERVERS="127.0.0.1", RES_OPTIONS=f"port:{port} retry:1 retrans:2")
    done = subprocess.run([spfquery, "--scope", scope, "--file", "-"], input="".join(lines), env=env,
                          capture_output=True, text=True, timeout=120)
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("Received-SPF: ")]


def test_spf_same_as_spfquery() -> None:
    spfquery = tool_path("spfquery")
    zone = spf_zone()

    def ours(identity: str, ip: str, mail_from: Any, helo: str) -> str:
        results: List[Any] = []
        Deferred.fromCoroutine(check_identity(zone_lookup(zone), ip, identity, mail_from, helo)).addCallback(
            results.append)
        return str(results[0].result)

    mine = [ours("mailfrom", ip, sender, "client.test") for sender, ip in SPF_CASES]
    mine_helo = [ours("helo", ip, None, helo) for helo, ip in HELO_CASES]
    with tempfile.TemporaryDirectory() as tmp, ZoneProcess(zone, tmp) as dns:
        theirs = spfquery_results(spfquery, "mfrom", [f"{ip} {sender} client.test\n" for sender, ip in SPF_CASES],
                                  dns.port)
        theirs_helo = spfquery_results(spfquery, "helo", [f"{ip} {helo}\n" for helo, ip in HELO_CASES], dns.port)
    assert list(zip(SPF_CASES, mine)) == list(zip(SPF_CASES, theirs))
    assert list(zip(HELO_CASES, mine_helo)) == list(zip(HELO_CASES, theirs_helo))
    assert set(mine) == {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}


def test_spf_explanation_same_as_spfquery() -> None:
    """The exp= text of a fail, with the c, r, i, d and l macros, as Mail::SPF expands it."""
    spfquery = tool_path("spfquery")
    zone = spf_zone()
    with tempfile.TemporaryDirectory() as tmp, ZoneProcess(zone, tmp) as dns:
        env = dict(os.environ, RES_NAMESERVERS="127.0.0.1", RES_OPTIONS=f"port:{dns.port} retry:1 retrans:2")
        for ip in (z.CLIENT_IP, "2001:db8::25"):
            done = subprocess.run([spfquery, "--scope", "mfrom", "--hostname", "mx.test", "--id", "bob@explained.test",
                                   "--ip", ip, "--helo-id", "client.test"], env=env, capture_output=True,
                                  text=True, timeout=60)
            result, theirs = done.stdout.splitlines()[:2]
            verdicts: List[Any] = []
            Deferred.fromCoroutine(check_identity(zone_lookup(zone), ip, "mailfrom", "bob@explained.test",
                                                  "client.test", "mx.test")).addCallback(verdicts.append)
            assert (verdicts[0].result, verdicts[0].explanation) == (result, theirs)
            assert ip in theirs


# -- DKIM -------------------------------------------------------------------------------


def bodies() -> List[bytes]:
    """Bodies with the white space and empty lines canonicalization is about (seeded, repeatable)."""
    rng = random.Random(17)
    out = [b"", b"\r\n", b"one line\r\n", b"trailing blanks\r\n\r\n\r\n"]
    pieces = [b"word", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"x" * 300]
    for _ in range(10):
        out.append(b"".join(rng.choice(pieces) for _ in range(rng.randint(5, 40))) + b"\r\n")
    return out


def mutate(body: bytes, rng: random.Random) -> bytes:
    """White-space changes relaxed canonicalization ignores (and simple does not)."""
    choice = rng.randrange(3)
    if choice == 0:
        return body.replace(b"\r\n", b"  \r\n", 1) if body else b"\r\n"
    if choice == 1:
        return body.replace(b" ", b" \t ", 1) if b" " in body else body + b"\r\n"
    return body + b"\r\n\r\n"


def dkim_messages() -> Dict[str, bytes]:
    rng = random.Random(6376)
    messages: Dict[str, bytes] = {}
    canons = [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple"), (b"simple", b"relaxed")]
    for i, body in enumerate(bodies()):
        for c, canon in enumerate(canons):
            msg = z.message(body=body)
            signed = z.sign(msg, canonicalize=canon)
            messages[f"b{i}c{c}"] = signed
            sig_end = signed.index(b"From: ")
            mutated = signed[:sig_end] + msg.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + mutate(body, rng)
            messages[f"b{i}c{c}m"] = mutated
            if canon[0] == b"relaxed":
                messages[f"b{i}c{c}h"] = signed.replace(b"Subject: test", b"Subject:   test ")  # relaxed: same
    plain = z.message()
    messages.update({
        "header-changed": z.sign(plain).replace(b"Subject: test", b"Subject: tested"),
        "body-changed": z.sign(plain).replace(b"Hello", b"Jello"),
        "length": z.sign(plain, length=True) + b"appended\r\n",
        "no-key": z.sign(plain, selector="nokey", key_name="mail.test"),
        "revoked": z.sign(plain, selector="revoked", key_name="mail.test"),
        "bad-key": z.sign(plain, selector="bad", key_name="mail.test"),
        "wrong-key": z.sign(plain, key_name="other.test"),
        "servfail": z.sign(plain, selector="temp", key_name="mail.test"),
        "subdomain": z.sign(plain, domain="sub.mail.test"),
        "ed25519": z.sign_ed25519(plain),
        "ed25519-changed": z.sign_ed25519(plain).replace(b"Hello", b"Jello"),
    })
    return messages


def opendkim_results(messages: Dict[str, bytes], zone: Dict[str, Any]) -> Dict[str, str]:
    """opendkim-testmsg's verdict on each message: "ok" or its error text."""
    testmsg = tool_path("opendkim-testmsg", "/usr/sbin")
    unshare = require(shutil.which("unshare"), "unshare (util-linux) is missing", "unshare not available")
    ip = require(shutil.which("ip") or (os.path.exists("/usr/sbin/ip") and "/usr/sbin/ip") or None,
                 "ip (iproute2) is missing; tests/run.sh installs it", "ip (iproute2) not installed")
    import json

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "zone.json"), "w") as f:
            json.dump(zone, f)
        with open(os.path.join(tmp, "resolv.conf"), "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        for name, data in messages.items():
            with open(os.path.join(tmp, name + ".eml"), "wb") as f:
                f.write(data)
        script = f"""
set -e
{ip} link set lo up
mount --bind {tmp}/resolv.conf /etc/resolv.conf
cd {ROOT}
PYTHONPATH={ROOT} {sys.executable} -m tests._dnszone {tmp}/zone.json 127.0.0.1 53 > {tmp}/ready &
server=$!
trap 'kill $server' EXIT
for i in $(seq 100); do grep -q ready {tmp}/ready 2>/dev/null && break; sleep 0.1; done
for m in {tmp}/*.eml; do
  set +e
  out=$({testmsg} < "$m" 2>&1)
  rc=$?
  set -e
  echo "$(basename "$m" .eml) $rc $out" | tr -d '\\r' | head -1
done
"""
        done = subprocess.run([unshare, "-rmn", "bash", "-c", script], capture_output=True, text=True, timeout=300)
        if done.returncode != 0 and not done.stdout:
            raise AssertionError(f"could not run opendkim-testmsg in a namespace: {done.stderr}")
    results = {}
    for line in done.stdout.splitlines():
        name, rc, *text = line.split(" ", 2)
        results[name] = "ok" if rc == "0" else (text[0] if text else f"exit {rc}")
    return results


def classify_opendkim(text: str) -> str:
    if text == "ok":
        return "pass"
    if "Bad signature" in text or "body hash" in text.lower():
        return "fail"
    return "error"  # key retrieval failed, revoked key, unusable key, syntax


def test_dkim_same_as_opendkim() -> None:
    messages = dkim_messages()
    zone = z.zone()
    theirs = {name: classify_opendkim(text) for name, text in opendkim_results(messages, zone).items()}
    ours = {}
    for name, msg in messages.items():
        scanner = scan(msg)
        [verdict] = verify_dkim(scanner.parse_header, scanner.body_hashes, keys_for(scanner))
        ours[name] = {"temperror": "error", "permerror": "error"}.get(verdict.result, verdict.result)
    assert set(theirs) == set(messages)
    assert ours == theirs
    assert {"pass", "fail", "error"} <= set(ours.values())
