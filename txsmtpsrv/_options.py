# -*- test-case-name: tests.test_options -*-
"""
Server options: one frozen value holding every knob, validated once.

Names follow Node's C{smtp-server} options in snake_case (C{hideSize} is
C{hide_size}); times are seconds, as everywhere in Twisted.
"""

from __future__ import annotations

import dataclasses
import difflib
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, Literal, Mapping, Optional, Tuple, TypedDict, cast

from ._ipaddr import IPNetwork, parse_networks
from ._optdoc import with_help_text

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._tls import TLSConfig

__all__ = ["ServerOptions", "ServerOptionsArgs"]

#: Commands a server can be told to refuse with C{disabled_commands}.
KNOWN_COMMANDS = frozenset(
    {"EHLO", "HELO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT",
     "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "XCLIENT", "XFORWARD"}
)


def _upper_set(value: Any) -> FrozenSet[str]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return frozenset(str(v).upper() for v in value)


@dataclass(frozen=True)
class ServerOptions:
    """
    Everything that shapes the dialogue, with safe defaults.

    Pass the fields as keyword arguments to L{txsmtpsrv.SMTPServer}. Each
    field is documented by the docstring under it, the one place to write
    it: the API reference shows those, C{help(ServerOptions)} lists them
    with their types and defaults, and the README's table is generated
    from them (L{txsmtpsrv._optdoc}).
    """

    name: str = field(default_factory=socket.gethostname)
    """
    Host name used in the greeting, the EHLO reply and C{Received} headers.
    (smtp-server: C{name})
    """
    banner: str = ""
    """Extra text after C{220 name ESMTP} in the greeting. (smtp-server: C{banner})"""
    helo_response: str = "{name} Nice to meet you, {client_hostname}"
    """
    Format of the first line of the EHLO/HELO reply; fields: C{name},
    C{client_hostname}, C{remote_address}, C{helo}. Like every reply line it
    goes out printable and at most 512 octets: controls in the client's
    C{{helo}} are escaped (C{\\x00}) and a long line is cut (C{...}).
    (smtp-server: C{heloResponse})
    """
    size: int = 32 * 1024 * 1024
    """
    Largest message in octets, advertised as C{SIZE} (0 means no limit). A
    larger message gets C{552 5.3.4} unless C{reject_oversized} is off.
    (smtp-server: C{size})
    """
    reject_oversized: bool = True
    """
    Whether the server itself refuses a message over C{size}: C{552 5.3.4}
    to a larger C{MAIL SIZE=} and after an oversized body (RFC 1870 4).
    With C{False} the application decides (smtp-server's behaviour): MAIL
    is not refused for its declared SIZE (C{address.params["SIZE"]} shows it
    to C{on_mail_from}), the whole body still streams to C{on_data} with
    C{stream.size_exceeded} set once it passes C{size}, nothing is buffered
    for it, and the hook's answer stands. C{twistd smtpsrv} always rejects.
    (smtp-server: C{rejectOversized})
    """
    hide_size: bool = False
    """Advertise C{SIZE} without the number. (smtp-server: C{hideSize})"""
    hide_pipelining: bool = False
    """Do not advertise PIPELINING (RFC 2920). (smtp-server: C{hidePIPELINING})"""
    hide_8bitmime: bool = False
    """
    Do not advertise 8BITMIME (RFC 6152); SMTPUTF8 goes with it (RFC 6531
    3.1: a server offering SMTPUTF8 must offer 8BITMIME; smtp-server's option
    keeps offering it). (smtp-server: C{hide8BITMIME})
    """
    hide_smtputf8: bool = False
    """Do not advertise SMTPUTF8 (RFC 6531). (smtp-server: C{hideSMTPUTF8})"""
    hide_enhancedstatuscodes: bool = False
    """
    Do not advertise ENHANCEDSTATUSCODES (RFC 2034) and send replies without
    the RFC 3463 code. (smtp-server: C{hideENHANCEDSTATUSCODES}, true there by
    default)
    """
    hide_chunking: bool = False
    """Do not offer CHUNKING (RFC 3030): BDAT and C{BODY=BINARYMIME}."""
    hide_dsn: bool = False
    """
    Do not offer DSN (RFC 3461): the RET, ENVID, NOTIFY and ORCPT parameters.
    (smtp-server: C{hideDSN}, true there by default)
    """
    lmtp: bool = False
    """Speak LMTP (RFC 2033): LHLO, and one reply per recipient after DATA. (smtp-server: C{lmtp})"""
    use_xclient: bool = False
    """
    Accept Postfix's XCLIENT, from C{xclient_trusted} networks only: the
    session restarts as the client it names. (smtp-server: C{useXClient})
    """
    use_xforward: bool = False
    """
    Accept Postfix's XFORWARD, from C{xclient_trusted} networks only: the
    client it names is the session's for the current transaction
    (C{session.xforward} has the attributes). (smtp-server: C{useXForward})
    """
    xclient_trusted: Tuple[IPNetwork, ...] = ()
    """
    Networks (CIDR strings, or one comma separated string) whose connections
    may send XCLIENT / XFORWARD. Empty by default: trust is never assumed,
    not even for loopback (any local process could claim to be any client,
    with any LOGIN); until networks are named both commands get
    C{550 5.7.0} and neither is advertised in the EHLO reply.
    """
    ignored_hosts: Tuple[IPNetwork, ...] = ()
    """Addresses or networks whose connections are not logged (health checks). (smtp-server: C{ignoredHosts})"""
    disable_reverse_lookup: bool = False
    """
    Skip the client's reverse DNS lookup (C{client_hostname} stays C{[ip]}).
    (smtp-server: C{disableReverseLookup})
    """
    reverse_lookup_timeout: float = 1.5
    """Hard cap in seconds on the reverse lookup: the greeting never waits longer."""
    tls: Optional[TLSConfig] = None
    """
    Certificates and TLS policy (a L{TLSConfig} or a dict of its fields);
    without one, STARTTLS uses a self-signed development certificate made
    at start-up (with a warning). (smtp-server: C{key}, C{cert}, C{ca},
    C{sniOptions}, C{SNICallback}, C{minVersion})
    """
    secure: bool = False
    """Implicit TLS (port 465 style): L{SMTPServer.listen} wraps endpoints in TLS. (smtp-server: C{secure})"""
    secured: bool = False
    """
    The connection is already encrypted by something in front of us (a TLS
    terminating proxy): sessions start secure, AUTH is offered, no STARTTLS.
    (smtp-server: C{secured})
    """
    hide_starttls: bool = False
    """Do not offer STARTTLS (RFC 3207). (smtp-server: C{hideSTARTTLS})"""
    needs_upgrade: bool = False
    """Refuse MAIL and AUTH until the connection is encrypted. (smtp-server: C{needsUpgrade})"""
    hide_requiretls: bool = False
    """
    Do not offer REQUIRETLS (RFC 8689), otherwise advertised and accepted
    only inside TLS. (smtp-server: C{hideREQUIRETLS}, true there by default)
    """
    disabled_commands: FrozenSet[str] = frozenset()
    """
    Commands answered with C{502 5.5.1} as if not implemented (names, or one
    comma separated string). (smtp-server: C{disabledCommands})
    """
    max_clients: Optional[int] = None
    """Concurrent connections; the next client gets C{421} (None: no limit). (smtp-server: C{maxClients})"""
    socket_timeout: float = 60.0
    """
    Seconds of idle time before C{421} and close; also bounds one command or
    chunk. (smtp-server: C{socketTimeout}, in milliseconds there)
    """
    close_timeout: float = 30.0
    """
    Seconds L{SMTPServer.close} lets running transactions finish.
    (smtp-server: C{closeTimeout}, in milliseconds there)
    """
    min_data_rate: int = 500
    """
    Slowest accepted transfer in bytes per second: each byte read extends the
    current deadline by C{1 / min_data_rate} s only, so a client that
    trickles bytes cannot hold a connection forever (Postfix's
    C{smtpd_min_data_rate}). 0 turns this off.
    """
    max_command_length: int = 12288
    """
    Longest command line in octets: RFC 5321 allows 512 before extensions,
    RFC 4954 asks for 12288 for AUTH initial responses (OAuth tokens).
    """
    max_recipients: int = 1000
    """Recipients per message; more get C{452 4.5.3}."""
    max_unrecognized_commands: int = 10
    """
    Unknown or malformed commands before C{421} and close (0: no limit);
    after a refused greeting every command but QUIT counts too.
    """
    hook_timeout: float = 300.0
    """Seconds a hook may take before the client gets C{451 4.3.0}."""
    bare_line_endings: Literal["reject", "accept"] = "reject"
    """
    What a CR not followed by LF, an LF not preceded by CR, or a NUL in a
    body does (DATA, and BDAT unless C{BODY=BINARYMIME}, across any read or
    chunk boundary): C{"reject"} answers C{550 5.6.0} (after the dot, or to
    the BDAT chunk) and fails the stream with L{txsmtpsrv.BareLineEnding}: this
    defeats SMTP smuggling and broken clients, and RFC 6152 / RFC 2045 2.8
    exclude NUL from 8bit data. C{"accept"} passes the bytes on unchanged.
    """
    mail_params: FrozenSet[str] = frozenset()
    """
    Extra ESMTP parameter names accepted on MAIL and passed to hooks
    (others get C{555 5.5.4}).
    """
    rcpt_params: FrozenSet[str] = frozenset()
    """
    Extra ESMTP parameter names accepted on RCPT and passed to hooks
    (others get C{555 5.5.4}).
    """
    auth_methods: Tuple[str, ...] = ("PLAIN", "LOGIN")
    """
    SASL mechanisms offered when the hooks have C{on_auth} (RFC 4954):
    PLAIN, LOGIN, CRAM-MD5, XOAUTH2. (smtp-server: C{authMethods})
    """
    auth_optional: bool = False
    """
    With an auth hook, every command but AUTH, EHLO, HELO, LHLO, NOOP,
    RSET, QUIT, STARTTLS, XCLIENT and XFORWARD is refused with
    C{530 5.7.0} until the client authenticates (RFC 4954 section 6), unless
    this is set. (smtp-server: C{authOptional})
    """
    allow_insecure_auth: bool = False
    """Offer AUTH on connections that are not encrypted. (smtp-server: C{allowInsecureAuth})"""
    auth_required_message: str = "Error: authentication required"
    """
    Text of the C{530 5.7.0} reply to commands sent before authenticating.
    (smtp-server: C{authRequiredMessage})
    """
    max_allowed_unauthenticated_commands: int = 10
    """
    When authentication is required (an auth hook, no C{auth_optional}):
    the N-th command before a successful AUTH is answered C{421 4.7.0} and
    the connection closed (0: no limit). Every recognised command counts
    (EHLO, NOOP, refused MAIL...) except AUTH; the lines of an AUTH
    exchange and unrecognised commands (see C{max_unrecognized_commands})
    never count. (smtp-server: C{maxAllowedUnauthenticatedCommands}, which
    also counts SASL response lines)
    """
    max_auth_failures: int = 5
    """
    Failed AUTH attempts per connection before C{421} and close (0: no
    limit). An AUTH refused before C{on_auth} judges it (cancelled with
    C{*}, a malformed response, an unknown mechanism, AUTH before EHLO...)
    counts too: AUTH never counts toward
    C{max_allowed_unauthenticated_commands}, and no client may loop on AUTH
    unbounded.
    """
    max_clients_per_ip: int = 0
    """
    Concurrent connections from one client address (the real client, after
    PROXY/XCLIENT); the next one gets C{421 4.7.0} at the greeting and is
    closed (0: no limit; C{twistd smtpsrv}: 20).
    """
    ipv6_prefix: int = 64
    """
    IPv6 clients are counted per network of this many bits (one site's /64
    has 2**64 addresses to rotate through); IPv4-mapped IPv6 counts as the
    IPv4 address.
    """
    max_connect_rate: int = 0
    """
    New connections from one client address per minute, refused ones
    included; more get C{421 4.7.0} at the greeting (0: no limit;
    C{twistd smtpsrv}: 120).
    """
    connection_limit_exceptions: Tuple[IPNetwork, ...] = ()
    """
    Networks (CIDR strings, or one comma separated string) whose clients
    C{max_clients_per_ip} and C{max_connect_rate} neither limit nor count:
    a monitoring probe or a load balancer's health checks connecting every
    few seconds. Everything else still applies to them (C{max_clients},
    the AUTH failure limits, timeouts, sizes). Empty by default, nothing
    exempt. (Postfix: C{smtpd_client_event_limit_exceptions}, which
    defaults to C{$mynetworks}.)
    """
    max_junk_commands: int = 100
    """
    NOOP, RSET, VRFY, EXPN and HELP allowed between delivered messages; the
    next gets C{421 4.7.0} and close (Postfix's C{smtpd_junk_command_limit};
    0: no limit).
    """
    greeting_delay: float = 0.0
    """
    Seconds the greeting is held; a client that sends anything before it
    (an "early talker", spamware that does not wait) gets C{554 5.7.1} at
    once instead of the greeting, then C{503} to every command until QUIT
    (RFC 5321 3.1; C{twistd smtpsrv}: 0.1 when listening on a non-loopback
    address).
    """
    max_auth_failures_per_ip: int = 0
    """
    Failed AUTH attempts from one client address within
    C{auth_failure_window} before AUTH answers C{454 4.7.0} without checking
    the password (0: no limit). Counted across connections, per process (per
    worker under C{--workers}).
    """
    max_auth_failures_per_user: int = 0
    """
    As C{max_auth_failures_per_ip}, per user name from any address (0: no
    limit). It also lets anyone lock that user out for a window: keep it
    well above typing errors.
    """
    auth_failure_window: float = 300.0
    """
    Seconds from an address's (or user's) first failure after which its
    count starts again.
    """
    auth_failure_delay: float = 0.0
    """
    Tarpit: seconds before answering a failed AUTH, doubling with each
    failure counted for the address or user, up to C{auth_failure_max_delay}
    (0: answer at once). Only that connection waits.
    """
    auth_failure_max_delay: float = 30.0
    """Longest tarpit wait in seconds (see C{auth_failure_delay})."""

    @property
    def offers_smtputf8(self) -> bool:
        """Whether SMTPUTF8 is offered: not hidden, and 8BITMIME offered (RFC 6531 3.1 item 8)."""
        return not (self.hide_smtputf8 or self.hide_8bitmime)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("disabled_commands", "mail_params", "rcpt_params"):
            set_(self, name, _upper_set(getattr(self, name)))
        for name in ("xclient_trusted", "ignored_hosts", "connection_limit_exceptions"):
            try:
                set_(self, name, parse_networks(getattr(self, name)))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        tls: Any = self.tls
        if isinstance(tls, Mapping):
            from ._tls import TLSConfig
            set_(self, "tls", TLSConfig(**tls))
        methods: Any = self.auth_methods
        if isinstance(methods, str):
            methods = methods.replace(",", " ").split()
        set_(self, "auth_methods", tuple(dict.fromkeys(str(m).upper() for m in methods)))
        from ._sasl import MECHANISMS
        bad = [m for m in self.auth_methods if m not in MECHANISMS]
        if bad:
            raise ValueError(f"auth_methods: unsupported {', '.join(bad)}; choose from {', '.join(MECHANISMS)}")
        unknown = self.disabled_commands - KNOWN_COMMANDS
        if unknown:
            raise ValueError(f"disabled_commands: unknown command(s) {', '.join(sorted(unknown))}")
        if not self.name or any(c.isspace() for c in self.name) or not self.name.isprintable() \
                or len(self.name) > 255:
            # It is in every greeting and in the CRAM-MD5 challenge: those must fit a reply line.
            raise ValueError(f"name must be a host name (at most 255 printable characters, no spaces), "
                             f"not {self.name!r}")
        if "\r" in self.banner or "\n" in self.banner:
            raise ValueError("banner may not contain CR or LF")
        for name in ("size", "max_command_length", "max_recipients", "max_unrecognized_commands",
                     "min_data_rate", "max_allowed_unauthenticated_commands", "max_auth_failures",
                     "max_clients_per_ip", "max_connect_rate", "max_junk_commands", "max_auth_failures_per_ip",
                     "max_auth_failures_per_user"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, not {value!r}")
        if self.max_command_length < 512:
            raise ValueError("max_command_length must be at least 512 (RFC 5321 4.5.3.1.4)")
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be at least 1")
        if self.max_clients is not None and (not isinstance(self.max_clients, int) or self.max_clients < 1):
            raise ValueError(f"max_clients must be None or a positive int, not {self.max_clients!r}")
        for name in ("socket_timeout", "close_timeout", "hook_timeout", "reverse_lookup_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if not isinstance(self.ipv6_prefix, int) or isinstance(self.ipv6_prefix, bool) \
                or not 0 <= self.ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be an int from 0 to 128, not {self.ipv6_prefix!r}")
        for name in ("greeting_delay", "auth_failure_delay", "auth_failure_max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 3600:
                raise ValueError(f"{name} must be a number of seconds from 0 to 3600, not {value!r}")
        if self.greeting_delay >= self.socket_timeout:
            raise ValueError("greeting_delay must be shorter than socket_timeout")
        if not isinstance(self.auth_failure_window, (int, float)) or not self.auth_failure_window > 0:
            raise ValueError(f"auth_failure_window must be a positive number of seconds, "
                             f"not {self.auth_failure_window!r}")
        if self.bare_line_endings not in ("reject", "accept"):
            raise ValueError('bare_line_endings must be "reject" or "accept"')
        try:
            self.helo_response.format(name="n", client_hostname="c", remote_address="a", helo="h")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"helo_response has an unknown field or bad format: {e}") from None

    @classmethod
    def build(cls, base: "ServerOptions | None" = None, **kwargs: Unpack[ServerOptionsArgs]) -> "ServerOptions":
        """
        Make options from keyword arguments, naming the closest valid option
        when one is misspelt (C{maxClients} → C{max_clients}); a type checker
        already reports that (L{ServerOptionsArgs}).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key not in names:
                snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
                hint = difflib.get_close_matches(snake, names, 1, 0.6)
                raise TypeError(f"unknown server option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        # The fields' types are the normalised ones; __post_init__ converts.
        values = cast(Dict[str, Any], kwargs)
        if base is None:
            return cls(**values)
        return dataclasses.replace(base, **values)


class ServerOptionsArgs(TypedDict, total=False):
    """
    The keyword arguments of L{SMTPServer} and L{ServerOptions.build}: every
    option, with the types accepted (a name list may be one comma separated
    string). A misspelt option or a wrong type is a type checker error.
    Each key must match a L{ServerOptions} field (the tests check).
    """

    name: str
    banner: str
    helo_response: str
    size: int
    reject_oversized: bool
    hide_size: bool
    hide_pipelining: bool
    hide_8bitmime: bool
    hide_smtputf8: bool
    hide_enhancedstatuscodes: bool
    hide_chunking: bool
    hide_dsn: bool
    lmtp: bool
    use_xclient: bool
    use_xforward: bool
    xclient_trusted: str | Iterable[str]
    ignored_hosts: str | Iterable[str]
    disable_reverse_lookup: bool
    reverse_lookup_timeout: float
    tls: TLSConfig | Mapping[str, Any] | None
    secure: bool
    secured: bool
    hide_starttls: bool
    needs_upgrade: bool
    hide_requiretls: bool
    disabled_commands: str | Iterable[str]
    max_clients: int | None
    socket_timeout: float
    close_timeout: float
    min_data_rate: int
    max_command_length: int
    max_recipients: int
    max_unrecognized_commands: int
    hook_timeout: float
    bare_line_endings: Literal["reject", "accept"]
    mail_params: str | Iterable[str]
    rcpt_params: str | Iterable[str]
    auth_methods: str | Iterable[str]
    auth_optional: bool
    allow_insecure_auth: bool
    auth_required_message: str
    max_allowed_unauthenticated_commands: int
    max_auth_failures: int
    max_clients_per_ip: int
    ipv6_prefix: int
    max_connect_rate: int
    connection_limit_exceptions: str | Iterable[str]
    max_junk_commands: int
    greeting_delay: float
    max_auth_failures_per_ip: int
    max_auth_failures_per_user: int
    auth_failure_window: float
    auth_failure_delay: float
    auth_failure_max_delay: float


# help(ServerOptions) shows the options' docstrings, which Python itself
# drops (setattr: pydoctor documents the static docstring above instead).
setattr(ServerOptions, "__doc__", with_help_text(ServerOptions, ServerOptionsArgs))
