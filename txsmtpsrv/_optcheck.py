# -*- test-case-name: tests.test_optcheck -*-
"""
Checking command-line option values, shared by C{twistd smtpsrv} (L{_cli},
with the abuse limits of L{_limitopts}) and C{python -m txsmtpsrv}
(L{_sink}).

One validator per kind of value and one error text per mistake, always
C{--option: what is wrong with the value} (or C{--option VALUE: why} for
endpoints and paths, where the value is the subject), so the same bad value
reads the same from either command. Validators raise C{ValueError} with the
problem; L{checked} and L{coerce_option} put the option's name in front.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Callable, Collection, FrozenSet, Optional, Tuple, TypeVar

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from ._ipaddr import parse_network
from ._sharedports import SMTPS

__all__ = ["integer", "seconds", "seconds_upto", "choice", "text", "cidrs", "checked", "coerce_option",
           "option_error", "server_options_error", "server_option_names", "check_server_kwargs", "check_endpoint",
           "check_listen", "check_tls_files", "check_maildir", "check_mbox", "check_writable_file", "probe",
           "absolute", "check_common"]

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Values: each raises ValueError saying what is wrong (without the option)


def integer(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An integer C{>= minimum} (and C{<= maximum}); anything else, "1.5" and "ten" included, is refused."""
    wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not {wanted}") from None
        if number < minimum or (maximum is not None and number > maximum):
            raise ValueError(f"{value!r} is not {wanted}")
        return number
    return coerce


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")  # refused by every range check below


def seconds(value: str) -> float:
    """A positive, finite number of seconds (a timeout, a window, a lifetime)."""
    number = _number(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return number


def seconds_upto(maximum: float) -> Callable[[str], float]:
    """A number of seconds from 0 to C{maximum} (a delay, which may be off)."""
    def coerce(value: str) -> float:
        number = _number(value)
        if not 0 <= number <= maximum:
            raise ValueError(f"{value!r} is not a number of seconds from 0 to {maximum:g}")
        return number
    return coerce


def choice(*choices: str) -> Callable[[str], str]:
    """One of C{choices}, spelt exactly."""
    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return coerce


def text(value: str) -> str:
    """Any text (L{ServerOptions} checks it further)."""
    return value


def cidrs(value: str) -> Tuple[str, ...]:
    """Comma separated networks (C{--xclient-trusted}), each checked now."""
    networks = tuple(part.strip() for part in value.split(",") if part.strip())
    if not networks:
        raise ValueError(f"{value!r} names no network")
    for network in networks:
        parse_network(network)  # as ServerOptions will: the error names the flag now
    return networks


# ---------------------------------------------------------------------------
# Naming the option


def option_error(option: str, problem: object) -> str:
    """The one error text: C{--option: problem}."""
    return f"--{option}: {problem}"


def coerce_option(option: str, coerce: Callable[[str], T], value: str) -> T:
    """C{coerce(value)}, a mistake being a C{UsageError} that names C{--option}."""
    try:
        return coerce(value)
    except ValueError as e:
        raise usage.UsageError(option_error(option, e)) from None


def checked(option: str, coerce: Callable[[str], T]) -> Callable[[str], T]:
    """
    C{coerce} for C{usage.Options.optParameters}: its C{UsageError} names
    the option (Twisted's own says only "Parameter type enforcement failed").
    """
    def check(value: str) -> T:
        return coerce_option(option, coerce, value)
    check.__name__ = getattr(coerce, "__name__", "check")
    return check


def server_options_error(message: str, options: Collection[str]) -> str:
    """
    A L{ServerOptions} error about one of C{options} ("max_recipients must
    ...", "auth_methods: ...") in command-line terms ("--max-recipients must
    ..."); other messages unchanged.
    """
    field, _, rest = message.partition(" ")
    name = field.rstrip(":").replace("_", "-")
    if name in options:
        return f"--{name}{':' if field.endswith(':') else ''} {rest}"
    return message


def server_option_names(options: Any) -> FrozenSet[str]:
    """
    The options of a parsed C{usage.Options} that are L{ServerOptions} fields
    under their command-line names (C{--max-clients} is C{max_clients}):
    derived from the option definitions, so that a new option's errors are
    reported under its name without a list to keep up to date.
    """
    from ._options import ServerOptions

    fields = {f.name for f in dataclasses.fields(ServerOptions)}
    return frozenset(name for name in (opt.rstrip("=") for opt in options.longOpt)
                     if name.replace("-", "_") in fields)


def check_server_kwargs(options: Any, kwargs: Any) -> None:
    """Build L{ServerOptions} from C{kwargs} now: a bad value is a usage error naming its option."""
    from ._options import ServerOptions

    try:
        ServerOptions.build(**kwargs)
    except (TypeError, ValueError) as e:
        raise usage.UsageError(server_options_error(str(e), server_option_names(options))) from None


# ---------------------------------------------------------------------------
# Endpoints and files: checked at start-up, so a mistake is one line


def check_common(options: Any, default_listen: str, default_maildir: Optional[str] = None,
                 create_maildir: bool = True) -> None:
    """
    The start-up checks C{twistd smtpsrv} and C{python -m txsmtpsrv} share,
    on their parsed options (a C{usage.Options}, a dict): one delivery of
    C{--maildir} (else C{default_maildir}, if any) and C{--mbox}, created or
    checked now (the Maildir only if C{create_maildir}); the TLS files made
    absolute and loaded; C{default_listen} when no C{--listen} (or C{--adopt})
    is given. Paths become absolute: the daemon may change directory.
    """
    if options["maildir"] and options["mbox"]:
        raise usage.UsageError("--maildir and --mbox exclude each other: choose one delivery")
    maildir: Optional[str] = options["maildir"] or default_maildir
    if options["mbox"]:
        options["mbox"] = absolute(options["mbox"])
        check_mbox(options["mbox"])
    elif maildir:
        options["maildir"] = absolute(maildir)
        if create_maildir:
            check_maildir(options["maildir"])
    for key in ("tls-key", "tls-cert", "tls-key2", "tls-cert2"):
        if options.get(key):
            options[key] = absolute(options[key])
    key2, cert2 = options.get("tls-key2"), options.get("tls-cert2")
    if (key2 or cert2) and not (options["tls-key"] or options["tls-cert"]):
        raise usage.UsageError("--tls-key2/--tls-cert2 need --tls-key/--tls-cert")
    if options["tls-key"] or options["tls-cert"]:
        check_tls_files(options["tls-key"], options["tls-cert"], key2, cert2)
    if not options["listen"] and not options.get("adopt"):
        options["listen"] = [default_listen]


class _NoReactor:
    """Stands in for the reactor when endpoint strings are checked at parse time."""


def check_endpoint(option: str, description: str, given: Optional[str] = None) -> None:
    """
    Parse an endpoint string now (without listening): a mistake is a usage
    error naming the option and the value as C{given} (default: C{description}).
    """
    given = description if given is None else given
    try:
        serverFromString(_NoReactor(), description)
    except Exception as e:  # endpoint parsers raise ValueError, KeyError, TypeError, ...
        raise usage.UsageError(f"{option} {given}: {e}") from None
    if description.split(":", 1)[0].lower() == "unix" and not description[5:].split(":", 1)[0]:
        raise usage.UsageError(f"{option} {given}: unix: needs a socket path")


def check_listen(description: str) -> None:
    """A C{--listen} endpoint, maybe behind C{smtps:} (checked as L{_sharedports.listen_endpoint} reads it)."""
    inner = description[len(SMTPS):] if description.startswith(SMTPS) else description
    check_endpoint("--listen", inner, description)


def check_tls_files(key: Optional[str], cert: Optional[str], key2: Optional[str] = None,
                    cert2: Optional[str] = None) -> None:
    """Load the certificates now, so a bad one is a usage error rather than a traceback."""
    from ._tls import TLSConfig, TLSContextHolder

    try:
        TLSContextHolder(TLSConfig(key=key, cert=cert, session_tickets=False,
                                   additional_certificates=[(key2, cert2)] if key2 or cert2 else []))
    except ValueError as e:  # TLSConfigError
        options = "--tls-key/--tls-cert" + ("/--tls-key2/--tls-cert2" if key2 or cert2 else "")
        raise usage.UsageError(f"{options}: {e}") from None


def probe(option: str, path: str, directory: str) -> None:
    """Create and remove a file in C{directory}: the one test of writability that root cannot fool."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".txsmtpsrv-probe-"):
            pass
    except OSError as e:
        raise usage.UsageError(f"{option} {path}: cannot write in {directory}: {e.strerror}") from None


def check_maildir(path: str) -> None:
    """Create the Maildir (and cur/new/tmp) now and write in tmp/, or refuse to start."""
    for sub in ("", "tmp", "new", "cur"):
        target = os.path.join(path, sub) if sub else path
        try:
            os.makedirs(target, 0o700, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"--maildir {path}: cannot create {target}: {e.strerror}") from None
    probe("--maildir", path, os.path.join(path, "tmp"))


def check_writable_file(option: str, path: str) -> None:
    """C{path} is a writable file, or can be created, in an existing directory (none is created)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise usage.UsageError(f"{option} {path}: directory {directory} does not exist")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise usage.UsageError(f"{option} {path}: not a regular file")
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise usage.UsageError(f"{option} {path}: cannot write: {e.strerror}") from None
    else:
        probe(option, path, directory)


def check_mbox(path: str) -> None:
    """An mbox file we can append to, in an existing directory."""
    check_writable_file("--mbox", path)


def absolute(path: str) -> str:
    """A path as given on the command line (C{~} expanded), made absolute now: the daemon may change directory."""
    return os.path.abspath(os.path.expanduser(path))
