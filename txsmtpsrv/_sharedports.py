# -*- test-case-name: tests.test_workers_wrapped,tests.test_tap_options,tests.test_tap_workers -*-
"""
C{--listen} descriptions under C{--workers}: which can be shared, and the
listening sockets the parent binds for all processes (L{SharedPort}).

A module of its own, not part of the worker supervision
(L{txsmtpsrv._workers}), because the command line (L{txsmtpsrv._cli}:
refusing what cannot be shared), the single-process daemon and C{python -m
txsmtpsrv} (L{listen_endpoint}) read C{--listen} strings with it too and
need none of the process handling.

The parent binds every socket while still privileged: for C{tcp:} and
C{tcp6:} one per process with C{SO_REUSEPORT} (the kernel spreads new
connections across them; where it does not exist, one shared by all), for
C{unix:} one shared by all. C{smtps:} and C{smtpproxy:} wrappers are split
off (L{split_wrappers}) so that every process builds the same wrappers
around its copy from the C{adopted:FD:FAMILY} endpoint string
(L{txsmtpsrv._adopted}); other endpoints are refused, saying so.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from ._adopted import FAMILIES  # --adopt FD:FAMILY names, as in adopted: strings
from ._tlsimplicit import wrap_server_tls  # smtps: on our TLS layer where it is plain TCP

__all__ = ["SMTPS", "SharedPort", "check_shareable", "listen_endpoint", "shareable_address", "split_wrappers"]

#: A --listen prefix for implicit TLS (port 465 style) with the server's own certificates.
SMTPS = "smtps:"

_FAMILY_NAMES: Dict[int, str] = {v: k for k, v in FAMILIES.items()}


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


def shareable_address(description: str) -> Tuple[int, str, int, int]:
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
        raise usage.UsageError(
            f"--workers: cannot share --listen {description}: the parent binds the sockets and hands "
            f"them to the workers, which it can do for tcp:, tcp6: and unix: endpoints (also behind "
            f"smtps: and smtpproxy:), not for {kind or 'this'}: ones")
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


#: The smtpproxy: options (see ProxyEndpointParser); the rest belongs to the inner endpoint.
_PROXY_KEYS = ("trusted", "timeout", "untrusted", "maxHeaderSize")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def split_wrappers(description: str) -> Tuple[str, str]:
    """
    C{(prefix, inner)}: the C{smtps:} and C{smtpproxy:...:} wrappers of a
    --listen description, and the endpoint they wrap, e.g.
    C{("smtpproxy:trusted=10.0.0.0/8:", "tcp:25")}.
    """
    prefix, rest = "", description
    if rest.startswith(SMTPS):
        prefix, rest = SMTPS, rest[len(SMTPS):]
    if rest.split(":", 1)[0].lower() == "smtpproxy":
        args, kwargs = _endpoint_arguments(rest)
        proxy = {key: kwargs.pop(key) for key in _PROXY_KEYS if key in kwargs}
        prefix += "smtpproxy:" + "".join(f"{key}={_escape(value)}:" for key, value in proxy.items())
        rest = ":".join([_escape(a) for a in args[1:]] + [f"{k}={_escape(v)}" for k, v in kwargs.items()])
    return prefix, rest


def _unix_address(description: str) -> Tuple[str, int, int]:
    """C{(path, mode, backlog)} of a C{unix:} endpoint string (positional arguments in Twisted's order)."""
    args, kwargs = _endpoint_arguments(description)
    names = ["address", "mode", "backlog", "lockfile"]
    values = {"backlog": "50", "mode": "666", "lockfile": "0"}
    if len(args) - 1 > len(names) or set(kwargs) - set(names) - {"wantPID"}:
        raise usage.UsageError(f"--listen {description}: unexpected arguments for --workers")
    values.update(zip(names, args[1:]))
    values.update(kwargs)
    path = values.get("address", "")
    if not path:
        raise usage.UsageError(f"--listen {description}: unix: needs a socket path")
    try:
        return path, int(values["mode"], 8), int(values["backlog"])
    except ValueError:
        raise usage.UsageError(f"--listen {description}: mode must be octal, backlog a number") from None


def check_shareable(description: str) -> None:
    """Raise C{usage.UsageError} saying why --workers cannot share C{description}."""
    _, inner = split_wrappers(description)
    if inner.split(":", 1)[0].lower() == "unix":
        _unix_address(inner)
    else:
        shareable_address(inner)


def listen_endpoint(reactor: Any, description: str, tls: Callable[[], Any]) -> Any:
    """
    The endpoint for a --listen description: C{smtps:} wraps the rest in the
    server's own TLS (C{tls()}: its reloadable certificates), anything else
    is an ordinary endpoint string.
    """
    implicit_tls = description.startswith(SMTPS)
    try:
        endpoint = serverFromString(reactor, description[len(SMTPS):] if implicit_tls else description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"--listen {description}: {e}") from None
    return wrap_server_tls(tls(), endpoint) if implicit_tls else endpoint


def _bind_unix(description: str, path: str, mode: int, backlog: int) -> socket.socket:
    if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a stale socket file
        else:
            raise usage.UsageError(f"--listen {description}: {path} is in use by another server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise usage.UsageError(f"--listen {description}: {e}") from None
    return sock


class SharedPort:
    """
    The listening sockets of one --listen address for all processes: one
    per process with C{SO_REUSEPORT} (TCP), else one shared by all.

    @ivar prefix: the wrappers (C{smtps:}, C{smtpproxy:...:}) every process
        puts around its socket, or C{""}.
    @ivar path: the socket file of a C{unix:} listener (removed at close).
    """

    def __init__(self, description: str, family: int, sockets: List[socket.socket],
                 prefix: str = "", path: Optional[str] = None) -> None:
        self.description = description
        self.family = family
        self.sockets = sockets
        self.prefix = prefix
        self.path = path

    @property
    def family_name(self) -> str:
        """The address family as C{--adopt FD:FAMILY} and C{adopted:} strings name it."""
        return _FAMILY_NAMES[self.family]

    def endpoint_string(self, fd: int) -> str:
        """How a process that holds this port's socket on C{fd} listens on it."""
        return f"{self.prefix}adopted:{fd}:{self.family_name}"

    @classmethod
    def bind(cls, description: str, processes: int) -> "SharedPort":
        prefix, inner = split_wrappers(description)
        if inner.split(":", 1)[0].lower() == "unix":
            path, mode, backlog = _unix_address(inner)
            return cls(description, socket.AF_UNIX, [_bind_unix(description, path, mode, backlog)], prefix,
                       os.path.abspath(path))  # removed after --rundir's chdir
        family, interface, port, backlog = shareable_address(inner)
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
        return cls(description, family, sockets, prefix)

    def socket_for(self, index: int) -> socket.socket:
        """The socket process C{index} (0: the parent) serves."""
        return self.sockets[index % len(self.sockets)]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.path is not None and os.path.exists(self.path):
            try:
                os.unlink(self.path)
            except OSError:
                pass
