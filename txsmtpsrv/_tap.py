# -*- test-case-name: tests.test_tap -*-
"""
C{twistd smtpsrv}: a mail receiver out of the box::

    twistd -n smtpsrv                                  # 127.0.0.1:2525 -> ./Maildir
    twistd -n smtpsrv -l tcp:25 -l tcp6:25 --maildir /var/mail/inbox --name mx.example.com
    twistd -n smtpsrv --lmtp -l unix:/run/lmtp.sock --mbox /var/mail/all
    twistd -n smtpsrv --hooks mypolicy:Hooks --auth file:/etc/smtp.passwd
    twistd -n smtpsrv --workers 4 -l tcp:25

This module is the plugin's logic (L{Options}, L{makeService}); the plugin
file C{twisted/plugins/txsmtpsrv_plugin.py} only names it, so C{twistd --help}
stays fast.

What runs: one L{SMTPServer} whose hooks are, in order of precedence, the
user's C{--hooks} object, the C{--auth} authenticator and the built-in
delivery (C{--maildir}, the default, or C{--mbox}); the first that
implements a hook handles it, so a C{--hooks} object with only
C{on_rcpt_to} adds a recipient policy in front of the Maildir, and one
with C{on_data} replaces the delivery. Each C{--listen} endpoint is a
C{StreamServerEndpointService}; stopping the service (C{SIGTERM}) stops
listening and closes the server gracefully, so transactions in progress
finish (up to C{--close-timeout}) and no message answered with C{250} is
lost.

C{--workers N} uses N processes for one set of ports (Twisted runs one
reactor per process, so this is how to use several cores). The twistd
process is the parent: while still privileged it creates, for every
C{tcp:}/C{tcp6:} listen address, N sockets bound to the same address with
C{SO_REUSEPORT} (the kernel then spreads new connections across them; where
C{SO_REUSEPORT} does not exist, one socket shared by all), serves the first
itself and spawns N-1 workers (C{python -m twisted smtpsrv --worker --adopt
FD:FAMILY ...} with the same options) that inherit one socket each through
C{spawnProcess(childFDs=...)} and adopt it
(C{AdoptedStreamServerEndpoint}); this works on any Twisted version. The
parent keeps its copies of the workers' sockets, so a worker that dies is
restarted on the same socket without dropping queued connections. Worker log
events come back as JSON on the worker's standard output and are re-emitted
by the parent with C{worker_pid} added. Stopping the parent sends C{SIGTERM}
to every worker (each closes gracefully like the parent; C{SIGKILL} after
C{close_timeout + 10} seconds) and waits for them; a worker whose parent
vanishes (its standard input pipe closes) stops itself. Limits: only
C{tcp:}/C{tcp6:} endpoints can be shared; C{--max-clients} applies per
process; with C{SO_REUSEPORT}, connections still queued on a worker's
socket when the whole server stops are reset.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import os
import site
import signal
import socket
import threading
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.cred.strcred import AuthOptionMixin
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString, wrapServerTLS
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from txsmtpsrv._authres import _tap as _authres
from txsmtpsrv._delivery import MaildirDelivery, MboxDelivery

__all__ = ["Options", "makeService", "SMTPService"]

log = Logger()

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"
#: A --listen prefix for implicit TLS (port 465 style) with the server's own certificates.
_SMTPS = "smtps:"

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}
_FAMILY_NAMES = {v: k for k, v in _FAMILIES.items()}

#: C{twistd smtpsrv} option -> L{ServerOptions} field, for plain pass-through values.
_PASS_THROUGH = (
    ("name", "name"),
    ("banner", "banner"),
    ("size", "size"),
    ("max-clients", "max_clients"),
    ("socket-timeout", "socket_timeout"),
    ("close-timeout", "close_timeout"),
    ("auth-methods", "auth_methods"),
)
#: Flags passed through as C{True} when given.
_FLAGS = (
    ("lmtp", "lmtp"),
    ("auth-optional", "auth_optional"),
    ("allow-insecure-auth", "allow_insecure_auth"),
    ("no-reverse-lookup", "disable_reverse_lookup"),
)


# ---------------------------------------------------------------------------
# Options


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} is negative")
    return number


def _cidrs(value: str) -> Tuple[str, ...]:
    """C{--xclient-trusted}: comma separated networks, each checked now."""
    networks = tuple(part.strip() for part in value.split(",") if part.strip())
    if not networks:
        raise ValueError("no network given")
    for network in networks:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


def _seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value} is not a positive number of seconds")
    return number


_positive_int.coerceDoc = "Must be a positive integer."  # type: ignore[attr-defined]
_non_negative_int.coerceDoc = "Must be an integer >= 0."  # type: ignore[attr-defined]
_seconds.coerceDoc = "Seconds, a positive number."  # type: ignore[attr-defined]


class Options(usage.Options, AuthOptionMixin):
    """Command line of C{twistd smtpsrv}."""

    synopsis = "[options]"
    longdesc = (
        "Receive mail over SMTP (or LMTP with --lmtp) and store it in a Maildir "
        "(default ./Maildir) or an mbox file. Repeat --listen for several endpoints; "
        "use --hooks to add policy or your own delivery, --auth to offer SMTP AUTH "
        "against twisted.cred checkers, and --workers to use several processes."
    )

    optFlags = [
        ["lmtp", None, "Speak LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient."],
        ["auth-optional", None, "With --auth, still accept mail from clients that do not authenticate."],
        ["allow-insecure-auth", None, "With --auth, offer AUTH also on connections without TLS."],
        ["no-reverse-lookup", None, "Don't look up clients' host names in reverse DNS "
                                    "(Received headers then say 'unknown')."],
        ["worker", None, "Internal (used by --workers): run as a worker process that stops "
                         "when the parent's pipe on standard input closes."],
    ]

    optParameters = [
        ["maildir", None, None, "Deliver into this Maildir (cur/new/tmp are created if missing). "
                                "[default: ./Maildir]"],
        ["mbox", None, None, "Append to this mbox file (mboxrd quoting, fcntl locking) instead "
                             "of a Maildir."],
        ["hooks", None, None, "Hooks object as 'package.module:attribute' (or a module): a class is "
                              "instantiated; its hooks take precedence over --auth and the delivery."],
        ["name", None, None, "Host name for the greeting, the EHLO reply and Received headers. "
                             "[default: this machine's host name]"],
        ["banner", None, None, "Text after the host name in the 220 greeting."],
        ["size", None, None, "Largest accepted message in bytes, advertised with SIZE; 0 means "
                             "no limit. [default: 32 MiB]", _non_negative_int],
        ["max-clients", None, 1000, "Concurrent connections (per process); more are answered "
                                    "421.", _positive_int],
        ["socket-timeout", None, None, "Seconds a client may stay idle before 421 and close. "
                                       "[default: 60]", _seconds],
        ["close-timeout", None, None, "Seconds transactions in progress may take to finish "
                                      "when the server stops. [default: 30]", _seconds],
        ["tls-key", None, None, "PEM private key for STARTTLS (may also hold the certificate)."],
        ["tls-cert", None, None, "PEM certificate (and chain) for STARTTLS. Without --tls-key/--tls-cert, "
                                 "STARTTLS uses a self-signed development certificate."],
        ["auth-methods", None, None, "SASL mechanisms offered with --auth, comma separated "
                                     "(PLAIN, LOGIN, CRAM-MD5, XOAUTH2). [default: PLAIN,LOGIN]"],
        ["xclient-trusted", None, None, "Accept Postfix's XCLIENT and XFORWARD from these networks "
                                        "only, comma separated CIDRs (e.g. 127.0.0.1/32,10.0.0.0/8); "
                                        "without it both are refused from every peer.", _cidrs],
        ["workers", None, 1, "Number of processes serving the --listen ports (tcp:/tcp6: only); "
                             "the twistd process is one of them.", _positive_int],
    ] + _authres.OPT_PARAMETERS

    compData = usage.Completions(
        optActions={
            "maildir": usage.CompleteDirs(),
            "mbox": usage.CompleteFiles(),
            "tls-key": usage.CompleteFiles("*.pem"),
            "tls-cert": usage.CompleteFiles("*.pem"),
        }
    )

    #: SMTP AUTH hands checkers username/password or CRAM-MD5 credentials.
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["adopt"] = []
        self["auth"] = []
        self.hooksObject: Any = None

    def opt_listen(self, description: str) -> None:
        # One line: usage.Options shows docstrings verbatim.
        """Endpoint to listen on, e.g. tcp:25, tcp6:25:interface=\\:\\:1, unix:/run/lmtp.sock:mode=660, smtpproxy:trusted=10.0.0.0/8:tcp:25 (behind HAProxy), or smtps:tcp:465 for implicit TLS with --tls-key/--tls-cert (or the development certificate); repeat for several. [default: tcp:2525:interface=127.0.0.1]"""  # noqa: E501
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_adopt(self, spec: str) -> None:
        """Serve a listening socket inherited on file descriptor FD, given as FD:FAMILY with FAMILY one of INET, INET6, UNIX (used by --workers, and by supervisors that pass sockets); repeatable."""  # noqa: E501
        fd, _, family = spec.partition(":")
        try:
            self["adopt"].append((int(fd), _FAMILIES[family.upper() or "INET"]))
        except (ValueError, KeyError):
            raise usage.UsageError(f"--adopt wants FD:INET, FD:INET6 or FD:UNIX, not {spec!r}") from None

    def opt_nameserver(self, server: str) -> None:
        """DNS server HOST[:PORT] for --verify checks and reverse lookups instead of /etc/resolv.conf; repeatable."""
        _authres.opt_nameserver(self, server)

    def opt_auth(self, description: str) -> None:
        """Offer SMTP AUTH, checking credentials with a twisted.cred checker, e.g. --auth file:/etc/smtp.passwd (lines user:password); see --help-auth. Clients must then authenticate to send mail unless --auth-optional."""  # noqa: E501
        AuthOptionMixin.opt_auth(self, description)
        self["auth"].append(description)

    def postOptions(self) -> None:
        if self["maildir"] and self["mbox"]:
            raise usage.UsageError("--maildir and --mbox exclude each other: choose one delivery")
        if not self["mbox"]:
            self["maildir"] = os.path.abspath(os.path.expanduser(self["maildir"] or "Maildir"))
        else:
            self["mbox"] = os.path.abspath(os.path.expanduser(self["mbox"]))
        for key in ("tls-key", "tls-cert"):
            if self[key]:
                self[key] = os.path.abspath(os.path.expanduser(self[key]))
        if self["tls-key"] or self["tls-cert"]:
            _check_tls_files(self["tls-key"], self["tls-cert"])
        if not self["listen"] and not self["adopt"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["workers"] > 1:
            if self["adopt"] or self["worker"]:
                raise usage.UsageError("--workers cannot be combined with --adopt or --worker")
            if any(d.startswith(_SMTPS) for d in self["listen"]):
                raise usage.UsageError("--workers serves tcp:/tcp6: listeners only, not smtps:")
            for description in self["listen"]:
                _shareable_address(description)  # raises UsageError if not tcp:/tcp6:
        if self["hooks"]:
            self.hooksObject = _load_hooks_target(self["hooks"])
        _authres.post_options(self)

    def credentialCheckers(self) -> List[ICredentialsChecker]:
        """The checkers given with --auth, in order."""
        return list(self.get("credCheckers", []))


def _check_tls_files(key: Optional[str], cert: Optional[str]) -> None:
    """Load the certificate now, so a bad one is a usage error rather than a traceback."""
    from txsmtpsrv._tls import TLSConfig, TLSContextHolder

    try:
        TLSContextHolder(TLSConfig(key=key, cert=cert))
    except ValueError as e:  # TLSConfigError
        raise usage.UsageError(f"--tls-key/--tls-cert: {e}") from None


def _load_hooks_target(spec: str) -> Any:
    """
    Import C{package.module:attribute} (or C{package.module.attribute}, or a
    module). The current directory is searched last, as C{python -m} would.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    module_name, _, attribute = spec.partition(":")
    try:
        try:
            target: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if attribute or "." not in module_name or e.name != module_name:
                raise
            module_name, _, attribute = module_name.rpartition(".")
            target = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise usage.UsageError(f"--hooks {spec}: {e}") from None
    return target


def _instantiate_hooks(target: Any) -> Any:
    """A class becomes an instance (a fresh one per process); anything else is used as is."""
    return target() if inspect.isclass(target) else target


# ---------------------------------------------------------------------------
# Hooks composition


def _is_default_hook(method: Any, name: str) -> bool:
    """Whether C{method} is L{Hooks}' do-nothing version of C{name}."""
    from txsmtpsrv._hooks import Hooks

    base = getattr(Hooks, name, None)
    return base is not None and getattr(method, "__func__", None) is base


class LayeredHooks:
    """
    Hooks made of several hooks objects: each C{on_*} comes from the first
    layer that implements it (inheriting L{Hooks}' empty default does not
    count), except C{on_close}, which every layer gets, so an authenticator
    can log out while the user's hooks clean up too.
    """

    def __init__(self, *layers: Any) -> None:
        self.layers = tuple(layer for layer in layers if layer is not None)

    def _implementations(self, name: str) -> List[Callable[..., Any]]:
        found = []
        for layer in self.layers:
            method = getattr(layer, name, None)
            if method is not None and callable(method) and not _is_default_hook(method, name):
                found.append(method)
        return found

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)
        found = self._implementations(name)
        if not found:
            raise AttributeError(name)
        if name == "on_close" and len(found) > 1:
            return _call_all(found)
        return found[0]

    def __repr__(self) -> str:
        return f"<LayeredHooks {list(self.layers)!r}>"


def _call_all(methods: Sequence[Callable[..., Any]]) -> Callable[..., Deferred[None]]:
    def on_close(*args: Any) -> Deferred[None]:
        results = [maybeDeferred(method, *args) for method in methods]
        return DeferredList(results, consumeErrors=True).addCallback(_log_close_errors)

    return on_close


def _log_close_errors(results: List[Tuple[bool, Any]]) -> None:
    for ok, value in results:
        if not ok:
            log.failure("on_close hook failed", value)


@implementer(IRealm)
class _AvatarIdRealm:
    """A realm whose avatar is the authenticated id itself: it becomes C{session.user}."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Callable[[], None]]:
        return interfaces[0] if interfaces else Interface, avatarId, lambda: None


def _authenticator(checkers: Sequence[ICredentialsChecker]) -> Any:
    """The on_auth hook for --auth: C{CredAuthenticator} over a portal of the checkers."""
    from txsmtpsrv._cred import CredAuthenticator

    return CredAuthenticator(Portal(_AvatarIdRealm(), list(checkers)))


# ---------------------------------------------------------------------------
# Server options


def _server_kwargs(options: Options) -> Dict[str, Any]:
    """Keyword arguments for L{SMTPServer} (L{ServerOptions} fields) from the command line."""
    kwargs: Dict[str, Any] = {}
    for option, field in _PASS_THROUGH:
        if options[option] is not None:
            kwargs[field] = options[option]
    for option, field in _FLAGS:
        if options[option]:
            kwargs[field] = True
    if options["xclient-trusted"]:
        kwargs.update(use_xclient=True, use_xforward=True, xclient_trusted=options["xclient-trusted"])
    tls = {field: options[option] for option, field in (("tls-key", "key"), ("tls-cert", "cert"))
           if options[option]}
    if tls:
        kwargs["tls"] = tls  # ServerOptions turns the dict into a TLSConfig
    return kwargs


# ---------------------------------------------------------------------------
# Services


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


class SMTPService(MultiService):
    """
    The service C{twistd smtpsrv} runs: listening services as children and
    the server, which is closed gracefully when the service stops.

    @ivar server: the L{SMTPServer}.
    @ivar credentialCheckers: the C{--auth} checkers.
    """

    def __init__(self, server: Any, credentialCheckers: Sequence[ICredentialsChecker] = ()) -> None:
        super().__init__()
        self.server = server
        self.credentialCheckers = list(credentialCheckers)

    def privilegedStartService(self) -> None:
        # The children listen (and log "listening") here, before startService:
        # a SIGHUP sent as soon as that line appears must not find the default
        # action (terminate), so the handler goes in first.
        self._install_hangup()
        super().privilegedStartService()

    def startService(self) -> None:
        self._install_hangup()
        super().startService()

    def _install_hangup(self) -> None:
        if getattr(self, "_previous_hup", None) is None and threading.current_thread() is threading.main_thread():
            # SIGHUP re-reads the certificates (new connections get them).
            self._previous_hup = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: Any) -> None:
        self.server.reactor.callFromThread(self.reload_tls)

    def reload_tls(self) -> None:
        """Re-read --tls-key/--tls-cert; on error keep the certificates in use."""
        try:
            self.server.reload_tls()
        except Exception:
            log.failure("TLS reload failed; the previous certificates stay in use")

    def stopService(self) -> "Deferred[None]":
        """Stop listening (and the workers) and let transactions in progress finish."""
        previous = getattr(self, "_previous_hup", None)
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, previous)
            self._previous_hup = None
        children = super().stopService()
        closing = maybeDeferred(self.server.close)
        d = DeferredList([children, closing], consumeErrors=True)

        def done(results: List[Tuple[bool, Any]]) -> None:
            for ok, value in results:
                if not ok:
                    log.failure("error while stopping txsmtpsrv", value)

        return d.addCallback(done)


class _MaildirCleaning(Service):
    """Remove stale Maildir C{tmp/} files at start-up and then periodically (L{MaildirDelivery})."""

    def __init__(self, delivery: MaildirDelivery, reactor: Any) -> None:
        self._delivery = delivery
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._delivery.start_cleaning(self._reactor)

    def stopService(self) -> None:
        self._delivery.stop_cleaning()
        super().stopService()


@implementer(IReadDescriptor)
class _ParentWatch(Service):
    """
    In a worker: stop the reactor (gracefully) when the parent's pipe on
    our standard input closes, i.e. when the parent died without telling us.
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self._reactor = reactor
        self._fd = fd
        self._reading = False

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self._fd, False)
        self._reactor.addReader(self)
        self._reading = True

    def stopService(self) -> None:
        super().stopService()
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "txsmtpsrv-parent-watch"

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError as e:
            return Failure(e)
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False
        if self.running:
            log.warn("parent process went away: worker {pid} stops", pid=os.getpid())
            try:
                self._reactor.stop()
            except ierror.ReactorNotRunning:
                pass


# ---------------------------------------------------------------------------
# Workers


def _endpoint_arguments(description: str) -> Tuple[List[str], Dict[str, str]]:
    """Split an endpoint string like Twisted does: C{:} separates, C{=} names, C{\\} escapes."""
    args: List[str] = []
    kwargs: Dict[str, str] = {}
    current: List[str] = []
    key: Optional[str] = None
    escaped = False
    for ch in description + ":":
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and key is None:
            key, current = "".join(current), []
        elif ch == ":":
            value = "".join(current)
            if key is None:
                args.append(value)
            else:
                kwargs[key] = value
            current, key = [], None
        else:
            current.append(ch)
    return args, kwargs


def _shareable_address(description: str) -> Tuple[int, str, int, int]:
    """
    C{(family, interface, port, backlog)} of a C{tcp:}/C{tcp6:} endpoint
    string; C{usage.UsageError} for anything --workers cannot share.
    """
    args, kwargs = _endpoint_arguments(description)
    kind = args.pop(0).lower() if args else ""
    if kind == "tcp":
        names = ["port", "interface", "backlog"]
        defaults = {"interface": "", "backlog": "50"}
    elif kind == "tcp6":
        names = ["port", "backlog", "interface"]
        defaults = {"interface": "::", "backlog": "50"}
    else:
        raise usage.UsageError(f"--workers can only share tcp: and tcp6: endpoints, not {description!r}")
    if len(args) > len(names) or set(kwargs) - set(names):
        raise usage.UsageError(f"--listen {description}: unexpected arguments for --workers")
    values = dict(defaults)
    values.update(zip(names, args))
    values.update(kwargs)
    try:
        port, backlog = int(values["port"]), int(values["backlog"])
    except (KeyError, ValueError):
        raise usage.UsageError(f"--listen {description}: needs a numeric port (and backlog)") from None
    interface = values["interface"]
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    return family, interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port, backlog


class _SharedPort:
    """
    The listening sockets of one --listen address for all processes: one
    per process with C{SO_REUSEPORT}, else one shared by all.
    """

    def __init__(self, description: str, family: int, sockets: List[socket.socket]) -> None:
        self.description = description
        self.family = family
        self.sockets = sockets

    @classmethod
    def bind(cls, description: str, processes: int) -> "_SharedPort":
        family, interface, port, backlog = _shareable_address(description)
        reuse_port = hasattr(socket, "SO_REUSEPORT")
        sockets: List[socket.socket] = []
        try:
            for _ in range(processes if reuse_port else 1):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((interface, port))
                port = sock.getsockname()[1]  # port 0: the others join the port we got
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError as e:
            for sock in sockets:
                sock.close()
            raise usage.UsageError(f"--listen {description}: {e}") from None
        return cls(description, family, sockets)

    def socket_for(self, index: int) -> socket.socket:
        """The socket process C{index} (0: the parent) serves."""
        return self.sockets[index % len(self.sockets)]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


_REACTOR_NAMES = {
    "EPollReactor": "epoll",
    "PollReactor": "poll",
    "SelectReactor": "select",
    "KQueueReactor": "kqueue",
    "AsyncioSelectorReactor": "asyncio",
}


def _worker_options(options: Options) -> List[str]:
    """The command-line options a worker needs to behave like the parent."""
    args: List[str] = []
    for name in ("maildir", "mbox", "hooks", "name", "banner", "size", "max-clients",
                 "socket-timeout", "close-timeout", "tls-key", "tls-cert", "auth-methods"):
        if options[name] is not None:
            args.append(f"--{name}={options[name]}")
    if options["xclient-trusted"]:
        args.append("--xclient-trusted=" + ",".join(options["xclient-trusted"]))
    for name in ("lmtp", "auth-optional", "allow-insecure-auth", "no-reverse-lookup"):
        if options[name]:
            args.append(f"--{name}")
    args.extend(f"--auth={description}" for description in options["auth"])
    return args + _authres.worker_arguments(options)


def _worker_environment() -> Dict[str, str]:
    """Our environment, with the directory we import txsmtpsrv from on PYTHONPATH."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    standard = set(site.getsitepackages()) | {site.getusersitepackages()}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in standard and root not in paths:
        paths.insert(0, root)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)  # systemd's sockets are not the workers' to adopt
    return env


class _WorkerProtocol(ProcessProtocol):
    """One worker: relays its log output and reports its end."""

    max_line = 1 << 20

    def __init__(self, pool: "_WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: Optional[int] = None
        self.ended: Deferred[None] = Deferred()
        self._buffers = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        log.info("started worker {index}, pid {worker_pid}", index=self.index, worker_pid=self.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD, b"") + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > self.max_line:
            lines.append(rest)
            rest = b""
        self._buffers[childFD] = rest
        for line in lines:
            self._relay(childFD, line)

    def _relay(self, childFD: int, line: bytes) -> None:
        text = line.lstrip(b"\x1e").decode("utf-8", "replace").rstrip()
        if not text:
            return
        if childFD == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                event["worker_pid"] = self.pid
                level = getattr(event.get("log_level"), "name", "-")
                system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
                event["log_system"] = f"{system} worker {self.pid}"
                globalLogPublisher(event)
                return
        log.warn("worker {worker_pid}: {line}", worker_pid=self.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self._relay(fd, rest)
        self._buffers = {1: b"", 2: b""}
        self.pool._worker_ended(self, reason)
        self.ended.callback(None)


class _WorkerPool(Service):
    """
    Runs workers 1..N-1 of C{--workers N}, each on its own sockets; restarts
    the ones that die, and stops them all (and waits) when stopped.

    With C{SO_REUSEPORT} the kernel keeps sending connections to a dead
    worker's socket, so while a worker is down the parent serves its sockets
    itself (given a C{factory}); restarts back off exponentially, so a worker
    that cannot start costs a restart a minute, not a restart a second.
    """

    restart_delay = 1.0
    max_restart_delay = 60.0
    #: A worker that ran this long before dying starts the back-off afresh.
    healthy_after = 60.0

    def __init__(self, reactor: Any, ports: Sequence[_SharedPort], count: int,
                 argv: Sequence[str], env: Dict[str, str], stop_timeout: float,
                 factory: Any = None) -> None:
        self._reactor = reactor
        self.ports = list(ports)
        self.count = count
        self._argv = list(argv)
        self._env = env
        self.stop_timeout = stop_timeout
        self._factory = factory
        self.workers: Dict[int, _WorkerProtocol] = {}
        self._restarts: Dict[int, Any] = {}
        self._failures: Dict[int, int] = {}
        self._started: Dict[int, float] = {}
        self._covering: Dict[int, List[Any]] = {}  # ports the parent serves for a dead worker
        self._stopping = False

    def worker_argv(self) -> List[str]:
        """The worker command line, with fds 3, 4, ... for the ports in order."""
        argv = list(self._argv)
        position = argv.index("smtpsrv") + 1
        adopt = ["--worker"]
        for offset, port in enumerate(self.ports):
            adopt.append(f"--adopt={3 + offset}:{_FAMILY_NAMES[port.family]}")
        return argv[:position] + adopt + argv[position:]

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for index in range(1, self.count + 1):
            self._reactor.callWhenRunning(self._spawn, index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        self._uncover(index)
        self._started[index] = self._reactor.seconds()
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for offset, port in enumerate(self.ports):
            child_fds[3 + offset] = port.socket_for(index).fileno()
        protocol = _WorkerProtocol(self, index)
        self.workers[index] = protocol
        argv = self.worker_argv()
        self._reactor.spawnProcess(protocol, argv[0], argv, env=self._env, childFDs=child_fds)

    def _worker_ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if self.workers.get(protocol.index) is protocol:
            del self.workers[protocol.index]
        if self._stopping:
            log.info("worker {index} (pid {worker_pid}) stopped", index=protocol.index, worker_pid=protocol.pid)
            return
        index = protocol.index
        ran = self._reactor.seconds() - self._started.get(index, 0.0)
        failures = 1 if ran >= self.healthy_after else self._failures.get(index, 0) + 1
        self._failures[index] = failures
        delay = min(self.restart_delay * 2 ** (failures - 1), self.max_restart_delay)
        log.error(
            "worker {index} (pid {worker_pid}) exited unexpectedly ({reason}); restarting in {delay} s",
            index=index, worker_pid=protocol.pid, reason=reason.getErrorMessage(), delay=delay,
        )
        self._cover(index)
        self._restarts[index] = self._reactor.callLater(delay, self._spawn, index)

    def _cover(self, index: int) -> None:
        """Serve a dead worker's sockets from the parent until it is back."""
        if self._factory is None or index in self._covering:
            return
        ports = []
        for port in self.ports:
            sock = port.socket_for(index)
            try:
                ports.append(self._reactor.adoptStreamPort(sock.fileno(), port.family, self._factory))
            except Exception:
                log.failure("cannot serve worker {index}'s socket from the parent", index=index)
        self._covering[index] = ports

    def _uncover(self, index: int) -> None:
        for listening in self._covering.pop(index, []):
            listening.stopListening()  # closes the parent's duplicate only

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        for index in list(self._covering):
            self._uncover(index)
        for port in self.ports:
            port.close()  # the workers keep their own copies
        waiting = [worker.ended for worker in self.workers.values()]
        for worker in list(self.workers.values()):
            self._signal(worker, "TERM")
        if not waiting:
            return succeed(None)
        killer = self._reactor.callLater(self.stop_timeout, self._kill_all)

        def stopped(_: object) -> None:
            if killer.active():
                killer.cancel()

        return DeferredList(waiting).addCallback(stopped)

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            log.warn("worker {worker_pid} did not stop in time: killing it", worker_pid=worker.pid)
            self._signal(worker, "KILL")

    @staticmethod
    def _signal(worker: _WorkerProtocol, signal: str) -> None:
        try:
            worker.transport.signalProcess(signal)
        except (ierror.ProcessExitedAlready, OSError):
            pass


def _twist_command(reactor: Any) -> List[str]:
    """How to start a worker: C{python -m twisted} (C{twist}) logging JSON to stdout."""
    argv = [sys.executable, "-m", "twisted", "--log-format=json", "--log-file=-"]
    name = _REACTOR_NAMES.get(type(reactor).__name__)
    if name is not None:
        argv.append(f"--reactor={name}")
    return argv + ["smtpsrv"]


# ---------------------------------------------------------------------------
# The service maker


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the C{twistd smtpsrv} service from parsed L{Options}.

    @param reactor: for tests; twistd's reactor by default.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from txsmtpsrv._server import SMTPServer

    delivery: Any
    if options["mbox"]:
        delivery = MboxDelivery(options["mbox"], options["name"])
    else:
        delivery = MaildirDelivery(options["maildir"], options["name"])
    checkers = options.credentialCheckers()
    authenticator = _authenticator(checkers) if checkers else None
    user_hooks = _instantiate_hooks(options.hooksObject) if options.hooksObject is not None else None
    hooks, resolver = _authres.wrap(options, LayeredHooks(user_hooks, authenticator, delivery), reactor)
    try:
        server = SMTPServer(hooks, reactor=reactor, resolver=resolver, **_server_kwargs(options))
        if not server.options.hide_starttls:
            # Load the certificates now, as SMTPServer.listen() would: a bad
            # --tls-key/--tls-cert stops twistd at start-up, not at the first
            # STARTTLS (without them the server makes a development certificate).
            server.load_tls()
    except (TypeError, ValueError) as e:  # TLSConfigError is a ValueError
        raise usage.UsageError(str(e)) from None
    delivery.hostname = server.options.name  # Received headers name us as the greeting does
    service = SMTPService(server, checkers)
    protocol = "LMTP" if options["lmtp"] else "SMTP"

    endpoints: List[Tuple[IStreamServerEndpoint, str]] = []
    for fd, family in options["adopt"]:
        endpoints.append((AdoptedStreamServerEndpoint(reactor, fd, family), f"adopted fd {fd}"))
    if options["worker"]:
        _ParentWatch(reactor).setServiceParent(service)
    elif isinstance(delivery, MaildirDelivery):  # one process cleans tmp/, not every worker
        _MaildirCleaning(delivery, reactor).setServiceParent(service)

    workers = options["workers"]
    if workers > 1:
        shared: List[_SharedPort] = []
        try:
            for description in options["listen"]:
                shared.append(_SharedPort.bind(description, workers))
        except usage.UsageError:
            for port in shared:
                port.close()
            raise
        for port in shared:
            own = os.dup(port.socket_for(0).fileno())
            endpoints.append((AdoptedStreamServerEndpoint(reactor, own, port.family), port.description))
        argv = _twist_command(reactor) + _worker_options(options)
        pool = _WorkerPool(reactor, shared, workers - 1, argv, _worker_environment(),
                           stop_timeout=server.options.close_timeout + 10.0, factory=server)
        pool.setServiceParent(service)
    else:
        for description in options["listen"]:
            implicit_tls = description.startswith(_SMTPS)
            try:
                endpoint = serverFromString(reactor, description[len(_SMTPS):] if implicit_tls else description)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--listen {description}: {e}") from None
            if implicit_tls:  # the server's own TLS: its certificates, SNI, reloads
                endpoint = wrapServerTLS(server.tls, endpoint)
            endpoints.append((endpoint, description))

    for endpoint, description in endpoints:
        listener = StreamServerEndpointService(_AnnouncingEndpoint(endpoint, description, protocol), server)
        # Fail `twistd` at start-up when a port can't be bound, as strports.service() does.
        listener._raiseSynchronously = True
        listener.setServiceParent(service)
    return service
