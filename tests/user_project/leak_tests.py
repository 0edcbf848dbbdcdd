"""Start, one smtplib message, stop, 100 times: nothing may leak (copied to test_leaks.py, run by pytest)."""

import gc
import os
import smtplib
import threading

from txsmtpsrv.testing import ThreadedServer


def open_fds():
    """Our file descriptors, by kind: sockets, pipes, files..."""
    kinds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        kind = target.split(":", 1)[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def cycle():
    """One start, message, stop; returns how many sockets were open while it ran."""
    with ThreadedServer() as server:
        with smtplib.SMTP(*server.address, timeout=10) as client:
            client.sendmail("a@example.test", ["b@example.test"], b"Subject: leak\r\n\r\nx\r\n")
            sockets = open_fds().get("socket", 0)
        assert len(server.messages) == 1
    return sockets


def test_100_cycles_leak_no_thread_socket_or_fd():
    cycle()  # the first start sets up the one shared reactor thread (crochet), which stays
    gc.collect()
    threads = sorted(t.name for t in threading.enumerate())
    fds = open_fds()
    for _ in range(100):
        # listening socket, client and server side of the connection: the count sees them
        assert cycle() >= fds.get("socket", 0) + 3
    gc.collect()
    assert sorted(t.name for t in threading.enumerate()) == threads
    assert open_fds() == fds


def test_one_reactor_thread_for_many_servers():
    servers = [ThreadedServer().start() for _ in range(5)]
    try:
        names = [t.name for t in threading.enumerate()]
        assert names.count("CrochetReactor") == 1
        assert len({s.port for s in servers}) == 5
    finally:
        for server in servers:
            server.stop()
    assert not any(s.running for s in servers)
