# -*- test-case-name: tests.test_cli -*-
"""
The command line of C{twistd smtpsrv}: parsing and validating every option
at start-up, so that a mistake is one line naming the option and the value,
never a traceback, a help dump, or a server that starts and then answers
every client with an error.

The L{ServerOptions} limits are options of the same names (C{max_recipients}
is C{--max-recipients}); L{worker_arguments} turns parsed options back into
a command line for the C{--workers} processes.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import select
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.logger import Logger
from twisted.python import usage

from . import _limitopts
from ._optcheck import (absolute, check_common, check_endpoint, check_listen, check_server_kwargs,
                        check_writable_file, checked, choice, cidrs, coerce_option, integer, seconds, text)
from ._adopted import FAMILIES
from ._authres import _tap as _authres
from ._options import ServerOptions
from ._version import __version__

__all__ = ["Options", "DEFAULT_LISTEN", "worker_arguments", "server_kwargs"]

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"

log = Logger()


#: ServerOptions fields settable from the command line as --field-name:
#: (field, coerce, help). Numbers are checked here; ServerOptions checks the rest.
LIMITS: Tuple[Tuple[str, Callable[[str], Any], str], ...] = (
    ("size", integer(0), "Largest accepted message in bytes, advertised with SIZE; 0: no limit. "
                          "[default: 33554432 (32 MiB)]"),
    ("max_clients", integer(1), "Concurrent connections (per process); more are answered 421. "
                                 "[default: 1000]"),
    ("socket_timeout", seconds, "Seconds a client may stay idle before 421 and close. [default: 60]"),
    ("close_timeout", seconds, "Seconds transactions in progress may take to finish when the server "
                                "stops. [default: 30]"),
    ("hook_timeout", seconds, "Seconds a hook (policy, delivery, auth) may take before 451. [default: 300]"),
    ("reverse_lookup_timeout", seconds, "Seconds the greeting may wait for reverse DNS. [default: 1.5]"),
    ("min_data_rate", integer(0), "Slowest accepted transfer in bytes per second; 0: off. [default: 500]"),
    ("max_command_length", integer(512), "Longest command line in bytes. [default: 12288]"),
    ("max_recipients", integer(1), "Recipients per message; more get 452. [default: 1000]"),
    ("max_unrecognized_commands", integer(0), "Unknown commands before 421 and close; 0: no limit. "
                                               "[default: 10]"),
    ("max_allowed_unauthenticated_commands", integer(0), "With --auth: commands before AUTH, then 421; "
                                                          "0: no limit. [default: 10]"),
    ("max_auth_failures", integer(0), "Failed AUTH attempts before 421 and close; 0: no limit. [default: 5]"),
    ("bare_line_endings", choice("reject", "accept"), "What a bare CR or LF in a message does: reject "
                                                       "(550, against SMTP smuggling) or accept. "
                                                       "[default: reject]"),
    ("disabled_commands", text, "Commands answered 502 as if not implemented, comma separated "
                                 "(e.g. VRFY,EXPN)."),
    ("ignored_hosts", text, "Networks whose connections are not logged (health checks), comma "
                             "separated (e.g. 10.0.0.5,192.0.2.0/24)."),
    ("helo_response", text, "First line of the EHLO/HELO reply; fields {name}, {client_hostname}, "
                             "{remote_address}, {helo}."),
    ("auth_methods", text, "SASL mechanisms offered with --auth, comma separated (PLAIN, LOGIN, "
                            "CRAM-MD5, XOAUTH2). [default: PLAIN,LOGIN]"),
)
# Issue 12's abuse limits (their daemon defaults: _limitopts.apply_defaults).
LIMITS += tuple((field, coerce, doc) for _, field, coerce, _, doc in _limitopts.LIMIT_FLAGS)
_LIMIT_NAMES = {field.replace("_", "-"): (field, coerce) for field, coerce, _ in LIMITS}

#: Flags passed through to ServerOptions as True when given.
FLAGS = (
    ("lmtp", "lmtp"),
    ("auth-optional", "auth_optional"),
    ("allow-insecure-auth", "allow_insecure_auth"),
    ("no-reverse-lookup", "disable_reverse_lookup"),
    ("needs-upgrade", "needs_upgrade"),
    ("hide-starttls", "hide_starttls"),
)
_PLAIN = (("name", "name"), ("banner", "banner"))

#: Options a worker must not be given again (the parent handles them) or gets in another form.
_NOT_FORWARDED = frozenset({"listen", "adopt", "workers", "worker", "log-json",
                            "verify", "authserv-id", "verify-reject"})  # _authres.worker_arguments


class Options(usage.Options, AuthOptionMixin):
    """Command line of C{twistd smtpsrv}."""

    synopsis = "[options]"
    longdesc = (
        "Receive mail over SMTP (or LMTP with --lmtp) and store it in a Maildir "
        "(default ./Maildir) or an mbox file. Repeat --listen for several endpoints; "
        "use --hooks to add policy or your own delivery, --auth to offer SMTP AUTH "
        "against twisted.cred checkers, --workers to use several processes and "
        "--metrics to serve Prometheus metrics. On Linux it runs the smtpsrv-epoll "
        "reactor unless one is chosen (twistd --reactor=epoll smtpsrv for Twisted's own), "
        "or with a warning Twisted's default where Twisted's code differs from the code it was checked against."
    )

    optFlags: List[List[Any]] = [
        ["lmtp", None, "Speak LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient."],
        ["auth-optional", None, "With --auth, still accept mail from clients that do not authenticate."],
        ["allow-insecure-auth", None, "With --auth, offer AUTH also on connections without TLS."],
        ["no-reverse-lookup", None, "Don't look up clients' host names in reverse DNS "
                                    "(Received headers then say 'unknown')."],
        ["needs-upgrade", None, "Refuse MAIL and AUTH until the client has used STARTTLS."],
        ["hide-starttls", None, "Don't offer STARTTLS."],
        ["no-tls-tickets", None, "Don't issue TLS session tickets (clients then never resume a TLS session)."],
        ["worker", None, "Internal (used by --workers)."],  # hidden from --help, see getUsage
    ]

    optParameters = [
        ["maildir", None, None, "Deliver into this Maildir (cur/new/tmp are created if missing). "
                                "[default: ./Maildir]"],
        ["mbox", None, None, "Append to this mbox file (mboxrd quoting, fcntl locking) instead "
                             "of a Maildir; its directory must exist."],
        ["hooks", None, None, "Hooks object as 'package.module:attribute' (or a module): a class is "
                              "instantiated; its hooks take precedence over --auth and the delivery."],
        ["name", None, None, "Host name for the greeting, the EHLO reply and Received headers. "
                             "[default: this machine's host name]"],
        ["banner", None, None, "Text after the host name in the 220 greeting."],
        ["tls-key", None, None, "PEM private key for STARTTLS (may also hold the certificate)."],
        ["tls-cert", None, None, "PEM certificate (and chain) for STARTTLS. Without --tls-key/--tls-cert, "
                                 "STARTTLS uses a self-signed development certificate."],
        ["tls-key2", None, None, "A second private key, of another type (e.g. ECDSA next to an RSA --tls-key), "
                                 "for --tls-cert2."],
        ["tls-cert2", None, None, "A second certificate served side by side with --tls-cert: clients that "
                                  "support ECDSA get the ECDSA one (a cheaper handshake), others the RSA one."],
        ["tls-ticket-secret", None, None, "File holding at least 32 random bytes the TLS session ticket keys are "
                                          "derived from; give servers the same file to let clients resume across "
                                          "them. [default: a random secret shared by the --workers processes]"],
        ["tls-ticket-lifetime", None, 3600.0, "Seconds each session ticket key issues tickets; the previous key "
                                              "still decrypts, so a ticket is accepted for one to two lifetimes.",
         checked("tls-ticket-lifetime", seconds)],
        ["xclient-trusted", None, None, "Accept Postfix's XCLIENT and XFORWARD from these networks "
                                        "only, comma separated CIDRs (e.g. 127.0.0.1/32,10.0.0.0/8); "
                                        "without it both are refused from every peer.",
         checked("xclient-trusted", cidrs)],
        ["workers", None, 1, "Number of processes serving the --listen ports (tcp:, tcp6:, unix:, also "
                             "behind smtps: and smtpproxy:); the twistd process is one of them.",
         checked("workers", integer(1))],
        ["metrics", None, None, "Serve Prometheus metrics over HTTP on this endpoint, e.g. "
                                "tcp:9101:interface=127.0.0.1 (needs prometheus_client)."],
        ["log-json", None, None, "Also write the log as JSON lines (one event per line) to this file, "
                                 "reopened on SIGUSR1 or SIGHUP (log rotation); '-' is standard output."],
    ] + [[name.replace("_", "-"), None, None, doc] for name, _, doc in LIMITS] + _authres.OPT_PARAMETERS

    compData = usage.Completions(
        optActions={
            "maildir": usage.CompleteDirs(),
            "mbox": usage.CompleteFiles(),
            "tls-key": usage.CompleteFiles("*.pem"),
            "tls-cert": usage.CompleteFiles("*.pem"),
            "tls-ticket-secret": usage.CompleteFiles(),
            "tls-key2": usage.CompleteFiles("*.pem"),
            "tls-cert2": usage.CompleteFiles("*.pem"),
        }
    )

    #: SMTP AUTH hands checkers username/password or CRAM-MD5 credentials.
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self["listen"] = []
        self["adopt"] = []
        self["auth"] = []
        self.hooksObject: Any = None
        #: The working directory C{--hooks} was imported in (searched last), for the workers.
        self.hooksDirectory: Optional[str] = None
        #: L{ServerOptions} keyword arguments, checked by L{postOptions}.
        self.serverKwargs: Dict[str, Any] = {}

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """
        Parse; run by twistd (C{self.parent} set), a usage error exits with one
        line on standard error and status 1 instead of twistd's help dump.

        Under twistd, install smtpsrv-epoll first unless a reactor is installed
        already (C{--reactor} installs one while twistd parses its own
        options): otherwise the first import of C{twisted.internet.reactor}
        installs Twisted's default, in a C{--hooks} or C{--auth} module while
        we parse, or when the service is made. C{twist} (and so each
        C{--workers} process) installs the reactor it is told, or its
        default, itself.
        """
        from twisted.application.app import ServerOptions as TwistdOptions

        # select.epoll first: _reactor imports Twisted's epollreactor, which fails without it (macOS).
        if isinstance(getattr(self, "parent", None), TwistdOptions) and hasattr(select, "epoll"):
            from ._reactor import SHORT_NAME, install_unless_chosen

            refused = install_unless_chosen()
            if refused is not None:
                log.warn("running Twisted's default reactor, not {name}: {reason}", name=SHORT_NAME, reason=refused)
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        except usage.UsageError as e:
            if getattr(self, "parent", None) is not None:
                raise SystemExit(f"twistd smtpsrv: error: {e}") from None
            raise

    def getUsage(self, width: Optional[int] = None) -> str:
        """The help, without the internal --worker flag."""
        saved = self.longOpt
        self.longOpt = [opt for opt in saved if opt != "worker"]
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = saved

    def opt_version(self) -> None:
        """Print txsmtpsrv's version and exit."""
        import twisted

        print(f"txsmtpsrv {__version__} (Twisted {twisted.__version__}, Python {sys.version.split()[0]})")
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        # One line: usage.Options shows docstrings verbatim.
        """Endpoint to listen on, e.g. tcp:25, tcp6:25:interface=\\:\\:1, unix:/run/lmtp.sock:mode=660, smtpproxy:trusted=10.0.0.0/8:tcp:25 (behind HAProxy), or smtps:tcp:465 for implicit TLS with --tls-key/--tls-cert (or the development certificate); repeat for several. [default: tcp:2525:interface=127.0.0.1]"""  # noqa: E501
        check_listen(description)
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_adopt(self, spec: str) -> None:
        """Serve a listening socket inherited on file descriptor FD, given as FD:FAMILY with FAMILY one of INET, INET6, UNIX (used by --workers, and by supervisors that pass sockets); repeatable."""  # noqa: E501
        fd, _, family = spec.partition(":")
        try:
            self["adopt"].append((int(fd), FAMILIES[family.upper() or "INET"]))
        except (ValueError, KeyError):
            raise usage.UsageError(f"--adopt wants FD:INET, FD:INET6 or FD:UNIX, not {spec!r}") from None

    def opt_nameserver(self, server: str) -> None:
        """DNS server HOST[:PORT] for --verify checks and reverse lookups instead of /etc/resolv.conf; repeatable."""
        _authres.opt_nameserver(self, server)

    def opt_auth(self, description: str) -> None:
        """Offer SMTP AUTH, checking credentials with a twisted.cred checker, e.g. --auth file:/etc/smtp.passwd (lines user:password); see --help-auth. Clients must then authenticate to send mail unless --auth-optional."""  # noqa: E501
        kind, _, argument = description.partition(":")
        if kind == "file":
            # Absolute now, as --maildir: after --rundir's chdir, SIGHUP re-reads it and workers start there.
            argument = absolute(argument)
            description = f"file:{argument}"
            if not (os.path.isfile(argument) and os.access(argument, os.R_OK)):
                why = "no such file" if not os.path.exists(argument) else "not a readable file"
                raise usage.UsageError(f"--auth {description}: {why}")
        try:
            checker = _limitopts.file_checker(description)  # file: is read once, into memory
            if checker is None:
                AuthOptionMixin.opt_auth(self, description)
            else:
                self.addChecker(checker)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        except usage.UsageError as e:
            raise usage.UsageError(f"--auth {description}: {e}") from None
        _one_checker_per_kind(self, description)
        self["auth"].append(description)

    def postOptions(self) -> None:
        check_common(self, DEFAULT_LISTEN, "Maildir", create_maildir=not self["worker"])
        if self["tls-ticket-secret"]:
            self["tls-ticket-secret"] = absolute(self["tls-ticket-secret"])
            _check_ticket_secret(self["tls-ticket-secret"], self["tls-ticket-lifetime"])
        if self["metrics"]:
            check_endpoint("--metrics", self["metrics"])
            # find_spec, not import: --workers must set PROMETHEUS_MULTIPROC_DIR before the import.
            if importlib.util.find_spec("prometheus_client") is None:
                raise usage.UsageError("--metrics needs the prometheus_client package "
                                       "(pip install 'txsmtpsrv[metrics]')")
        if self["log-json"] and self["log-json"] != "-":
            self["log-json"] = absolute(self["log-json"])
            check_writable_file("--log-json", self["log-json"])
        if self["workers"] > 1:
            if self["adopt"] or self["worker"]:
                raise usage.UsageError("--workers cannot be combined with --adopt or --worker")
            from ._sharedports import check_shareable

            for description in self["listen"]:
                check_shareable(description)  # a UsageError saying why not
        for option, (_, coerce) in _LIMIT_NAMES.items():
            if isinstance(self[option], str):
                self[option] = coerce_option(option, coerce, self[option])
        if self["max-clients"] is None:
            self["max-clients"] = 1000  # a daemon's default; the library's is no limit
        _limitopts.apply_defaults(self, self["listen"], bool(self["adopt"]))
        self.serverKwargs = server_kwargs(self)
        check_server_kwargs(self, self.serverKwargs)
        if self["hooks"]:
            self.hooksObject = _load_hooks_target(self["hooks"])
            self.hooksDirectory = os.getcwd()
        _authres.post_options(self)

    def credentialCheckers(self) -> List[ICredentialsChecker]:
        """The checkers given with --auth, in order."""
        return list(self.get("credCheckers", []))


def _one_checker_per_kind(options: Options, description: str) -> None:
    """
    The portal asks one checker per kind of credentials, the last registered:
    a second --auth for user names and passwords would silently shut out the
    first one's users, so it is refused.
    """
    *earlier, new = options["credCheckers"]
    kinds = set(new.credentialInterfaces) & set(Options.supportedInterfaces)  # the ones SMTP AUTH uses
    for checker, given in zip(earlier, options["auth"]):
        if kinds & set(checker.credentialInterfaces):
            raise usage.UsageError(f"--auth {given} and --auth {description} check the same kind of "
                                   f"credentials, and only one of them would be asked: give one")


def server_kwargs(options: Any) -> Dict[str, Any]:
    """Keyword arguments for L{SMTPServer} (L{ServerOptions} fields) from parsed options."""
    kwargs: Dict[str, Any] = {}
    for option, field in _PLAIN:
        if options[option] is not None:
            kwargs[field] = options[option]
    for option, (field, coerce) in _LIMIT_NAMES.items():
        if options[option] is not None:
            kwargs[field] = options[option]
    for option, field in FLAGS:
        if options[option]:
            kwargs[field] = True
    if options["xclient-trusted"]:
        kwargs.update(use_xclient=True, use_xforward=True, xclient_trusted=options["xclient-trusted"])
    tls = {field: options[option] for option, field in (("tls-key", "key"), ("tls-cert", "cert"))
           if options[option]}
    if options["tls-key2"] or options["tls-cert2"]:
        tls["additional_certificates"] = [(options["tls-key2"], options["tls-cert2"])]
    if options["no-tls-tickets"]:
        tls["session_tickets"] = False
    else:
        if options["tls-ticket-secret"]:
            tls["ticket_secret"] = options["tls-ticket-secret"]
        if options["tls-ticket-lifetime"] != 3600.0:
            tls["ticket_lifetime"] = options["tls-ticket-lifetime"]
    if tls:
        kwargs["tls"] = tls  # ServerOptions turns the dict into a TLSConfig
    return kwargs


def worker_arguments(options: Options, **override: Any) -> List[str]:
    """
    The command line that gives a worker the same configuration: every
    option given (new options are forwarded without changes here), except
    the ones only the parent handles. C{override} replaces values.
    """
    args: List[str] = []
    for flag in options.optFlags:
        name = str(flag[0])
        if name not in _NOT_FORWARDED and options[name]:
            args.append(f"--{name}")
    for parameter in cast(List[List[Any]], options.optParameters):
        name, default = str(parameter[0]), parameter[2]
        value = override.get(name, options[name])
        if name not in _NOT_FORWARDED and value is not None and value != default:
            if isinstance(value, (tuple, list)):  # parsed from a comma separated list
                value = ",".join(value)
            args.append(f"--{name}={value}")
    args.extend(f"--auth={description}" for description in options["auth"])
    return args + _authres.worker_arguments(options)


# ---------------------------------------------------------------------------
# Start-up checks of files and directories


def _check_ticket_secret(path: str, lifetime: float) -> None:
    """Read the ticket secret now: a missing or short file is a usage error."""
    from ._tls import TLSConfig
    from ._tlstickets import keys_for

    try:
        keys_for(TLSConfig(ticket_secret=path, ticket_lifetime=lifetime), None)
    except ValueError as e:  # TLSConfigError
        raise usage.UsageError(f"--tls-ticket-secret: {e}") from None
    mode = os.stat(path).st_mode
    if mode & 0o077:
        log.warn("--tls-ticket-secret {path} can be read by other users (mode {mode:o}); "
                 "whoever reads it can decrypt resumed TLS sessions", path=path, mode=mode & 0o777)


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


def limit_fields() -> List[str]:
    """The numeric L{ServerOptions} fields (the limits), for the completeness test."""
    return [f.name for f in dataclasses.fields(ServerOptions)
            if str(f.type).replace("Optional[", "").rstrip("]") in ("int", "float")]
