# -*- test-case-name: tests.test_authres_tap -*-
"""
C{twistd smtpsrv --verify spf,dkim,dmarc,arc --authserv-id ID --verify-reject dmarc --nameserver HOST[:PORT]}.

Everything the command line needs for sender authentication, kept here so
that C{_tap.py} only names it: L{OPT_PARAMETERS} joins its options,
L{opt_nameserver} is its repeatable C{--nameserver}, L{post_options}
checks the values, L{wrap} puts an L{AuthVerifier} in front of the hooks
and returns the resolver that reverse lookups share, and
L{worker_arguments} hands the same options to C{--workers} processes.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Tuple

from twisted.python import usage

from ._dns import make_resolver, parse_nameserver
from ._verify import METHODS, AuthVerifier

__all__ = ["OPT_PARAMETERS", "opt_nameserver", "post_options", "worker_arguments", "wrap"]

OPT_PARAMETERS: List[List[Any]] = [
    ["verify", None, None, "Check sender authentication and prepend an Authentication-Results header: "
                           "comma-separated methods among spf, dkim, dmarc, arc (or 'all'). Off by default."],
    ["authserv-id", None, None, "The authserv-id of the Authentication-Results header. "
                                "[default: the --name]"],
    ["verify-reject", None, None, "With --verify, refuse with 550 5.7.1: 'dmarc' (DMARC fails and the domain "
                                  "says p=reject), 'spf' (SPF fail, at RCPT), or 'dmarc,spf'. Off by default."],
]


def opt_nameserver(options: Any, value: str) -> None:
    try:
        parse_nameserver(value)
    except ValueError as e:
        raise usage.UsageError(f"--nameserver: {e}") from None
    options.setdefault("nameserver", []).append(value)


def post_options(options: Dict[str, Any]) -> None:
    """Turn C{--verify} into a tuple of methods; reject unknown ones."""
    options.setdefault("nameserver", [])
    reject = options.get("verify-reject")
    if isinstance(reject, str):
        options["verify-reject"] = tuple(sorted({r.strip().lower() for r in reject.split(",") if r.strip()}))
        if not options["verify-reject"] or set(options["verify-reject"]) - {"dmarc", "spf"}:
            raise usage.UsageError(f"--verify-reject: choose among dmarc, spf, not {reject!r}")
    text = options.get("verify")
    if not text:
        options["verify"] = ()
        for needs in ("authserv-id", "verify-reject"):
            if options.get(needs):
                raise usage.UsageError(f"--{needs} needs --verify")
        return
    if isinstance(text, tuple):
        return  # already parsed
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if methods == ["all"]:
        methods = list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise usage.UsageError(f"--verify: unknown method(s) {', '.join(unknown) or text!r}; "
                               f"choose from {', '.join(METHODS)}")
    options["verify"] = tuple(m for m in METHODS if m in methods)


def wrap(options: Dict[str, Any], hooks: Any, reactor: Any) -> Tuple[Any, Optional[Any]]:
    """
    C{(hooks, resolver)}: the hooks, behind an L{AuthVerifier} when
    C{--verify} was given; the resolver of C{--nameserver} (for the checks
    and for reverse lookups), or None for C{twisted.names}' default.
    """
    resolver = make_resolver(options["nameserver"], reactor) if options.get("nameserver") else None
    if not options.get("verify"):
        return hooks, resolver
    name = options.get("authserv-id") or options.get("name") or socket.gethostname()
    reject = options.get("verify-reject") or ()
    verifier = AuthVerifier(hooks, authserv_id=name, verify=options["verify"],
                            resolver=resolver or make_resolver((), reactor), reactor=reactor,
                            reject_dmarc="dmarc" in reject, reject_spf_fail="spf" in reject)
    return verifier, resolver


def worker_arguments(options: Dict[str, Any]) -> List[str]:
    """The same options for a worker process."""
    args = [f"--nameserver={n}" for n in options.get("nameserver", [])]
    if options.get("verify"):
        args.append("--verify=" + ",".join(options["verify"]))
    if options.get("authserv-id"):
        args.append(f"--authserv-id={options['authserv-id']}")
    if options.get("verify-reject"):
        args.append("--verify-reject=" + ",".join(options["verify-reject"]))
    return args
