"""
Benchmark servers: one SMTP sink per implementation, run as a separate process.

Run as ``python bench/_peers.py KIND [--cert PEM --key PEM]`` with KIND one of
``txsmtpsrv``, ``aiosmtpd``, ``twisted.mail`` (Python, this process serves),
``node`` (Nodemailer's smtp-server), ``go-smtp`` (emersion/go-smtp) or ``smtp-sink``
(Postfix's C test sink).  The server listens on 127.0.0.1 (port 0 where it can
choose), writes one line ``READY <port> <pid> <detail>`` to stdout and then serves
until it is killed; ``<pid>`` is the process that serves (whose CPU and memory the
benchmark reads).  It dies with its parent (``PR_SET_PDEATHSIG``).  Every server
reads each message body and throws it away, so what is measured is the SMTP
machinery, not the storage.  Only warnings and errors are logged, to stderr,
which the benchmark keeps and shows when a run fails.

``node`` and ``go-smtp`` replace this process (``exec``) once their toolchain has
installed/built them (``_toolchains.py``): the READY line is theirs and the pid is
this process's.  ``smtp-sink`` cannot listen on port 0 and prints nothing when
ready, so this process picks a free port, starts it as a child (killed with this
process), waits until it accepts connections and prints its pid.

``--cert``/``--key`` make a server offer STARTTLS with that certificate (PEM files);
``smtp-sink`` has no TLS.  Without them txsmtpsrv offers STARTTLS with its
development certificate as it always did, and the other servers do not offer it.
From Python: L{command} gives the command line, L{unavailable} says whether (and why
not) a kind can run on this machine.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

PYTHON_KINDS = ("txsmtpsrv", "aiosmtpd", "twisted.mail")
NATIVE_KINDS = ("node", "go-smtp", "smtp-sink")
KINDS = PYTHON_KINDS + NATIVE_KINDS
#: Kinds that can offer STARTTLS (with --cert/--key).
TLS_KINDS = ("txsmtpsrv", "aiosmtpd", "twisted.mail", "node", "go-smtp")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Same idle timeout everywhere (aiosmtpd's default); the benchmark never idles that long.
IDLE_TIMEOUT = 300


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us if the benchmark dies, so no server outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def raise_nofile(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _ready(port: int, detail: str) -> None:
    """Tell the benchmark which port we listen on (the only thing ever written to stdout)."""
    sys.stdout.write(f"READY {port} {os.getpid()} {detail}\n")
    sys.stdout.flush()


def _twisted_logging_to_stderr() -> None:
    """Send Twisted log events of level warn and above to stderr; drop the rest cheaply."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _run_reactor_listening(listen: Callable[[], Any], detail: str) -> None:
    """Run the default reactor, calling ``listen()`` (-> Deferred[IListeningPort]) first."""
    from twisted.internet import reactor

    def listening(port: Any) -> None:
        _ready(port.getHost().port, f"{detail} reactor={type(reactor).__name__}")

    def failed(failure: Any) -> None:
        sys.stderr.write(f"listen failed: {failure.getTraceback()}\n")
        reactor.stop()

    def start() -> None:
        from twisted.internet import defer

        defer.maybeDeferred(listen).addCallbacks(listening, failed)

    reactor.callWhenRunning(start)
    reactor.run()


def serve_txsmtpsrv(cert: str | None = None, key: str | None = None) -> None:
    """
    txsmtpsrv: SMTPServer with an on_data hook that reads and discards the body.

    On the reactor named by C{$TXSMTPSRV_BENCH_REACTOR} (a C{twistd --reactor} name
    such as C{smtpsrv-epoll}) when that is set, else on Twisted's default.
    """
    reactor_name = os.environ.get("TXSMTPSRV_BENCH_REACTOR")
    if reactor_name:
        from twisted.application.reactors import installReactor

        installReactor(reactor_name)
    _twisted_logging_to_stderr()
    import txsmtpsrv
    from txsmtpsrv import SMTPServer

    class SinkHooks:
        """Read every body chunk and drop it; the Deferred fires at the final dot."""

        def on_data(self, session: Any, stream: Any) -> Any:
            return stream.collect(lambda chunk: None)

    tls: dict[str, Any] = {}
    if cert is not None:
        from txsmtpsrv import TLSConfig

        tls["tls"] = TLSConfig(cert=cert, key=key)
    if cert is not None and os.environ.get("TXSMTPSRV_BENCH_IMPLICIT"):
        tls["secure"] = True  # bench/tls.py --implicit: TLS from the first byte
    server = SMTPServer(SinkHooks(), name="bench", size=0, socket_timeout=IDLE_TIMEOUT, **tls)
    if cert is not None:
        server.load_tls()  # a bad file shows now, not at the first STARTTLS
    version = getattr(txsmtpsrv, "__version__", "dev")
    try:  # which build runs: pure Python, or mypyc-compiled (bench/_mypyc.py)
        from txsmtpsrv._build import compiled

        build = "mypyc" if compiled() else "pure"
    except ImportError:  # a baseline tree from before txsmtpsrv._build
        build = "pure"
    _run_reactor_listening(
        lambda: server.listen("tcp:0:interface=127.0.0.1"), f"txsmtpsrv={version} build={build}"
    )


def serve_twisted_mail(cert: str | None = None, key: str | None = None) -> None:
    """twisted.mail.smtp ESMTP with an IMessageDelivery whose messages discard lines."""
    _twisted_logging_to_stderr()
    import twisted
    from twisted.internet import defer
    from twisted.mail import smtp
    from zope.interface import implementer

    @implementer(smtp.IMessage)
    class DiscardMessage:
        """Receives the body line by line (as twisted.mail delivers it) and keeps nothing."""

        def lineReceived(self, line: bytes) -> None:
            pass

        def eomReceived(self) -> defer.Deferred[None]:
            return defer.succeed(None)

        def connectionLost(self) -> None:
            pass

    @implementer(smtp.IMessageDelivery)
    class SinkDelivery:
        """Accept every sender and recipient; no Received: header (that would be extra work)."""

        def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
            return None

        def validateFrom(self, helo: Any, origin: Any) -> Any:
            return origin

        def validateTo(self, user: Any) -> Callable[[], DiscardMessage]:
            return DiscardMessage

    class SinkFactory(smtp.SMTPFactory):
        """The stock factory with ESMTP, the sink delivery and no per-message info logging."""

        protocol = smtp.ESMTP
        domain = "bench"
        timeout = IDLE_TIMEOUT

        def buildProtocol(self, addr: Any) -> Any:
            p = smtp.SMTPFactory.buildProtocol(self, addr)
            p.delivery = self.delivery
            p.timeout = self.timeout
            p.noisy = False  # its "Receiving message for delivery" log line per message
            return p

    factory = SinkFactory()
    factory.delivery = SinkDelivery()
    if cert is not None:
        from twisted.internet import ssl

        # ESMTP offers STARTTLS when its ``ctx`` is set (SMTPFactory copies none).
        context = ssl.DefaultOpenSSLContextFactory(key, cert)
        build = factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            p = build(addr)
            p.ctx = context
            return p

        factory.buildProtocol = buildProtocol  # type: ignore[method-assign]

    def listen() -> Any:
        from twisted.internet import endpoints, reactor

        return endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            factory
        )

    _run_reactor_listening(listen, f"twisted={twisted.__version__}")


def serve_aiosmtpd(cert: str | None = None, key: str | None = None) -> None:
    """aiosmtpd.smtp.SMTP on a plain asyncio server (no Controller thread)."""
    import asyncio
    import logging
    import ssl

    import aiosmtpd
    from aiosmtpd.smtp import SMTP

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    class SinkHandler:
        """aiosmtpd has already read (and buffered) the whole body; accept and drop it."""

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    handler = SinkHandler()
    tls_context = None
    if cert is not None:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(cert, key)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="bench",
                data_size_limit=64 * 1024 * 1024,
                timeout=IDLE_TIMEOUT,
                tls_context=tls_context,
                require_starttls=False,
            ),
            host="127.0.0.1",
            port=0,
        )
        port = srv.sockets[0].getsockname()[1]
        _ready(port, f"aiosmtpd={aiosmtpd.__version__} loop={type(loop).__name__}")
        await srv.serve_forever()

    asyncio.run(main())


def _exec(argv: list[str], extra_env: dict[str, str] | None = None) -> None:
    """Become the peer's process (same pid, PR_SET_PDEATHSIG and CPU affinity kept)."""
    env = dict(os.environ)
    env.update(extra_env or {})
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


def serve_node(cert: str | None = None, key: str | None = None) -> None:
    """Nodemailer's smtp-server (pinned version, greeting delay off): bench/peers/node_sink.js."""
    import _toolchains

    argv, env = _toolchains.node_sink()
    if cert is not None and key is not None:
        argv += ["--cert", cert, "--key", key]
    _exec(argv, env)


def serve_go_smtp(cert: str | None = None, key: str | None = None) -> None:
    """emersion/go-smtp built from Debian's sources: bench/peers/go_sink/main.go."""
    import _toolchains

    argv = _toolchains.go_sink()
    if cert is not None and key is not None:
        argv += ["-cert", cert, "-key", key]
    _exec(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_child() -> None:
    """In the forked child before exec: leave root (if we are it), then die with the parent."""
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    _die_with_parent()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def serve_smtp_sink(cert: str | None = None, key: str | None = None) -> None:
    """
    Postfix's smtp-sink as a child: it needs an explicit port and says nothing when ready.

    Options: no AUTH announced (C{-a}), IPv4, up to 16384 connections (C{-m}; the default
    256 would stall the idle scenario), listen backlog 4096.  It advertises PIPELINING.
    Started as root, the child drops to C{nobody} itself before C{exec} (smtp-sink refuses
    to run as root without C{-u}, and its own C{-u} switch would clear PR_SET_PDEATHSIG).
    """
    import _toolchains

    if cert is not None:
        raise SystemExit("smtp-sink has no TLS")
    path = _toolchains.postfix_tool("smtp-sink")
    detail = f"smtp-sink=postfix-{_toolchains.postfix_version()}"
    for _ in range(5):  # the free port may be taken before smtp-sink binds it
        port = _free_port()
        argv = [path, "-a", "-4", "-h", "bench", "-m", "16384", f"127.0.0.1:{port}", "4096"]
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                 preexec_fn=_unprivileged_child)

        def stop(*_: Any) -> None:
            child.kill()
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        end = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < end and not _accepts(port):
            time.sleep(0.02)
        if child.poll() is None and _accepts(port):
            _ready_as(port, child.pid, detail)
            sys.exit(child.wait())
        child.kill()
        child.wait()
    raise SystemExit("smtp-sink did not start (see above)")


def _ready_as(port: int, pid: int, detail: str) -> None:
    sys.stdout.write(f"READY {port} {pid} {detail}\n")
    sys.stdout.flush()


SERVERS: dict[str, Callable[[str | None, str | None], None]] = {
    "txsmtpsrv": serve_txsmtpsrv,
    "aiosmtpd": serve_aiosmtpd,
    "twisted.mail": serve_twisted_mail,
    "node": serve_node,
    "go-smtp": serve_go_smtp,
    "smtp-sink": serve_smtp_sink,
}

_IMPORT_CHECK = {
    "txsmtpsrv": "from txsmtpsrv import SMTPServer",
    "aiosmtpd": "from aiosmtpd.smtp import SMTP",
    "twisted.mail": "from twisted.mail import smtp",
}


def command(kind: str, cert: str | None = None, key: str | None = None) -> list[str]:
    """The command line that runs server C{kind} (run it with ROOT on PYTHONPATH)."""
    if kind not in SERVERS:
        raise ValueError(f"unknown server kind {kind!r}")
    argv = [sys.executable, os.path.abspath(__file__), kind]
    if cert is not None or key is not None:
        if kind not in TLS_KINDS:
            raise ValueError(f"{kind} cannot offer STARTTLS")
        argv += ["--cert", str(cert), "--key", str(key)]
    return argv


def server_env() -> dict[str, str]:
    """The environment for a server process: the checkout's txsmtpsrv first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def unavailable(kind: str) -> str | None:
    """
    None if server C{kind} can run here, else a one-line note why not (so the benchmark
    skips it instead of failing it N times).  Installs/builds the native peers if needed,
    so their first start is not slowed by it.
    """
    if kind in _IMPORT_CHECK:
        proc = subprocess.run([sys.executable, "-c", _IMPORT_CHECK[kind]], capture_output=True,
                              text=True, env=server_env(), cwd=ROOT, timeout=60)
        if proc.returncode == 0:
            return None
        lines = proc.stderr.strip().splitlines()
        return f"cannot import it ({lines[-1] if lines else f'exit status {proc.returncode}'})"
    import _toolchains

    try:
        if kind == "node":
            _toolchains.node_sink()
        elif kind == "go-smtp":
            _toolchains.go_sink()
        elif kind == "smtp-sink":
            _toolchains.postfix_tool("smtp-sink")
        else:
            return f"unknown server kind {kind!r}"
    except _toolchains.Unavailable as exc:
        return str(exc)
    return None


def main(argv: list[str]) -> int:
    """Entry point of a server process."""
    parser = argparse.ArgumentParser(prog=os.path.basename(argv[0]),
                                     description="Run one benchmark SMTP sink.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--cert", help="PEM certificate (chain): offer STARTTLS")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args(argv[1:])
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.cert is not None and args.kind not in TLS_KINDS:
        parser.error(f"{args.kind} cannot offer STARTTLS")
    _die_with_parent()
    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        SERVERS[args.kind](args.cert, args.key)
    except Exception as exc:  # _toolchains.Unavailable and friends: one clear line
        if type(exc).__name__ != "Unavailable":
            raise
        sys.stderr.write(f"{args.kind} unavailable: {exc}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
