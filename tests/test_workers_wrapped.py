# -*- test-case-name: tests.test_workers_wrapped -*-
"""
C{--workers} with C{unix:}, C{smtpproxy:} and C{smtps:} listeners, for real:
the parent binds each socket once and every process (parent and worker)
serves it with the same wrapping (PROXY header, implicit TLS), built from
the C{adopted:FD:FAMILY} endpoint string.
"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString

from txsmtpsrv._sharedports import SharedPort, split_wrappers

from tests._certs import unverified_client_context
from tests.test_twistd import CLEAN_EXITS, POLICY, TIMEOUT, Twistd, read_reply

POLICY_WITH_PEER = POLICY + '''
    def on_mail_from(self, session, address):
        path = os.environ.get("TXSMTPSRV_TEST_PEERS")
        if path:
            with open(path, "a") as f:
                f.write(f"{os.getpid()} {session.remote_address}\\n")
'''


@pytest.mark.parametrize("description, prefix, inner", [
    ("tcp:25", "", "tcp:25"),
    ("smtps:tcp:465:interface=127.0.0.1", "smtps:", "tcp:465:interface=127.0.0.1"),
    ("smtpproxy:trusted=10.0.0.0/8,fd00\\:\\:/8:timeout=5:tcp:25", "smtpproxy:trusted=10.0.0.0/8,fd00\\:\\:/8:timeout=5:",
     "tcp:25"),
    ("smtps:smtpproxy:unix:/run/s.sock:mode=600", "smtps:smtpproxy:", "unix:/run/s.sock:mode=600"),
])
def test_split_wrappers(description, prefix, inner):
    """The wrappers and the endpoint they wrap; the prefix re-parses with an adopted: endpoint inside."""
    assert split_wrappers(description) == (prefix, inner)


def test_adopted_endpoint_string():
    """adopted:FD:FAMILY is an endpoint string (the plugin), for workers and supervisors."""
    endpoint = serverFromString(object(), "adopted:7:INET6")
    assert isinstance(endpoint, AdoptedStreamServerEndpoint)
    assert (endpoint.fileno, endpoint.addressFamily) == (7, socket.AF_INET6)
    with pytest.raises(ValueError, match="family"):
        serverFromString(object(), "adopted:7:APPLETALK")


def test_unix_socket_is_bound_once_and_removed(tmp_path):
    """A unix: listener is one socket shared by all processes, with its mode; closing removes the file."""
    path = tmp_path / "s.sock"
    port = SharedPort.bind(f"unix:{path}:mode=600", 3)
    assert len(port.sockets) == 1 and port.socket_for(2) is port.sockets[0]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    port.close()
    assert not path.exists()


def test_unix_socket_positional_mode_as_twisted_reads_it(tmp_path):
    """unix:PATH:600:7 is mode 600 and backlog 7 (Twisted's order), as without --workers: not a 0666 socket."""
    path = tmp_path / "s.sock"
    port = SharedPort.bind(f"unix:{path}:600:7", 2)
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        port.close()


def served(pids_file: Path) -> set:
    return {int(line) for line in pids_file.read_text().split()}


def test_workers_serve_unix_proxy_and_smtps(tmp_path):
    """--workers 2: unix:, smtpproxy: and smtps: listeners are each served by both processes, wrapped alike."""
    (tmp_path / "mypolicy.py").write_text(POLICY_WITH_PEER)
    pids, peers = tmp_path / "pids.txt", tmp_path / "peers.txt"
    sock_path = tmp_path / "lmtp.sock"
    server = Twistd(tmp_path, ["-l", "tcp:0:interface=127.0.0.1", "-l", f"unix:{sock_path}",
                               "-l", "smtpproxy:trusted=127.0.0.1/32:tcp:0:interface=127.0.0.1",
                               "-l", "smtps:tcp:0:interface=127.0.0.1", "--no-reverse-lookup", "--workers", "2",
                               "--hooks", "mypolicy:Policy"],
                    pythonpath=[str(tmp_path)],
                    env={"TXSMTPSRV_TEST_PIDS": str(pids), "TXSMTPSRV_TEST_PEERS": str(peers)})
    try:
        proxy_port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(smtpproxy:").group(1))
        smtps_port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(smtps:").group(1))
        worker = int(server.wait_for(r"started worker 1, pid (\d+)").group(1))
        server.wait_for(rf"worker {worker}\] txsmtpsrv ready")
        both = {server.proc.pid, worker}

        pids.write_text("")
        for _ in range(16):  # one socket, two processes accepting: both get some
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.connect(str(sock_path))
                f = sock.makefile("rb")
                assert read_reply(f)[0].startswith("220")
                sock.sendall(b"QUIT\r\n")
                assert read_reply(f)[0].startswith("221")
        assert served(pids) == both

        peers.write_text("")
        for i in range(16):
            with socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT) as sock:
                sock.sendall(f"PROXY TCP4 192.0.2.{i + 1} 127.0.0.1 5000 25\r\n".encode())
                f = sock.makefile("rb")
                assert read_reply(f)[0].startswith("220")
                for command in (b"EHLO p.test", b"MAIL FROM:<a@x.test>", b"QUIT"):
                    sock.sendall(command + b"\r\n")
                    read_reply(f)
        lines = [line.split() for line in peers.read_text().splitlines()]
        assert {int(pid) for pid, _ in lines} == both
        assert sorted(addr for _, addr in lines) == sorted(f"192.0.2.{i + 1}" for i in range(16))

        pids.write_text("")
        context = unverified_client_context()
        for _ in range(16):
            with smtplib.SMTP_SSL("127.0.0.1", smtps_port, context=context, timeout=TIMEOUT) as client:
                assert client.noop()[0] == 250
        assert served(pids) == both
        assert server.terminate() in CLEAN_EXITS
        assert not sock_path.exists()  # the parent removed its socket file
    finally:
        server.kill()


def test_relative_unix_socket_is_removed_where_it_was_bound(tmp_path, monkeypatch):
    """
    unix:rel.sock is bound before twistd's --rundir chdir and closed after it:
    the socket file goes, and a file of that name in the new directory stays.
    """
    (tmp_path / "launch").mkdir()
    (tmp_path / "rundir").mkdir()
    monkeypatch.chdir(tmp_path / "launch")
    port = SharedPort.bind("unix:rel.sock", 2)
    monkeypatch.chdir(tmp_path / "rundir")
    (tmp_path / "rundir" / "rel.sock").write_text("not ours")
    port.close()
    assert not (tmp_path / "launch" / "rel.sock").exists()
    assert (tmp_path / "rundir" / "rel.sock").read_text() == "not ours"
