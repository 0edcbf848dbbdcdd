"""
Tests for C{twistd smtpsrv --verify/--authserv-id/--nameserver}: option
parsing, the service's wiring, and a real twistd process checking a message
against a DNS server on 127.0.0.1.
"""

from __future__ import annotations

import smtplib

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from tests import _authzone as z
from tests._dnszone import ZoneProcess
from tests.test_twistd import maildir_messages, twistd  # noqa: F401  (the fixture)
from txsmtpsrv import AuthVerifier
from txsmtpsrv._cli import worker_arguments as _worker_options
from txsmtpsrv._tap import Options, makeService


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--maildir", "/tmp/authres17-never-used", *args])
    return options


def test_off_by_default():
    options = parse()
    assert options["verify"] == () and options["nameserver"] == []
    service = makeService(options, reactor=Clock())
    assert not isinstance(service.server.hooks, AuthVerifier)
    assert service.server.resolver is None


def test_verify_and_nameservers():
    options = parse("--verify", "spf, DKIM,arc", "--authserv-id", "auth.example", "--nameserver", "127.0.0.1:5353",
                    "--nameserver", "[::1]")
    assert options["verify"] == ("spf", "dkim", "arc")
    service = makeService(options, reactor=Clock())
    verifier = service.server.hooks
    assert isinstance(verifier, AuthVerifier)
    assert (verifier.verify, verifier.authserv_id) == (("spf", "dkim", "arc"), "auth.example")
    # The same resolver serves the checks and the reverse lookups.
    assert service.server.resolver is verifier._resolver
    assert service.server.resolver.servers == [("127.0.0.1", 5353), ("::1", 53)]
    assert verifier.hooks.on_data is not None  # the Maildir delivery behind it
    assert _worker_options(options)[-4:] == ["--nameserver=127.0.0.1:5353", "--nameserver=[::1]",
                                             "--verify=spf,dkim,arc", "--authserv-id=auth.example"]


def test_all_and_default_authserv_id():
    options = parse("--verify", "all", "--name", "mx.example")
    assert options["verify"] == ("spf", "dkim", "dmarc", "arc")
    verifier = makeService(options, reactor=Clock()).server.hooks
    assert verifier.authserv_id == "mx.example"
    assert (verifier.reject_dmarc, verifier.reject_spf_fail) == (False, False)


def test_verify_reject():
    options = parse("--verify", "all", "--verify-reject", "dmarc, SPF")
    assert options["verify-reject"] == ("dmarc", "spf")
    verifier = makeService(options, reactor=Clock()).server.hooks
    assert (verifier.reject_dmarc, verifier.reject_spf_fail) == (True, True)
    assert _worker_options(options)[-1] == "--verify-reject=dmarc,spf"
    verifier = makeService(parse("--verify", "all", "--verify-reject", "dmarc"), reactor=Clock()).server.hooks
    assert (verifier.reject_dmarc, verifier.reject_spf_fail) == (True, False)


def test_nameserver_alone_is_for_reverse_lookups():
    service = makeService(parse("--nameserver", "10.0.0.53"), reactor=Clock())
    assert not isinstance(service.server.hooks, AuthVerifier)
    assert service.server.resolver.servers == [("10.0.0.53", 53)]


@pytest.mark.parametrize("args", [["--verify", "spf,senderid"], ["--verify", ","], ["--authserv-id", "x"],
                                  ["--nameserver", "host:port"], ["--nameserver", ""],
                                  ["--verify-reject", "dmarc"], ["--verify", "all", "--verify-reject", "arc"],
                                  ["--verify", "all", "--verify-reject", ","]])
def test_bad_options(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_twistd_verifies_with_the_given_nameserver(twistd, tmp_path):  # noqa: F811
    """
    A real twistd asks our DNS server (keys, SPF, DMARC) and stores the verdicts with the message.
    (Reverse lookups through the same resolver are shown in test_authres: loopback clients skip them.)
    """
    zone = z.zone()
    maildir = tmp_path / "Maildir"
    with ZoneProcess(zone, str(tmp_path)) as dns:
        server = twistd("--maildir", str(maildir), "--name", "mx.test", "--verify", "spf,dkim,dmarc,arc",
                        "--nameserver", f"127.0.0.1:{dns.port}")
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.mail.test", timeout=30) as client:
            client.sendmail("alice@mail.test", ["bob@example.org"], z.sign(z.message()))
        assert server.terminate() in (0, -15)
    [stored] = maildir_messages(maildir)
    head = stored.split(b"\n\n")[0]
    assert b"Authentication-Results: mx.test;\n\tspf=fail" in head  # 127.0.0.1 is not in mail.test's SPF
    assert b"dkim=pass header.d=mail.test" in head
    assert b"dmarc=pass (p=reject dis=none) header.from=mail.test" in head  # aligned DKIM
