# -*- test-case-name: tests.test_delivery_trace -*-
"""
The trace headers deliveries prepend (L{txsmtpsrv._delivery.received_header},
L{return_path_header}): Received with one or several recipients, without
reverse DNS, over IPv6, with the transmission type, and client-chosen
names cleaned, bounded and kept ASCII.
"""

from __future__ import annotations

import email.utils

from txsmtpsrv._delivery import received_header, return_path_header
from txsmtpsrv._session import Address, Session

from tests._delivery import inline_file_work  # noqa: F401 (the autouse fixture)
from tests._delivery import WHEN, make_session


# ---------------------------------------------------------------------------
# Trace headers


def test_received_header_one_recipient():
    """One recipient: the header names it in a for clause, folded as RFC 5321 4.4 shows."""
    header = received_header(make_session(hostname="mail.client.example"), "mx.test", when=WHEN)
    lines = header.split(b"\r\n")
    assert header.endswith(b"\r\n")
    assert lines[0] == b"Received: from client.example (mail.client.example [192.0.2.1])"
    assert lines[1] == b"\tby mx.test (txsmtpsrv) with ESMTP id s3ss10n"
    assert lines[2].startswith(b"\tfor <alice@example.org>; ")
    date = lines[2].split(b"; ", 1)[1].decode()
    assert email.utils.parsedate_to_datetime(date).timestamp() == int(WHEN)


def test_received_header_several_recipients_omits_for():
    """Several recipients: no for clause, so Bcc recipients stay hidden."""
    header = received_header(make_session(rcpts=("a@x.test", "b@x.test")), "mx.test", when=WHEN)
    assert b"for" not in header
    assert b"a@x.test" not in header
    assert b"\tby mx.test (txsmtpsrv) with ESMTP id s3ss10n;\r\n\t" in header


def test_received_header_without_reverse_dns_and_ipv6():
    """No reverse DNS gives 'unknown'; an IPv6 peer gets an IPv6: address literal."""
    s = make_session(ip="2001:db8::1")  # client_hostname defaults to "[ip]"
    assert received_header(s, "mx.test").startswith(
        b"Received: from client.example (unknown [IPv6:2001:db8::1])\r\n")
    mapped = make_session(ip="::ffff:192.0.2.7")
    assert b"(unknown [192.0.2.7])" in received_header(mapped, "mx.test")


def test_received_header_cleans_client_names():
    """A hostile HELO name cannot break out of its token or add header lines."""
    s = make_session(helo="evil (x)\tY;z", hostname="a b(c)")
    first = received_header(s, "mx.test").split(b"\r\n")[0]
    assert first == b"Received: from evil__x__Y_z (a_b_c_ [192.0.2.1])"


def test_received_header_transmission_type():
    """The with clause is the session's transmission type (RFC 3848)."""
    s = make_session()
    s.secure = True
    s.user = "alice"
    assert b" with ESMTPSA id " in received_header(s, "mx.test")


def test_return_path_header():
    """The reverse-path becomes Return-Path; the null sender gives <>."""
    assert return_path_header(make_session()) == b"Return-Path: <bob@example.com>\r\n"
    assert return_path_header(make_session(sender="")) == b"Return-Path: <>\r\n"


def test_received_header_bounds_and_ascii_client_names():
    """Client-chosen names reach the Received header as short printable ASCII, whatever was sent."""
    from txsmtpsrv._delivery import received_header
    from txsmtpsrv._session import Address, Session

    session = Session("abc", "192.0.2.1", 25, "192.0.2.10", 4000)
    session.host_name_appears_as = "h\u0085x\u2028y\u00e9" + "a" * 4000
    session.client_hostname = "ptr\r\nInjected: yes"
    session.opening_command = "EHLO"
    session.envelope.rcpt_to.append(Address("r@example.test"))
    header = received_header(session, "mx.test", when=0)
    assert header.isascii()
    assert all(len(line) < 998 for line in header.split(b"\r\n"))
    assert b"\r\nInjected" not in header
