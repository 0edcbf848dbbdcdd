# -*- test-case-name: tests.test_delivery_print -*-
"""
L{PrintDelivery}: the envelope and the decoded body written in one block to
a text stream, as UTF-8 bytes to a binary one, or to standard output by
default.
"""

from __future__ import annotations

import io

from txsmtpsrv._delivery import PrintDelivery

from tests._delivery import inline_file_work  # noqa: F401 (the autouse fixture)
from tests._delivery import feed, make_session, make_stream
from tests._support import result


# ---------------------------------------------------------------------------
# Print


def test_print_delivery_text_stream():
    """The envelope and the decoded body go to the given text stream in one block."""
    out = io.StringIO()
    stream = make_stream()
    d = PrintDelivery(out).on_data(make_session(rcpts=("a@x.test", "b@x.test")), stream)
    feed(stream, b"Subject: hi\r\n\r\nh\xc3\xa9llo\r\n")
    result(d)
    assert out.getvalue() == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "X-Session-Id: s3ss10n\n"
        "X-Peer: 192.0.2.1\n"
        "X-MailFrom: <bob@example.com>\n"
        "X-RcptTo: <a@x.test>, <b@x.test>\n"
        "Subject: hi\n\nhéllo\n"
        "------------ END MESSAGE ------------\n"
    )


def test_print_delivery_binary_stream_and_default(capsys):
    """A binary stream gets UTF-8 bytes; with no stream, standard output is used."""
    out = io.BytesIO()
    stream = make_stream()
    d = PrintDelivery(out).on_data(make_session(), stream)
    feed(stream, b"x\r\n")
    result(d)
    assert out.getvalue().endswith(b"x\n------------ END MESSAGE ------------\n")
    stream = make_stream()
    d = PrintDelivery().on_data(make_session(), stream)
    feed(stream, b"y\r\n")
    result(d)
    assert capsys.readouterr().out.endswith("y\n------------ END MESSAGE ------------\n")
