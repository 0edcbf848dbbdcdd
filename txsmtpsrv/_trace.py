# -*- test-case-name: tests.test_delivery_trace -*-
"""
The trace headers a final delivery adds (RFC 5321 4.4): C{Return-Path:} and
C{Received:}, built from what the session learned, with every client-chosen
name cleaned so it cannot break or inject header lines.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import time
from typing import Optional, Sequence

from txsmtpsrv._session import Address, Session

__all__ = ["received_header", "return_path_header", "sender_of", "trace_headers"]



#: Characters a client-supplied name may not carry into a header: controls,
#: white space, the comment / date delimiters of the Received syntax, and
#: anything outside printable ASCII (C1 controls, Unicode line breaks).
_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\;]")
#: Longest client-supplied name kept (a header line must stay under 998 octets).
_MAX_NAME = 255


def _clean(text: str) -> str:
    """Make a client-chosen name safe to put in a header token: printable ASCII, bounded."""
    return _UNSAFE.sub("_", text[:_MAX_NAME]) or "_"


def _tcp_info(session: Session) -> str:
    """C{client_hostname [address-literal]}, or C{unknown} for non-IP peers."""
    address = getattr(session, "remote_address", None) or ""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        literal = ""
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        literal = f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"
    hostname = getattr(session, "client_hostname", None) or ""
    # The protocol fills client_hostname with "[ip]" when reverse DNS found nothing.
    if not hostname or hostname.startswith("["):
        hostname = "unknown"
    hostname = _clean(hostname)
    return f"{hostname} {literal}" if literal else hostname


def received_header(
    session: Session,
    hostname: str,
    recipients: Optional[Sequence[Address]] = None,
    when: Optional[float] = None,
) -> bytes:
    """
    The C{Received:} trace header this server adds (RFC 5321 4.4), e.g.::

        Received: from helo.example (mail.example [192.0.2.1])
        \tby mx.example (txsmtpsrv) with ESMTPS id 3fa9c2
        \tfor <alice@example.org>; Tue, 25 Nov 2025 10:00:00 +0000

    The C{for} clause names the recipient only when there is exactly one, so
    a message to several people does not disclose the Bcc recipients to each.

    @param hostname: this server's name, for the C{by} clause.
    @param recipients: defaults to C{session.envelope.rcpt_to}.
    @param when: POSIX time of receipt; defaults to now.
    @return: the header, folded, ending in CRLF.
    """
    if recipients is None:
        recipients = session.envelope.rcpt_to
    helo = _clean(session.host_name_appears_as) if session.host_name_appears_as else "unknown"
    date = email.utils.formatdate(time.time() if when is None else when, localtime=True)
    lines = [
        f"Received: from {helo} ({_tcp_info(session)})",
        f"\tby {_clean(hostname)} (txsmtpsrv) with {session.transmission_type} id {_clean(session.id)}",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{_clean(recipients[0].address)}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def return_path_header(session: Session) -> bytes:
    """
    The C{Return-Path:} header a final delivery adds (RFC 5321 4.4): the
    reverse-path, C{<>} for bounces.
    """
    sender = session.envelope.mail_from
    address = _clean(sender.address) if sender is not None and sender.address else ""
    return f"Return-Path: <{address}>\r\n".encode("utf-8", "replace")


def trace_headers(session: Session, hostname: str, when: float) -> bytes:
    """C{Return-Path} then C{Received}, CRLF-terminated, as both file deliveries prepend them."""
    return return_path_header(session) + received_header(session, hostname, when=when)


def sender_of(session: Session) -> str:
    """The reverse-path as text, C{""} for the null sender."""
    mail_from = session.envelope.mail_from
    return mail_from.address if mail_from is not None else ""
