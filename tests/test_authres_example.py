"""
examples/authenticated_gateway.py as a real process, asking a test DNS server
on 127.0.0.1: a DKIM-aligned message is stored with its verdicts, a forged
one from a p=reject domain is refused with 550 5.7.1.
"""

from __future__ import annotations

import smtplib
from typing import Any

from tests import _authzone as z
from tests._dnszone import ZoneProcess
from tests.test_examples import WAIT_TIMEOUT, maildir_messages, run_example  # noqa: F401  (the fixture)


def test_authenticated_gateway(run_example: Any, tmp_path: Any) -> None:  # noqa: F811
    maildir = str(tmp_path / "Maildir")
    with ZoneProcess(z.zone(), str(tmp_path)) as dns:
        example = run_example("authenticated_gateway.py", maildir, "mx.test", "tcp:0:interface=127.0.0.1",
                              f"127.0.0.1:{dns.port}")
        port = example.wait_for_port()
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=WAIT_TIMEOUT) as client:
            client.sendmail("alice@mail.test", ["bob@example.org"], z.sign(z.message()))
            try:
                client.sendmail("alice@mail.test", ["bob@example.org"], z.message(body=b"Pay me.\r\n"))
            except smtplib.SMTPDataError as e:
                refused = (e.smtp_code, e.smtp_error[:5])
            else:
                refused = (250, b"")
        example.wait_for(r"refused mail claiming to be from mail\.test")
    assert refused == (550, b"5.7.1")
    [stored] = maildir_messages(maildir)
    head = stored.split(b"\n\n")[0]
    assert b"\nAuthentication-Results: mx.test;\n\tspf=fail" in head  # 127.0.0.1 is not in mail.test's SPF
    assert b"dkim=pass header.d=mail.test" in head
    assert b"dmarc=pass (p=reject dis=none) header.from=mail.test" in head
