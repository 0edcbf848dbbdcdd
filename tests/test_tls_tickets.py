# -*- test-case-name: tests.test_tls_tickets -*-
"""
TLS session resumption: stateless session tickets with rotated keys that
several processes share.

In memory: Python's C{ssl} module (the system OpenSSL, a client nobody here
wrote) against server connections from L{TLSContextHolder}, with a fake
clock for key rotation and expiry. Over loopback: C{openssl s_client
-sess_out/-sess_in} (TLS 1.3 and 1.2) against L{SMTPServer}'s STARTTLS,
and against C{twistd smtpsrv --workers 2}, where a ticket one process issued
must be accepted by the other.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest
from OpenSSL import SSL
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from tests._certs import unverified_client_context
from tests._support import tool_path
from tests._tls import Recorder, _TLSTestCase, mx_config
from tests.test_twistd import CLEAN_EXITS, TIMEOUT, twistd  # noqa: F401  (the fixture)
from txsmtpsrv import _tlsnative, _tlstickets
from txsmtpsrv._tls import TLSConfig, TLSConfigError, TLSContextHolder, build_server_options, tls_info

SECRET = b"0123456789abcdef0123456789abcdef"


def client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    return unverified_client_context(version=version)


def handshake(holder: Any, client: ssl.SSLContext, session: Optional[ssl.SSLSession] = None,
              server_name: Optional[str] = None) -> Tuple[ssl.SSLSession, bool, SSL.Connection]:
    """
    One handshake in memory: Python's ssl client, a server connection from
    C{holder}. Returns the client's session (with the tickets the server
    sent), whether the client resumed, and the server connection.
    """
    server = holder.serverConnectionForTLS(None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname=server_name, session=session)
    for _ in range(20):
        finished = True
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            finished = False
        sent = outgoing.read()
        if sent:
            server.bio_write(sent)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            answer = server.bio_read(65536)
        except SSL.WantReadError:
            answer = b""
        incoming.write(answer)
        if finished and not sent and not answer:
            break
    assert finished, "handshake did not finish"
    server.send(b"!")  # application data after the tickets: reading it makes the client take them
    incoming.write(server.bio_read(65536))
    assert tls.read(1) == b"!"
    assert tls.session is not None
    return tls.session, tls.session_reused, server


class _Clock:
    def __init__(self) -> None:
        self.now = 960_000.0  # the start of a 60 s period

    def __call__(self) -> float:
        return self.now


def holder_with_clock(clock: _Clock, **kw: Any) -> TLSContextHolder:
    kw.setdefault("ticket_lifetime", 60.0)
    holder = TLSContextHolder(mx_config(**kw))
    tickets = holder._current.tickets
    assert tickets is not None
    tickets._clock = clock
    return holder


VERSIONS = [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]


class NativeTests(unittest.SynchronousTestCase):
    def test_functions_found(self) -> None:
        """The OpenSSL ticket functions are found in the OpenSSL pyOpenSSL uses (the PyPI wheel's)."""
        native = _tlsnative.load()
        self.assertIsNone(_tlsnative.error())
        self.assertIsNotNone(native)
        self.assertTrue(_tlstickets.supported())

    def test_symbol_table_checks(self) -> None:
        """The ELF reader refuses what is not ELF and finds a known function in the loaded OpenSSL's file."""
        path, _ = _tlsnative._containing_object(_tlsnative._anchor_address())
        with self.assertRaisesRegex(LookupError, "not a 64-bit little-endian ELF"):
            _tlsnative._symbol_table(__file__, {"SSL_CTX_new"})
        found = _tlsnative._symbol_table(path, {"SSL_CTX_new", "no_such_function_here"})
        self.assertEqual(set(found), {"SSL_CTX_new"})


class ResumptionTests(unittest.SynchronousTestCase):
    """Python's ssl client resumes with the tickets the server issued."""

    def test_resumes(self) -> None:
        """TLS 1.3 and 1.2: the second handshake resumes; tls_info says so; a third with the renewed ticket too."""
        holder = TLSContextHolder(mx_config())
        self.assertTrue(holder.session_tickets)
        for version in VERSIONS:
            client = client_context(version)
            session, resumed, server = handshake(holder, client)
            self.assertFalse(resumed)
            self.assertFalse(tls_info(_Handle(server)).resumed)
            self.assertGreater(session.ticket_lifetime_hint, 0)
            session, resumed, server = handshake(holder, client, session)
            self.assertTrue(resumed, version)
            self.assertTrue(tls_info(_Handle(server)).resumed)
            _, resumed, _ = handshake(holder, client, session)
            self.assertTrue(resumed, version)

    def test_shared_secret(self) -> None:
        """Two holders with one secret (two processes) accept each other's tickets; another secret does not."""
        one = TLSContextHolder(mx_config(ticket_secret=SECRET))
        two = TLSContextHolder(mx_config(ticket_secret=SECRET))
        other = TLSContextHolder(mx_config(ticket_secret=b"x" * 32))
        random_one, random_two = TLSContextHolder(mx_config()), TLSContextHolder(mx_config())
        for version in VERSIONS:
            client = client_context(version)
            session, _, _ = handshake(one, client)
            self.assertTrue(handshake(two, client, session)[1])
            self.assertFalse(handshake(other, client, session)[1])
            session, _, _ = handshake(random_one, client)
            self.assertFalse(handshake(random_two, client, session)[1])

    def test_secret_file(self, ) -> None:
        """ticket_secret may name a file; the same bytes given directly make the same keys."""
        directory = tempfile.mkdtemp(prefix="txsmtpsrv-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = Path(directory) / "secret"
        path.write_bytes(SECRET)
        from_file = TLSContextHolder(mx_config(ticket_secret=str(path)))
        direct = TLSContextHolder(mx_config(ticket_secret=SECRET))
        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, _, _ = handshake(from_file, client)
        self.assertTrue(handshake(direct, client, session)[1])

    def test_rotation_and_expiry(self) -> None:
        """A ticket resumes in its key's period and the next (with a new ticket); two periods later it is refused."""
        for version in VERSIONS:
            clock = _Clock()
            holder = holder_with_clock(clock)
            client = client_context(version)
            first, _, _ = handshake(holder, client)
            clock.now += 59
            self.assertTrue(handshake(holder, client, first)[1])
            clock.now += 60  # the next period: the previous key still decrypts
            renewed, resumed, _ = handshake(holder, client, first)
            self.assertTrue(resumed, version)
            clock.now += 60  # first's key is two periods old now
            self.assertFalse(handshake(holder, client, first)[1], version)
            # the ticket issued one period ago (under the then-current key) still works
            self.assertTrue(handshake(holder, client, renewed)[1], version)

    def test_lifetime_is_session_timeout(self) -> None:
        """Clients are told to keep a ticket one key lifetime."""
        holder = TLSContextHolder(mx_config(ticket_lifetime=120))
        session, _, _ = handshake(holder, client_context(ssl.TLSVersion.TLSv1_3))
        self.assertEqual(session.ticket_lifetime_hint, 120)
        self.assertEqual(holder.getContext().get_timeout(), 120)

    def test_reload_keeps_keys(self) -> None:
        """A reload (new certificates) keeps the random ticket keys: earlier tickets still resume."""
        holder = TLSContextHolder(mx_config())
        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, _, _ = handshake(holder, client)
        with capturedLogs():
            holder.reload()
        self.assertTrue(handshake(holder, client, session)[1])

    def test_sni_context(self) -> None:
        """A client whose SNI selects another certificate resumes too (the session belongs to the first context)."""
        from tests._tls import material

        m = material()
        holder = TLSContextHolder(mx_config(sni={"other.test": (m.mx.key_pem, m.mx.cert_pem)}))
        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, _, _ = handshake(holder, client, server_name="other.test")
        self.assertTrue(handshake(holder, client, session, server_name="other.test")[1])

    def test_off(self) -> None:
        """session_tickets=False: no tickets, no resumption (Twisted's default)."""
        holder = TLSContextHolder(mx_config(session_tickets=False))
        self.assertFalse(holder.session_tickets)
        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, _, _ = handshake(holder, client)
        self.assertFalse(handshake(holder, client, session)[1])

    def test_build_server_options(self) -> None:
        """build_server_options has tickets too."""
        options = build_server_options(mx_config())

        class Holder:
            def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
                return SSL.Connection(options.getContext())

        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, _, _ = handshake(Holder(), client)
        self.assertTrue(handshake(Holder(), client, session)[1])


class ClientCertificateTests(unittest.SynchronousTestCase):
    """A resumed session skips certificate verification: what tls_info reports must not change."""

    def _infos(self, **kw: Any) -> List[Any]:
        from tests._tls import material

        m = material()
        holder = TLSContextHolder(mx_config(request_client_cert=True, **kw))
        client = client_context(ssl.TLSVersion.TLSv1_3)
        client.load_cert_chain(m.paths["client.crt"], m.paths["client.key"])
        session, _, first = handshake(holder, client)
        again, resumed, second = handshake(holder, client, session)
        self.assertTrue(resumed)
        return [tls_info(_Handle(first)), tls_info(_Handle(second))]

    def test_unverified_stays_unverified(self) -> None:
        """No ca: the certificate is accepted unverified, and a resumption does not make it verified."""
        infos = self._infos()
        self.assertEqual([i.peer_certificate is not None for i in infos], [True, True])
        self.assertEqual([i.peer_certificate_verified for i in infos], [False, False])

    def test_verified_stays_verified(self) -> None:
        from tests._tls import material

        infos = self._infos(ca=material().ca.cert_pem)
        self.assertEqual([i.peer_certificate_verified for i in infos], [True, True])
        self.assertEqual(infos[0].peer_certificate, infos[1].peer_certificate)


class _Handle:
    """A transport-like object whose getHandle() is the server connection (what tls_info walks)."""

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn

    def getHandle(self) -> SSL.Connection:
        return self._conn


class FallbackTests(unittest.SynchronousTestCase):
    """Without the OpenSSL functions: tickets off, one warning, TLS itself unaffected."""

    def setUp(self) -> None:
        self.patch(_tlsnative, "_loaded", None)
        self.patch(_tlsnative, "_error", "LookupError: simulated")
        self.patch(_tlstickets, "_warned", False)

    def test_no_tickets_logged_once(self) -> None:
        with capturedLogs() as events:
            one = TLSContextHolder(mx_config())
            two = TLSContextHolder(mx_config(ticket_secret=SECRET))
        self.assertFalse(one.session_tickets)
        self.assertFalse(two.session_tickets)
        warnings = [e for e in events if "session tickets are off" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.assertIn("simulated", warnings[0]["error"])
        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, _, _ = handshake(one, client)
        self.assertFalse(handshake(one, client, session)[1])


class ConfigTests(unittest.SynchronousTestCase):
    def test_errors(self) -> None:
        with self.assertRaisesRegex(TLSConfigError, "at least 32 bytes"):
            TLSContextHolder(mx_config(ticket_secret=b"short"))
        with self.assertRaisesRegex(TLSConfigError, "ticket_secret file"):
            TLSContextHolder(mx_config(ticket_secret="/nonexistent/secret"))
        for bad in (0, 0.5, -1, 8 * 86400, True, "60"):
            with self.assertRaisesRegex(TLSConfigError, "ticket_lifetime"):
                TLSConfig(ticket_lifetime=bad)  # type: ignore[arg-type]

    def test_secret_not_in_repr(self) -> None:
        self.assertNotIn("0123456789", repr(TLSConfig(ticket_secret=SECRET)))


# --------------------------------------------------------------------------
# Real clients over loopback


def _s_client(openssl: str, port: int, version: str, session_file: str, out: bool) -> str:
    """openssl s_client -starttls smtp, saving (-sess_out) or offering (-sess_in) a session; its output."""
    argv = [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", version,
            "-sess_out" if out else "-sess_in", session_file]
    # stdin stays open a moment (TLS 1.3 tickets come after the handshake), then QUIT ends the session.
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        time.sleep(0.5)
        out, err = process.communicate(b"QUIT\r\n", timeout=15)
    return out.decode("utf-8", "replace") + err.decode("utf-8", "replace")


def _resumption(output: str) -> str:
    match = re.search(r"^(New|Reused), (TLSv1\.[23])", output, re.M)
    assert match, output
    return f"{match.group(1)} {match.group(2)}"


class OpenSSLClientTests(_TLSTestCase):
    async def test_s_client_resumes(self) -> None:
        """openssl s_client -sess_out then -sess_in over STARTTLS: Reused, TLS 1.3 and 1.2; hooks see resumed."""
        openssl = tool_path("openssl", "/usr/bin")
        hooks = Recorder()
        _, port = await self.start(hooks)
        directory = tempfile.mkdtemp(prefix="txsmtpsrv-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        for version, name in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
            path = os.path.join(directory, f"{name}.pem")
            first = await self.thread(_s_client, openssl, port, version, path, True)
            self.assertEqual(_resumption(first), f"New {name}")
            second = await self.thread(_s_client, openssl, port, version, path, False)
            self.assertEqual(_resumption(second), f"Reused {name}")
        self.assertEqual([info.resumed for info in hooks.secure], [False, True, False, True])


def _served_by(server: Any, local_port: int) -> int:
    """The pid of the process that logged the connection from C{local_port} (the parent logs no 'worker')."""
    match = server.wait_for(rf"(?:worker (\d+))?\] connection from 127\.0\.0\.1:{local_port}\b")
    return int(match.group(1)) if match.group(1) else server.proc.pid


def _python_client(port: int, session: Optional[ssl.SSLSession], context: ssl.SSLContext
                   ) -> Tuple[int, ssl.SSLSession, bool]:
    """EHLO, STARTTLS (offering C{session}), NOOP, QUIT with Python's ssl; (local port, session, resumed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        local_port = raw.getsockname()[1]
        reader = raw.makefile("rb")

        def reply() -> bytes:
            while True:
                line = reader.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        raw.sendall(b"EHLO client.test\r\n")
        reply()
        raw.sendall(b"STARTTLS\r\n")
        assert reply().startswith(b"220")
        with context.wrap_socket(raw, session=session) as tls:
            tls_reader = tls.makefile("rb")
            tls.sendall(b"NOOP\r\n")  # the reply comes after the tickets
            assert tls_reader.readline().startswith(b"250")
            tls.sendall(b"QUIT\r\n")
            tls_reader.readline()
            assert tls.session is not None
            return local_port, tls.session, tls.session_reused


def test_workers_share_ticket_keys(twistd: Any) -> None:  # noqa: F811  (the fixture)
    """
    --workers 2: a ticket issued by one process resumes on the other (Python's
    ssl client, TLS 1.3 and 1.2); every offered ticket resumes.
    """
    server = twistd("--workers", "2", "--tls-ticket-lifetime", "600")
    worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
    server.wait_for(rf"listening on 127\.0\.0\.1:{server.port} \(adopted fd 3\), pid {worker}")
    for version in VERSIONS:
        context = client_context(version)
        port, session, resumed = _python_client(server.port, None, context)
        assert not resumed
        issuer = _served_by(server, port)
        for _ in range(30):  # the kernel spreads connections; stop once the other process resumed it
            port, _, resumed = _python_client(server.port, session, context)
            assert resumed, server.log()
            if _served_by(server, port) != issuer:
                break
        else:
            raise AssertionError(f"no connection reached the process that did not issue the ticket ({version})")
    assert server.terminate() in CLEAN_EXITS


def test_workers_s_client(twistd: Any, tmp_path: Path) -> None:  # noqa: F811  (the fixture)
    """--workers 2: openssl s_client -sess_in resumes every time, also on the process that did not issue it."""
    openssl = tool_path("openssl", "/usr/bin")
    server = twistd("--workers", "2")
    worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
    server.wait_for(rf"listening on 127\.0\.0\.1:{server.port} \(adopted fd 3\), pid {worker}")
    path = str(tmp_path / "session.pem")
    assert _resumption(_s_client(openssl, server.port, "-tls1_3", path, True)) == "New TLSv1.3"
    issuer = _tls_processes(server, 1)[0]
    for attempt in range(2, 32):
        assert _resumption(_s_client(openssl, server.port, "-tls1_3", path, False)) == "Reused TLSv1.3"
        if _tls_processes(server, attempt)[-1] != issuer:
            break
    else:
        raise AssertionError("no resumed connection reached the process that did not issue the ticket")
    assert server.terminate() in CLEAN_EXITS


def _tls_processes(server: Any, count: int) -> List[int]:
    """The pids of the processes that logged the first C{count} completed handshakes, in order."""
    pattern = r"\[txsmtpsrv#info [0-9a-f]+(?: worker (\d+))?\] TLS established"
    while True:
        found = [int(m.group(1)) if m.group(1) else server.proc.pid for m in re.finditer(pattern, server.log())]
        if len(found) >= count:
            return found[:count]
        server.wait_for(pattern)


# --------------------------------------------------------------------------
# Command line


def _parse(*args: str) -> Any:
    from txsmtpsrv._cli import Options

    options = Options()
    options.parseOptions(list(args))
    return options


def test_cli_options(tmp_path: Path, monkeypatch: Any) -> None:
    """--tls-ticket-secret/--tls-ticket-lifetime/--no-tls-tickets reach the TLSConfig and the workers."""
    from txsmtpsrv._cli import worker_arguments
    from twisted.python import usage

    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    parent = _parse("--workers", "2", "--tls-ticket-secret", str(secret), "--tls-ticket-lifetime", "600")
    assert parent.serverKwargs["tls"] == {"ticket_secret": str(secret), "ticket_lifetime": 600.0}
    worker = _parse("--worker", *worker_arguments(parent))
    assert worker.serverKwargs == parent.serverKwargs
    assert _parse("--no-tls-tickets").serverKwargs["tls"] == {"session_tickets": False}
    assert "tls" not in _parse().serverKwargs
    assert "--tls-ticket-secret" in str(_parse()) and "--no-tls-tickets" in str(_parse())
    short = tmp_path / "short"
    short.write_bytes(b"x" * 8)
    for argv, message in ((["--tls-ticket-secret", str(short)], "at least 32 bytes"),
                          (["--tls-ticket-secret", str(tmp_path / "missing")], "cannot read"),
                          (["--tls-ticket-lifetime", "0"], "positive number"),
                          (["--tls-ticket-lifetime", "864000"], "ticket_lifetime")):
        with pytest.raises(usage.UsageError, match=message):
            _parse(*argv)


def test_cli_secret_readable_by_others(tmp_path: Path, monkeypatch: Any) -> None:
    """A ticket secret other users can read is used, with a warning."""
    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o644)
    with capturedLogs() as events:
        _parse("--tls-ticket-secret", str(secret))
    assert [e for e in events if "can be read by other users" in e["log_format"]]
