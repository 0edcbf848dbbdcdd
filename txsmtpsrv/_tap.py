# -*- test-case-name: tests.test_tap_options,tests.test_tap_hooks,tests.test_tap_service,tests.test_tap_workers -*-
"""
C{twistd smtpsrv}: a mail receiver out of the box::

    twistd -n smtpsrv                                  # 127.0.0.1:2525 -> ./Maildir
    twistd -n smtpsrv -l tcp:25 -l tcp6:25 --maildir /var/mail/inbox --name mx.example.com
    twistd -n smtpsrv --lmtp -l unix:/run/lmtp.sock --mbox /var/mail/all
    twistd -n smtpsrv --hooks mypolicy:Hooks --auth file:/etc/smtp.passwd
    twistd -n smtpsrv --workers 4 -l tcp:25 --metrics tcp:9101:interface=127.0.0.1

This module is the plugin's logic (L{makeService}, L{SMTPService}); the
plugin file C{twisted/plugins/txsmtpsrv_plugin.py} only names it, so
C{twistd --help} stays fast. The command line is L{txsmtpsrv._cli}, the
hooks composition L{txsmtpsrv._layered}, the worker processes
L{txsmtpsrv._workers} and the sockets they share L{txsmtpsrv._sharedports}.

What runs: one L{SMTPServer} whose hooks are, in order of precedence, the
user's C{--hooks} object, the C{--auth} authenticator and the built-in
delivery (C{--maildir}, the default, or C{--mbox}). Each C{--listen}
endpoint is a C{StreamServerEndpointService}; stopping the service
(C{SIGTERM}) stops listening and closes the server gracefully, so
transactions in progress finish (up to C{--close-timeout}) and no message
answered with C{250} is lost. C{SIGHUP} re-reads the certificates (in every
worker too); its handler is installed before the ports are opened, so a
C{SIGHUP} right after start-up never kills the daemon. With C{--log-json
FILE}, C{SIGUSR1} (and C{SIGHUP}) reopen FILE after log rotation
(L{txsmtpsrv._jsonlog}); twistd's own C{SIGUSR1} handler still runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from ._cli import Options, server_kwargs, worker_arguments
from . import _limitopts
from ._authres import _tap as _authres
from ._delivery import MaildirDelivery, MboxDelivery
from ._jsonlog import JSONLog
from ._layered import LayeredHooks, authenticator, instantiate_hooks
from ._sharedports import SharedPort, listen_endpoint
from ._workers import READY, ParentWatch, WorkerPool, twist_command, worker_environment

__all__ = ["Options", "makeService", "SMTPService"]

log = Logger()


def _format_address(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """An endpoint that logs where it listens once it does (port 0 becomes a real port)."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, protocol: str) -> None:
        self._endpoint = endpoint
        self._description = description
        self._protocol = protocol

    def listen(self, factory: Any) -> "Deferred[IListeningPort]":
        return self._endpoint.listen(factory).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        log.info(
            "txsmtpsrv {protocol} listening on {address} ({description}), pid {pid}",
            protocol=self._protocol,
            address=_format_address(port.getHost()),
            description=self._description,
            pid=os.getpid(),
        )
        return port


class ListenError(Exception, SystemExit):
    """
    A port that cannot be bound, under twistd: exit status 1 without a traceback
    (a C{SystemExit}), and an C{Exception}, which twistd reports: daemonising,
    it passes this text to the waiting C{twistd} command and removes the pid
    file (a bare C{SystemExit} left that command waiting for ever).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 1  # the message is in the log already: exit quietly


class _Listener(StreamServerEndpointService):
    """A listening service that says when its socket is closed (clients are refused from then on)."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, description: str,
                 fatal: bool = False) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self.description = description
        #: Under twistd: a port that cannot be bound is one log line and exit status 1.
        self.fatal = fatal
        # Fail `twistd` at start-up when a port can't be bound, as strports.service() does.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        except Exception as e:
            if not self.fatal:
                raise
            log.critical("twistd smtpsrv: error: cannot listen on {description}: {error}",
                         description=self.description, error=str(e))
            why = getattr(getattr(e, "socketError", None), "strerror", None) or str(e)
            raise ListenError(f"cannot listen on {self.description}: {why}") from None

    def stopService(self) -> "Deferred[None]":
        d: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]  # Twisted: unannotated

        def closed(result: Any) -> Any:
            log.info("txsmtpsrv stopped listening on {description}", description=self.description)
            return result

        return d.addCallback(closed)


class SMTPService(MultiService):
    """
    The service C{twistd smtpsrv} runs: listening services as children and
    the server, which is closed gracefully when the service stops.

    @ivar server: the L{SMTPServer}.
    @ivar credentialCheckers: the C{--auth} checkers.
    @ivar pool: the L{WorkerPool} with C{--workers}, else C{None}.
    """

    def __init__(self, server: Any, credentialCheckers: Sequence[ICredentialsChecker] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self.server = server
        self.credentialCheckers = list(credentialCheckers)
        self.pool: Optional[WorkerPool] = None
        #: Called once the service has started (and listens).
        self.started: List[Callable[[], None]] = []
        #: Called once everything has stopped (temporary directories go).
        self.cleanups: List[Callable[[], None]] = []
        #: Called on SIGUSR1 and SIGHUP: log files to reopen after rotation (C{--log-json}).
        self.reopeners: List[Callable[[], None]] = []
        self._previous_handlers: Dict[int, Any] = {}  # signal number: the handler ours replaced

    def _install_signals(self) -> None:
        """
        SIGHUP reloads, SIGUSR1 reopens logs (if there are any to reopen);
        installed before any port is opened (twistd opens them while privileged).
        """
        if self._previous_handlers or threading.current_thread() is not threading.main_thread():
            return
        self._previous_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        if self.reopeners:
            self._previous_handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._user1)

    def privilegedStartService(self) -> None:
        # The children listen (and log "listening") here, before startService:
        # a SIGHUP sent as soon as that line appears must not find the default
        # action (terminate), so the handler goes in first.
        self._install_signals()
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted: unannotated

    def startService(self) -> None:
        self._install_signals()
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        log.info(READY, pid=os.getpid())  # the parent forwards reloads to a worker from now on
        for started in self.started:
            started()

    def _hangup(self, signum: int, frame: Any) -> None:
        self.server.reactor.callFromThread(self.reload)

    def _user1(self, signum: int, frame: Any) -> None:
        """
        Reopen our logs, then run the handler twistd installed for its
        C{--logfile} (it rotates that file), if there was one: both logs
        turn over on one signal. Without one, SIGUSR1 no longer kills.
        """
        self.server.reactor.callFromThread(self.reopen_logs)
        previous = self._previous_handlers.get(signal.SIGUSR1)
        if callable(previous):
            previous(signum, frame)

    def reopen_logs(self) -> None:
        """Reopen the log files (C{--log-json}) at their paths, in the reactor thread."""
        for reopen in self.reopeners:
            reopen()

    def reload(self) -> None:
        """
        What SIGHUP does: reopen the logs (first: the reload's lines go to the
        new file), re-read the certificates and C{--auth file:} here and in
        every worker.
        """
        self.reopen_logs()
        self.reload_tls()
        _limitopts.reload_checkers(self.credentialCheckers)
        if self.pool is not None:
            self.pool.reload()

    def reload_tls(self) -> None:
        """Re-read --tls-key/--tls-cert; on error keep the certificates in use (one error line)."""
        try:
            self.server.reload_tls()
        except Exception as e:
            log.error("TLS reload failed, the previous certificates stay in use: {error}", error=str(e))

    def _restore_signals(self) -> None:
        """
        Give SIGHUP (and SIGUSR1) back their previous handlers; called once the
        server has closed, not when stopping starts: until then a SIGHUP's
        default action would kill transactions still finishing (and leave the pid file).
        """
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous_handlers.items():
                signal.signal(signum, previous)
            self._previous_handlers = {}

    def stopService(self) -> "Deferred[None]":
        """
        Stop listening (and the workers) and let transactions in progress
        finish. SIGHUP (and SIGUSR1) stay handled until they have: the default
        action would kill them (and leave the pid file behind).
        """
        children = super().stopService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        closing = maybeDeferred(self.server.close)
        d = DeferredList([children, closing], consumeErrors=True)

        def done(results: List[Tuple[bool, Any]]) -> None:
            for ok, value in results:
                if not ok:
                    log.failure("error while stopping txsmtpsrv", value)
            self._restore_signals()
            for cleanup in self.cleanups:
                cleanup()

        return d.addCallback(done)


class _MaildirCleaning(Service):
    """Remove stale Maildir C{tmp/} files at start-up and then periodically (L{MaildirDelivery})."""

    def __init__(self, delivery: MaildirDelivery, reactor: Any) -> None:
        self._delivery = delivery
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self._delivery.start_cleaning(self._reactor)

    def stopService(self) -> None:
        self._delivery.stop_cleaning()
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: unannotated


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the C{twistd smtpsrv} service from parsed L{Options}.

    Run by twistd, an error is one line on standard error and exit status 1.

    @param reactor: for tests; twistd's reactor by default.
    """
    cleanups: List[Callable[[], None]] = []
    try:
        return _make_service(options, reactor, cleanups)
    except BaseException as e:
        for cleanup in cleanups:  # temporary directories, the JSON log observer
            cleanup()
        if isinstance(e, usage.UsageError) and getattr(options, "parent", None) is not None:
            raise SystemExit(f"twistd smtpsrv: error: {e}") from None
        raise


def _share_development_certificate(options: Options, service: SMTPService) -> Tuple[str, str]:
    """
    With --workers and no certificate: make one development certificate here
    and give its files to every process, so clients see one fingerprint.
    """
    from ._options import ServerOptions
    from ._tls import development_certificate

    name = ServerOptions.build(**server_kwargs(options)).name
    dev = development_certificate(name)
    directory = tempfile.mkdtemp(prefix="txsmtpsrv-devcert-")
    log.info("development certificate for all processes in {directory} (removed at exit)", directory=directory)
    service.cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    paths = []
    for filename, data in (("key.pem", dev.key), ("cert.pem", dev.cert)):
        assert isinstance(data, bytes)  # development_certificate() gives PEM bytes
        path = os.path.join(directory, filename)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths[0], paths[1]


def _share_ticket_secret(service: SMTPService) -> str:
    """
    With --workers and no --tls-ticket-secret: make one random secret here and
    give its file (mode 0600, in a private directory removed at exit) to every
    process, so that each accepts the session tickets the others issue. The
    keys are derived from it and the time, so they rotate in step with no
    further message between the processes.
    """
    directory = tempfile.mkdtemp(prefix="txsmtpsrv-tickets-")
    service.cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    path = os.path.join(directory, "ticket-secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return path


def _make_service(options: Options, reactor: Any, service_cleanups: List[Callable[[], None]]) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from ._server import SMTPServer

    workers = options["workers"]
    json_log = JSONLog(options["log-json"]) if options["log-json"] and not options["worker"] else None
    if json_log is not None:
        service_cleanups.append(json_log.close)
    metrics_dir: Optional[str] = None
    if options["metrics"] and workers > 1:
        # Before prometheus_client is imported: its values then live in files every process adds to.
        metrics_dir = tempfile.mkdtemp(prefix="txsmtpsrv-metrics-")
        log.info("metrics of all processes in {directory} (removed at exit)", directory=metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        service_cleanups.append(lambda: shutil.rmtree(metrics_dir or "", ignore_errors=True))

        def forget_metrics_dir() -> None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

        service_cleanups.append(forget_metrics_dir)

    delivery: Any
    if options["mbox"]:
        delivery = MboxDelivery(options["mbox"], options["name"])
    else:
        delivery = MaildirDelivery(options["maildir"], options["name"])
    checkers = options.credentialCheckers()
    auth_hooks = authenticator(checkers) if checkers else None
    user_hooks = instantiate_hooks(options.hooksObject) if options.hooksObject is not None else None
    # --verify puts an AuthVerifier in front; --nameserver's resolver serves reverse lookups too.
    hooks, resolver = _authres.wrap(options, LayeredHooks(user_hooks, auth_hooks, delivery), reactor)

    service = SMTPService(None, checkers)
    service.cleanups = service_cleanups  # the same list: what is added below is cleaned up too
    worker_tls: Dict[str, str] = {}
    kwargs = server_kwargs(options)
    if workers > 1 and not (options["tls-key"] or options["tls-cert"] or options["hide-starttls"]):
        key, cert = _share_development_certificate(options, service)
        kwargs.setdefault("tls", {}).update(key=key, cert=cert)
        worker_tls = {"tls-key": key, "tls-cert": cert}
    if workers > 1 and not (options["no-tls-tickets"] or options["tls-ticket-secret"]):
        secret = _share_ticket_secret(service)
        kwargs.setdefault("tls", {})["ticket_secret"] = secret
        worker_tls["tls-ticket-secret"] = secret
    try:
        server = SMTPServer(hooks, reactor=reactor, resolver=resolver, **kwargs)
        if not server.options.hide_starttls:
            # Load the certificates now, as SMTPServer.listen() would: a bad
            # --tls-key/--tls-cert stops twistd at start-up, not at the first STARTTLS.
            server.load_tls()
    except (TypeError, ValueError) as e:  # TLSConfigError is a ValueError
        raise usage.UsageError(str(e)) from None
    service.server = server
    delivery.hostname = server.options.name  # Received headers name us as the greeting does
    protocol = "LMTP" if options["lmtp"] else "SMTP"
    if json_log is not None:
        service.started.append(json_log.started)
        service.reopeners.append(json_log.reopen)

    endpoints: List[Tuple[IStreamServerEndpoint, str]] = []
    for fd, family in options["adopt"]:
        endpoints.append((AdoptedStreamServerEndpoint(reactor, fd, family), f"adopted fd {fd}"))
    if options["worker"]:
        ParentWatch(reactor).setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted: unannotated
    elif isinstance(delivery, MaildirDelivery):  # one process cleans tmp/, not every worker
        _MaildirCleaning(delivery, reactor).setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted: unannotated

    if workers > 1:
        shared: List[SharedPort] = []
        try:
            for description in options["listen"]:
                shared.append(SharedPort.bind(description, workers))
        except usage.UsageError:
            for port in shared:
                port.close()
            raise
        for port in shared:
            own = os.dup(port.socket_for(0).fileno())
            if port.prefix:  # smtps:/smtpproxy: around the shared socket, as in the workers
                endpoints.append((listen_endpoint(reactor, port.endpoint_string(own), lambda: server.tls),
                                  port.description))
            else:
                endpoints.append((AdoptedStreamServerEndpoint(reactor, own, port.family), port.description))
        argv = twist_command(reactor) + worker_arguments(options, **worker_tls)
        on_exit = None
        if metrics_dir:
            from ._metrics import process_dead

            on_exit = process_dead
        search = [options.hooksDirectory] if options.hooksDirectory else []
        pool = WorkerPool(reactor, shared, workers - 1, argv, worker_environment(search),
                          stop_timeout=server.options.close_timeout + 10.0, factory=server, on_exit=on_exit)
        pool.setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        service.pool = pool
    else:
        for description in options["listen"]:
            # smtps: uses the server's own TLS: its certificates, SNI, reloads.
            endpoints.append((listen_endpoint(reactor, description, lambda: server.tls), description))

    fatal = getattr(options, "parent", None) is not None  # run by twistd: no traceback
    for endpoint, description in endpoints:
        _Listener(_AnnouncingEndpoint(endpoint, description, protocol), server, description,
                  fatal).setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted: unannotated
    # After the SMTP listeners: the first 'listening on' line names the SMTP port.
    metrics_stop = None
    if options["metrics"]:
        from ._metrics import ServerMetrics, metrics_resource, scrape_registry

        registry = scrape_registry()
        metrics = ServerMetrics(None if metrics_dir or options["worker"] else registry)
        metrics_stop = metrics.observe(server)
        if not options["worker"]:
            from twisted.web.server import Site

            site = Site(metrics_resource(registry))
            site.noisy = False
            endpoint = serverFromString(reactor, options["metrics"])
            metrics_service = _Listener(_AnnouncingEndpoint(endpoint, options["metrics"], "metrics"), site,
                                        options["metrics"], fatal)
            metrics_service.setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted: unannotated
    if metrics_stop is not None:
        service.cleanups.append(metrics_stop)

    return service
