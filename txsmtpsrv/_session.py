# -*- test-case-name: tests.test_protocol_observers -*-
"""
What hooks see: the session, its current envelope and the addresses in it.

The protocol owns and updates these objects; hooks read them. Addresses are
immutable values, the session and envelope change as the dialogue goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple, cast

__all__ = ["Address", "Envelope", "Session"]


#: The default of L{Address}'s C{params}: a fresh dict is made for each address that gets it.
_NO_PARAMS: Mapping[str, Optional[str]] = MappingProxyType({})


@dataclass(frozen=True, init=False)
class Address:
    """
    A reverse-path or forward-path with its ESMTP parameters.

    @ivar address: the mailbox, C{""} for the null reverse-path C{<>}.
        Decoded as UTF-8, so SMTPUTF8 addresses are plain C{str}.
    @ivar params: ESMTP parameters, upper-cased keyword to value (C{None}
        for a parameter without a value, e.g. C{SMTPUTF8}).
    """

    address: str
    params: Mapping[str, Optional[str]] = field(default_factory=dict, hash=False)
    #: DSN NOTIFY (RFC 3461 4.1): C{("NEVER",)} or some of SUCCESS, FAILURE,
    #: DELAY; C{None} when not given.
    notify: Optional[Tuple[str, ...]] = None
    #: DSN ORCPT (RFC 3461 4.2): C{(addr_type, decoded original address)}.
    orcpt: Optional[Tuple[str, str]] = None
    #: MAIL's C{AUTH=} (RFC 4954 5) as the server must take it: the decoded
    #: mailbox (or C{"<>"}) from a client that authenticated, C{"<>"} from any
    #: other (whatever it sent: C{params["AUTH"]} keeps that, for logs);
    #: C{None} when not given. Whether to trust an authenticated client's
    #: claim, and pass it on when relaying, is the application's decision.
    submitter: Optional[str] = None

    def __init__(self, address: str, params: Mapping[str, Optional[str]] = _NO_PARAMS,
                 notify: Optional[Tuple[str, ...]] = None, orcpt: Optional[Tuple[str, str]] = None,
                 submitter: Optional[str] = None) -> None:
        # What the dataclass's __init__ does, without its per-field global
        # lookups and default-factory test: two addresses are made per message
        # (issue 13). The fields go into the instance's dict directly (it is
        # frozen): an object.__setattr__ call costs more than the five stores.
        fields = self.__dict__
        fields["address"] = address
        fields["params"] = {} if params is _NO_PARAMS else params
        fields["notify"] = notify
        fields["orcpt"] = orcpt
        fields["submitter"] = submitter

    @property
    def local_part(self) -> str:
        """The part before the last C{@} (the whole address if there is none)."""
        return self.address.rpartition("@")[0] if "@" in self.address else self.address

    @property
    def domain(self) -> str:
        """The part after the last C{@}, or C{""}."""
        return self.address.rpartition("@")[2] if "@" in self.address else ""

    @property
    def utf8(self) -> bool:
        """Whether the address needs SMTPUTF8 (RFC 6531) to be carried."""
        return not self.address.isascii()

    def __str__(self) -> str:
        return self.address


class Envelope:
    """
    The transaction being built: sender, recipients and body parameters.

    @ivar mail_from: the sender's L{Address} once MAIL was accepted.
    @ivar rcpt_to: accepted recipients in the order given (duplicates kept).
    @ivar body_type: C{"7BIT"}, C{"8BITMIME"} or C{"BINARYMIME"}.
    @ivar smtputf8: whether the client asked for SMTPUTF8 on MAIL.
    @ivar size: the SIZE the client declared on MAIL, or C{None}.
    @ivar dsn_ret: DSN RET (C{"FULL"} or C{"HDRS"}), or C{None}.
    @ivar dsn_envid: DSN ENVID, xtext-decoded, or C{None}.
    @ivar requiretls: whether MAIL carried REQUIRETLS (RFC 8689).
    @ivar auth: the sender authentication verdicts (an C{AuthResults}) when
        an L{AuthVerifier} runs: SPF from the first RCPT on, DKIM, ARC and
        DMARC when C{on_data} is called; C{None} otherwise.
    """

    __slots__ = ("mail_from", "_rcpt", "body_type", "smtputf8", "size", "dsn_ret", "dsn_envid",
                 "requiretls", "auth")

    def __init__(self) -> None:
        self.mail_from: Optional[Address] = None
        # The recipients' list is made when first read or set: the envelope of
        # an idle connection (and between transactions) has none (64 bytes).
        self._rcpt: Optional[List[Address]] = None
        self.body_type = "7BIT"
        self.smtputf8 = False
        self.size: Optional[int] = None
        self.dsn_ret: Optional[str] = None
        self.dsn_envid: Optional[str] = None
        self.requiretls = False
        self.auth: Any = None

    @property
    def rcpt_to(self) -> List[Address]:
        """The accepted recipients (a list, made on first use)."""
        rcpt = self._rcpt
        if rcpt is None:
            rcpt = self._rcpt = []
        return rcpt

    @rcpt_to.setter
    def rcpt_to(self, value: List[Address]) -> None:
        self._rcpt = value

    def __repr__(self) -> str:
        return f"<Envelope from={self.mail_from!r} to={self.rcpt_to!r}>"


#: (address, port) pairs of the listeners seen: the sessions of one listener share theirs.
_LISTENERS: Dict[Tuple[str, int], Tuple[str, int]] = {}


def _listener(address: str, port: int) -> Tuple[str, int]:
    key = (address, port)
    shared = _LISTENERS.get(key)
    if shared is None:
        if len(_LISTENERS) >= 256:  # bounded, whatever a program listens on
            _LISTENERS.clear()
        shared = _LISTENERS[key] = key
    return shared


class Session:
    """
    One client connection as hooks see it.

    @ivar id: a random id that also appears in every log event.
    @ivar client_hostname: reverse-DNS name, or C{[ip]} when unknown.
    @ivar host_name_appears_as: the name the client gave in HELO/EHLO/LHLO.
    @ivar opening_command: C{"HELO"}, C{"EHLO"} or C{"LHLO"} (C{""} before).
    @ivar transaction: number of MAIL commands accepted on this connection.
    @ivar user: what the auth hook returned, once authenticated.
    @ivar secure: whether the connection is encrypted.
    @ivar tls: a L{TLSInfo} (version, cipher, SNI name, client certificate)
        once TLS is up.
    """

    __slots__ = (
        "id", "_local", "remote_address", "remote_port",
        "client_hostname", "host_name_appears_as", "opening_command", "envelope",
        "transaction", "secure", "lmtp", "_extra",
    )

    def __init__(self, id: str, local_address: str, local_port: int, remote_address: str,
                 remote_port: int, lmtp: bool = False) -> None:
        self.id = id
        self._local = _listener(local_address, local_port)
        self.remote_address = remote_address
        self.remote_port = remote_port
        self.client_hostname = f"[{remote_address}]" if remote_address else ""
        self.host_name_appears_as = ""
        self.opening_command = ""
        self.envelope = Envelope()
        self.transaction = 0
        self.secure = False
        self.lmtp = lmtp
        # [xclient, xforward, tls, proxy, user, the client before XFORWARD],
        # made when one of them is first set: most connections have none of
        # them, and one slot for all saves 32 bytes of every idle connection.
        self._extra: Optional[List[Any]] = None

    def _extras(self) -> List[Any]:
        if self._extra is None:
            self._extra = [None, None, None, None, None, None]
        return self._extra

    @property
    def xclient(self) -> Dict[str, str]:
        """The attributes XCLIENT gave (empty until one came)."""
        extra = self._extras()
        if extra[0] is None:
            extra[0] = {}
        return cast(Dict[str, str], extra[0])

    @xclient.setter
    def xclient(self, value: Dict[str, str]) -> None:
        self._extras()[0] = value

    @property
    def xforward(self) -> Dict[str, str]:
        """The attributes XFORWARD gave for the current transaction."""
        extra = self._extras()
        if extra[1] is None:
            extra[1] = {}
        return cast(Dict[str, str], extra[1])

    @xforward.setter
    def xforward(self, value: Dict[str, str]) -> None:
        self._extras()[1] = value

    def _begin_xforward(self, remote_address: str, client_hostname: str, attributes: Dict[str, str]) -> None:
        """
        XFORWARD (for the dialogue): the client of this transaction is
        C{remote_address}/C{client_hostname}, C{attributes} join L{xforward}.
        The proxy's own identity, from before the first XFORWARD, is kept
        for L{_end_xforward}.
        """
        extra = self._extras()
        if extra[5] is None:
            extra[5] = (self.remote_address, self.client_hostname)
        self.remote_address, self.client_hostname = remote_address, client_hostname
        extra[1] = {**(extra[1] or {}), **attributes}

    def _end_xforward(self) -> None:
        """
        The transaction is over: XFORWARD's attributes go, the proxy's own
        identity comes back. (Callers on the hot path may skip the call
        while C{_extra} is None: then there is nothing to undo.)
        """
        extra = self._extra
        if extra is not None:  # (no list made to ask: most sessions never have one)
            if extra[1]:
                extra[1] = None
            if extra[5] is not None:
                self.remote_address, self.client_hostname = extra[5]
                extra[5] = None

    @property
    def local_address(self) -> str:
        """The address the client connected to."""
        return self._local[0]

    @local_address.setter
    def local_address(self, value: str) -> None:
        self._local = _listener(value, self._local[1])

    @property
    def local_port(self) -> int:
        """The port the client connected to."""
        return self._local[1]

    @local_port.setter
    def local_port(self, value: int) -> None:
        self._local = _listener(self._local[0], value)

    @property
    def user(self) -> Any:
        """What the auth hook returned, once authenticated (else C{None})."""
        extra = self._extra
        return None if extra is None else extra[4]

    @user.setter
    def user(self, value: Any) -> None:
        if value is not None or self._extra is not None:
            self._extras()[4] = value

    @property
    def tls(self) -> Any:
        """A L{TLSInfo} once TLS is up, else C{None}."""
        extra = self._extra
        return None if extra is None else extra[2]

    @tls.setter
    def tls(self, value: Any) -> None:
        if value is not None or self._extra is not None:
            self._extras()[2] = value

    @property
    def proxy(self) -> Any:
        """What the PROXY header said (a C{ProxyInfo}), or C{None} without one."""
        extra = self._extra
        return None if extra is None else extra[3]

    @proxy.setter
    def proxy(self, value: Any) -> None:
        if value is not None or self._extra is not None:
            self._extras()[3] = value

    @property
    def transmission_type(self) -> str:
        """
        The C{with} keyword of a Received header (RFC 3848, RFC 6531):
        SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, LMTP..., UTF8SMTP..., UTF8LMTP... .
        """
        if self.lmtp:
            base = "UTF8LMTP" if self.envelope.smtputf8 else "LMTP"
        elif self.envelope.smtputf8:
            base = "UTF8SMTP"
        elif self.opening_command == "EHLO":
            base = "ESMTP"
        else:
            return "SMTP"
        return base + ("S" if self.secure else "") + ("A" if self.user is not None else "")

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.remote_address}:{self.remote_port}>"
