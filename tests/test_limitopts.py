"""
The abuse limits on the twistd command line: flags with the option names,
the daemon's defaults (greeting delay only beyond loopback), --auth file:
read once into memory, SIGHUP re-reading it, and --workers passing it all on.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.cred.credentials import UsernamePassword
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from txsmtpsrv import FileCredentialsChecker, ServerOptions
from txsmtpsrv._limitopts import LIMIT_FLAGS, beyond_loopback
from txsmtpsrv._cli import Options, server_kwargs, worker_arguments
from txsmtpsrv._tap import SMTPService, makeService

from tests.test_twistd import CLEAN_EXITS, twistd  # noqa: F401  (the fixture)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default ./Maildir is created at parse time


def test_every_limit_has_a_flag_of_the_same_name():
    fields = {f for f in ServerOptions.__dataclass_fields__}
    for flag, field, _, _, _ in LIMIT_FLAGS:
        assert field in fields and flag == field.replace("_", "-")
    for field in ("max_clients_per_ip", "max_connect_rate", "ipv6_prefix", "greeting_delay", "max_junk_commands",
                  "max_auth_failures_per_ip", "max_auth_failures_per_user", "auth_failure_window",
                  "auth_failure_delay", "auth_failure_max_delay"):
        assert field in {f for _, f, _, _, _ in LIMIT_FLAGS}


def test_twistd_defaults_on_loopback(tmp_path):
    kwargs = server_kwargs(parse("--maildir", str(tmp_path)))  # default: tcp:2525 on 127.0.0.1
    assert kwargs["max_clients_per_ip"] == 20 and kwargs["max_connect_rate"] == 120
    assert kwargs["greeting_delay"] == 0.0
    assert kwargs["max_junk_commands"] == 100 and kwargs["ipv6_prefix"] == 64
    assert (kwargs["max_auth_failures_per_ip"], kwargs["max_auth_failures_per_user"]) == (10, 0)
    assert (kwargs["auth_failure_window"], kwargs["auth_failure_delay"], kwargs["auth_failure_max_delay"]) \
        == (300.0, 1.0, 30.0)
    ServerOptions(**kwargs)  # valid together


def test_twistd_greeting_delay_beyond_loopback(tmp_path):
    kwargs = server_kwargs(parse("--maildir", str(tmp_path), "-l", "tcp:25"))
    assert kwargs["greeting_delay"] == 0.1
    kwargs = server_kwargs(parse("--maildir", str(tmp_path), "-l", "tcp:25", "--greeting-delay", "0"))
    assert kwargs["greeting_delay"] == 0.0


def test_flags_given(tmp_path):
    kwargs = server_kwargs(parse("--maildir", str(tmp_path), "--max-clients-per-ip", "3", "--max-connect-rate=0",
                                  "--ipv6-prefix", "56", "--greeting-delay", "0.5", "--max-junk-commands", "7",
                                  "--max-auth-failures-per-ip", "4", "--max-auth-failures-per-user", "9",
                                  "--auth-failure-window", "60", "--auth-failure-delay", "0.25",
                                  "--auth-failure-max-delay", "4"))
    assert {k: kwargs[k] for k in ("max_clients_per_ip", "max_connect_rate", "ipv6_prefix", "greeting_delay",
                                   "max_junk_commands", "max_auth_failures_per_ip", "max_auth_failures_per_user",
                                   "auth_failure_window", "auth_failure_delay", "auth_failure_max_delay")} == {
        "max_clients_per_ip": 3, "max_connect_rate": 0, "ipv6_prefix": 56, "greeting_delay": 0.5,
        "max_junk_commands": 7, "max_auth_failures_per_ip": 4, "max_auth_failures_per_user": 9,
        "auth_failure_window": 60.0, "auth_failure_delay": 0.25, "auth_failure_max_delay": 4.0}


@pytest.mark.parametrize("argv", [
    ["--max-clients-per-ip", "-1"], ["--max-connect-rate", "many"], ["--ipv6-prefix", "129"],
    ["--greeting-delay", "-0.1"], ["--greeting-delay", "7200"], ["--auth-failure-window", "0"],
    ["--max-junk-commands", "1.5"],
])
def test_bad_values(argv, tmp_path):
    with pytest.raises(usage.UsageError):
        parse("--maildir", str(tmp_path), *argv)


@pytest.mark.parametrize("descriptions, adopted, beyond", [
    (["tcp:2525:interface=127.0.0.1"], False, False),
    (["tcp6:25:interface=\\:\\:1"], False, False),
    (["tcp:25"], False, True),
    (["tcp:25:interface=0.0.0.0"], False, True),
    (["tcp:25:interface=192.0.2.1"], False, True),
    (["unix:/run/lmtp.sock:mode=660"], False, False),
    (["smtps:tcp:465:interface=127.0.0.1"], False, False),
    (["smtps:tcp:465"], False, True),
    (["smtpproxy:trusted=10.0.0.0/8:tcp:25:interface=10.0.0.5"], False, True),
    (["smtpproxy:trusted=127.0.0.1/32:tcp:25:interface=127.0.0.1"], False, False),
    (["tcp:2525:interface=127.0.0.1", "tcp:25"], False, True),
    (["systemd:domain=INET:index=0"], False, True),
    ([], True, True),
])
def test_beyond_loopback(descriptions, adopted, beyond):
    assert beyond_loopback(descriptions, adopted) is beyond


def test_workers_get_the_computed_values(tmp_path):
    options = parse("--maildir", str(tmp_path), "-l", "tcp:25", "--max-clients-per-ip", "5")
    args = worker_arguments(options)
    assert "--max-clients-per-ip=5" in args and "--greeting-delay=0.1" in args
    assert "--max-connect-rate=120" in args
    worker = Options()
    worker.parseOptions(["--worker", "--adopt=3:INET"] + args)
    assert server_kwargs(worker)["greeting_delay"] == 0.1 and server_kwargs(worker)["max_clients_per_ip"] == 5


def test_connection_limit_exceptions_flag(tmp_path):
    """--connection-limit-exceptions: CIDRs to the server (none by default) and to the workers."""
    assert "connection_limit_exceptions" not in server_kwargs(parse("--maildir", str(tmp_path)))
    options = parse("--maildir", str(tmp_path), "-l", "tcp:25", "--workers", "2",
                    "--connection-limit-exceptions", "127.0.0.1/32, 10.1.2.0/24,2001:db8::/64")
    kwargs = server_kwargs(options)
    assert kwargs["connection_limit_exceptions"] == ("127.0.0.1/32", "10.1.2.0/24", "2001:db8::/64")
    assert [str(n) for n in ServerOptions(**kwargs).connection_limit_exceptions] == \
        ["127.0.0.1/32", "10.1.2.0/24", "2001:db8::/64"]
    args = worker_arguments(options)
    assert "--connection-limit-exceptions=127.0.0.1/32,10.1.2.0/24,2001:db8::/64" in args
    worker = Options()
    worker.parseOptions(["--worker", "--adopt=3:INET"] + args)
    assert server_kwargs(worker)["connection_limit_exceptions"] == kwargs["connection_limit_exceptions"]


EXAMPLE = " (e.g. 10.0.0.0/8 or 2001:db8::/32)"


@pytest.mark.parametrize("value, message", [
    ("10.0.0.300/8", "'10.0.0.300/8' is not a network" + EXAMPLE),
    ("127.0.0.1,health-check", "'health-check' is not a network" + EXAMPLE),
    ("10.0.0.0/33", "'10.0.0.0/33' is not a network" + EXAMPLE),
    (" , ", "' , ' names no network"),
    ("10.1.2.3/16", "'10.1.2.3/16' has host bits set: write 10.1.0.0/16 for the network, "
                    "or 10.1.2.3/32 for the one address"),
])
def test_connection_limit_exceptions_bad_network(tmp_path, value, message):
    """A bad CIDR is one usage error naming the flag and the network."""
    with pytest.raises(usage.UsageError) as e:
        parse("--maildir", str(tmp_path), "--connection-limit-exceptions", value)
    assert str(e.value) == f"--connection-limit-exceptions: {message}"


@pytest.mark.parametrize("field", ["connection_limit_exceptions", "xclient_trusted", "ignored_hosts"])
@pytest.mark.parametrize("value, error", [
    # Host bits beyond the prefix silently widened the list (10.1.2.3/8 to all of 10.0.0.0/8).
    ("10.1.2.3/8", "'10.1.2.3/8' has host bits set: write 10.0.0.0/8 for the network, or 10.1.2.3/32"),
    (["2001:db8::1/32"], "'2001:db8::1/32' has host bits set: write 2001:db8::/32 for the network, "
                         "or 2001:db8::1/128"),
    # Bytes were read as a sequence of numbers: 0.0.0.49/32, 0.0.0.48/32 ...
    (b"10.0.0.0/8", "networks must be text, not bytes"),
    ([49], "'49' is not a network"),
    (5, "not networks: 5"),
])
def test_bad_networks_are_refused(field, value, error):
    """The network lists of ServerOptions refuse what would silently trust or exempt other addresses."""
    with pytest.raises(ValueError) as e:
        ServerOptions(**{field: value})
    assert str(e.value).startswith(f"{field}: {error}")


@pytest.mark.parametrize("field", ["connection_limit_exceptions", "xclient_trusted", "ignored_hosts"])
def test_a_network_object_is_one_network(field):
    """
    One ipaddress network (not in a list) is that network: it used to be
    iterated into one /32 per address (16 million for a /8, hanging start-up).
    """
    import ipaddress

    assert getattr(ServerOptions(**{field: ipaddress.ip_network("10.0.0.0/24")}), field) == \
        (ipaddress.ip_network("10.0.0.0/24"),)
    mixed = ServerOptions(**{field: ["192.0.2.1", ipaddress.ip_network("2001:db8::/32"), " 10.0.0.0/8 "]})
    assert [str(n) for n in getattr(mixed, field)] == ["192.0.2.1/32", "2001:db8::/32", "10.0.0.0/8"]


@pytest.mark.parametrize("field", ["connection_limit_exceptions", "xclient_trusted", "ignored_hosts"])
def test_ipv4_mapped_networks_are_ipv4(field):
    """
    ::ffff:192.0.2.0/120 is 192.0.2.0/24: client addresses are unmapped
    before they are looked up, so the mapped spelling never matched anyone.
    """
    import ipaddress

    value = ServerOptions(**{field: ["::ffff:192.0.2.0/120", ipaddress.ip_network("::ffff:10.0.0.1/128"), "::/0"]})
    assert [str(n) for n in getattr(value, field)] == ["192.0.2.0/24", "10.0.0.1/32", "::/0"]


def test_twistd_exempts_the_named_probe(twistd, tmp_path):  # noqa: F811  (the fixture)
    """
    The real daemon, daemon defaults plus --max-connect-rate 3: a probe from
    127.0.0.2 (exempt) connects 6 times, all greeted; 127.0.0.3 gets 421 on
    its 4th connection.
    """
    import smtplib
    import socket

    server = twistd("--maildir", str(tmp_path / "Maildir"), "--max-connect-rate", "3",
                    "--connection-limit-exceptions", "127.0.0.2/32")

    def greeting(source: str) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0)) as s:
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
            s.sendall(b"QUIT\r\n")
            return data[:3]

    assert [greeting("127.0.0.2") for _ in range(6)] == [b"220"] * 6
    assert [greeting("127.0.0.3") for _ in range(4)] == [b"220"] * 3 + [b"421"]
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10, source_address=("127.0.0.2", 0)) as c:
        assert c.noop()[0] == 250
    assert server.terminate() in CLEAN_EXITS


# -- --auth file: ----------------------------------------------------------------------------------


def test_auth_file_is_read_into_memory(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    options = parse("--maildir", str(tmp_path), "--auth", f"file:{users}")
    [checker] = options.credentialCheckers()
    assert isinstance(checker, FileCredentialsChecker) and len(checker.table) == 1
    d = checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
    assert d.result == b"alice"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"a:b\nu:$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA\n", "line 2: unsupported hash scheme argon2id"),
])
def test_auth_file_errors_are_usage_errors(tmp_path, content, message):
    users = tmp_path / "users"
    if content is not None:
        users.write_bytes(content)
    with pytest.raises(usage.UsageError) as e:
        parse("--maildir", str(tmp_path), "--auth", f"file:{users}")
    assert str(e.value).startswith(f"--auth file:{users}: ") and message in str(e.value)


def test_sighup_rereads_auth_file(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    options = parse("--maildir", str(tmp_path), "--auth", f"file:{users}", "--no-reverse-lookup")
    reactor = MemoryReactorClock()
    reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)  # the signal handler's hop to the reactor
    service = makeService(options, reactor=reactor)
    assert isinstance(service, SMTPService)
    [checker] = service.credentialCheckers
    reloaded: list = []
    checker.reload = lambda: reloaded.append(True)  # type: ignore[method-assign]
    service.server.reload_tls = lambda: None  # type: ignore[method-assign]
    service._hangup(1, None)
    assert reloaded == [True]


# -- the operator's log: per-address refusals once a minute ------------------------------------------


def test_per_address_refusals_logged_once_a_minute():
    """
    A refused flood from one address writes one line a minute (saying how many were held
    back); another address and another reason get their own line; observers see every one.
    """
    from twisted.logger import capturedLogs

    from txsmtpsrv.testing import make_server

    server, clock = make_server()
    seen: list = []
    server.observe("refused", lambda reason, address, session: seen.append((reason, address)))
    with capturedLogs() as events:
        for _ in range(50):
            server._notify("refused", "max_clients_per_ip", "192.0.2.7", None)
        server._notify("refused", "max_clients_per_ip", "192.0.2.8", None)
        server._notify("refused", "max_connect_rate", "192.0.2.7", None)
        server._notify("refused", "max_clients_per_ip", "2001:db8::1", None)
        server._notify("refused", "max_clients_per_ip", "2001:db8::2", None)  # same /64
        clock.advance(60)
        server._notify("refused", "max_clients_per_ip", "192.0.2.7", None)
        server._notify("refused", "max_clients", "192.0.2.7", None)  # not a per-address limit: each logged
        server._notify("refused", "max_clients", "192.0.2.7", None)
    lines = [e["log_format"].format(**e) for e in events if "refused connection" in e.get("log_format", "")]
    assert lines == [
        "refused connection from 192.0.2.7: max_clients_per_ip",
        "refused connection from 192.0.2.8: max_clients_per_ip",
        "refused connection from 192.0.2.7: max_connect_rate",
        "refused connection from 2001:db8::1: max_clients_per_ip",
        "refused connection from 192.0.2.7: max_clients_per_ip (49 more in the last minute)",
        "refused connection from 192.0.2.7: max_clients",
        "refused connection from 192.0.2.7: max_clients",
    ]
    assert len(seen) == 57
    assert len(server.session_log._once) <= 4


@pytest.mark.parametrize("kwargs", [
    {"max_clients_per_ip": -1}, {"max_clients_per_ip": 1.5}, {"max_connect_rate": True},
    {"ipv6_prefix": 129}, {"ipv6_prefix": -1}, {"ipv6_prefix": "64"},
    {"max_junk_commands": -1}, {"greeting_delay": -0.1}, {"greeting_delay": "0.1"},
    {"greeting_delay": 60}, {"greeting_delay": 5, "socket_timeout": 5},
    {"max_auth_failures_per_ip": -1}, {"max_auth_failures_per_user": 0.5},
    {"auth_failure_window": 0}, {"auth_failure_delay": -1}, {"auth_failure_max_delay": 7200},
    {"connection_limit_exceptions": "10.0.0.300/8"}, {"connection_limit_exceptions": ["::1/129"]},
])
def test_invalid_limit_options(kwargs):
    with pytest.raises(ValueError):
        ServerOptions(name="mx.test", **kwargs)


def test_library_defaults():
    o = ServerOptions(name="mx.test")
    assert (o.max_clients_per_ip, o.max_connect_rate, o.ipv6_prefix, o.greeting_delay, o.max_junk_commands) \
        == (0, 0, 64, 0.0, 100)
    assert (o.max_auth_failures_per_ip, o.max_auth_failures_per_user, o.auth_failure_window,
            o.auth_failure_delay, o.auth_failure_max_delay) == (0, 0, 300.0, 0.0, 30.0)
    assert o.connection_limit_exceptions == ()


def test_relative_auth_file_is_made_absolute(tmp_path, monkeypatch):
    """
    --auth file:users is read again on SIGHUP and by every worker, after twistd's
    --rundir chdir: it names the file in the directory it was given in.
    """
    (tmp_path / "users").write_text("alice:secret\n")
    options = parse("--maildir", str(tmp_path), "--auth", "file:users", "--workers", "2")
    [checker] = options.credentialCheckers()
    assert options["auth"] == [f"file:{tmp_path / 'users'}"]
    assert f"--auth=file:{tmp_path / 'users'}" in worker_arguments(options)
    elsewhere = tmp_path / "rundir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "users").write_text("alice:secret\nbob:other\n")
    table = checker.table
    checker._pooled.call = lambda f, *args: defer.maybeDeferred(f, *args)  # the pool's work, inline
    checker.reload()
    assert checker.table is not table and len(checker.table) == 2


def test_two_auth_files_are_refused(tmp_path):
    """
    The portal would ask only the last checker for passwords (the first file's users
    getting 535): a second --auth of the same kind is a start-up error instead.
    """
    for name in ("a", "b"):
        (tmp_path / name).write_text(f"{name}:secret\n")
    with pytest.raises(usage.UsageError) as e:
        parse("--maildir", str(tmp_path), "--auth", f"file:{tmp_path / 'a'}", "--auth", f"file:{tmp_path / 'b'}")
    assert str(e.value).startswith(f"--auth file:{tmp_path / 'a'} and --auth file:{tmp_path / 'b'} check the same")
