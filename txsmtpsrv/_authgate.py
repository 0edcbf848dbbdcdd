# -*- test-case-name: tests.test_auth_order -*-
"""
What a client may do before it authenticates, when the server requires
authentication (an C{on_auth} hook without C{auth_optional}). Pure: the
protocol asks, then answers.

RFC 4954 section 6: C{530 5.7.0} "SHOULD be returned by any command other
than AUTH, EHLO, HELO, NOOP, RSET, or QUIT when server policy requires
authentication". We also let through the commands needed to get there:
C{LHLO} (the LMTP greeting), C{STARTTLS} (RFC 4954 section 4: AUTH is
often offered only inside TLS) and the trusted-proxy commands C{XCLIENT} /
C{XFORWARD} (their own trust check answers untrusted peers with 550).
C{BDAT} is refused by its handler, which must read the chunk first.

The unauthenticated command limit counts as Node's smtp-server counts
C{maxAllowedUnauthenticatedCommands}: every recognised command except
C{AUTH} counts, including the allowed ones (EHLO, NOOP, ...), and the
command that reaches the limit is answered C{421} instead of being run.
Unlike smtp-server 3.x, which counts SASL response lines too (they reach
its command counter), the lines of an AUTH exchange never count here: a
client may mistype a password and retry without being thrown out by this
limit (C{max_auth_failures} bounds that).
"""

from __future__ import annotations

from typing import Optional, Tuple

__all__ = ["ALLOWED_BEFORE_AUTH", "CLOSE", "REFUSE", "unauthenticated_command"]

ALLOWED_BEFORE_AUTH = frozenset(
    {"AUTH", "EHLO", "HELO", "LHLO", "NOOP", "RSET", "QUIT", "STARTTLS", "XCLIENT", "XFORWARD", "BDAT"})

#: Verdicts of L{unauthenticated_command}.
CLOSE = "close"  # answer 421 4.7.0 and close
REFUSE = "refuse"  # answer 530 5.7.0


def unauthenticated_command(command: str, count: int, limit: int) -> Tuple[int, Optional[str]]:
    """
    Judge one recognised C{command} (upper case) from a client that has not
    authenticated while authentication is required.

    @param count: commands counted so far on this connection.
    @param limit: C{max_allowed_unauthenticated_commands} (0: no limit).
    @return: the new count, and C{None} (run the command), L{REFUSE} or
        L{CLOSE}.
    """
    if command != "AUTH":
        count += 1
        if limit and count >= limit:
            return count, CLOSE
    return count, (None if command in ALLOWED_BEFORE_AUTH else REFUSE)
