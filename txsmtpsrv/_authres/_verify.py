# -*- test-case-name: tests.test_authres -*-
"""
L{AuthVerifier}: SPF, DKIM, DMARC and ARC as hooks, in front of other hooks::

    server = SMTPServer(AuthVerifier(MaildirDelivery("~/Maildir"), authserv_id="mx.example"))

It wraps any hooks object (the user's, a delivery, C{twistd}'s layered
hooks) and passes every hook through, adding two steps:

 - at the first C{RCPT} of a transaction it checks SPF for the HELO name
   and the MAIL FROM identity, then calls the wrapped C{on_rcpt_to}, so
   C{session.envelope.auth} (an L{AuthResults}) already has C{spf};
 - in C{on_data} it reads the whole body first: the header section is kept
   (bounded), the body is hashed for every DKIM/ARC signature as it streams
   and spooled to a C{SpooledTemporaryFile} (in memory up to
   C{spool_memory} bytes, then on disk), key and DMARC lookups start as
   soon as the header section is complete. Then DKIM, ARC and DMARC are
   decided, and only then is the wrapped C{on_data} called, with a new
   L{MessageStream} that replays the message with our
   C{Authentication-Results:} field prepended (and any field that claims
   our authserv-id removed, RFC 8601 5).

Memory per message is the header section plus one chunk, whatever the body
size. The signature checks themselves (dkimpy over the header section
only, about 1 ms per signature) do not grow with the body: they run in the
reactor thread for up to C{inline_signatures} signature fields, in the
reactor's thread pool beyond (a long ARC chain). The policy options (C{reject_spf_fail},
C{reject_dmarc}) are off by default: a wrapped hook decides, reading
C{session.envelope.auth}.
"""

from __future__ import annotations

import re
import tempfile
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime, IResolver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._data import MessageStream
from .._deferreds import when_fired
from .._errors import SMTPError
from .._hooks import ResolvedHooks
from ._dkim import KeyAnswer, MessageScanner, key_names, verify_arc, verify_dkim
from ._dmarc import check_dmarc, from_domain, organizational_domain
from ._dns import MessageDNS, make_resolver
from ._results import ARCVerdict, AuthResults, DKIMVerdict, DMARCVerdict, DNSTempError, SPFVerdict, authserv_id_of
from ._spf import check_identity

__all__ = ["AuthVerifier", "METHODS"]

METHODS = ("spf", "dkim", "dmarc", "arc")
_OWN_FIELD = re.compile(rb"authentication-results[ \t]*:", re.I)
_REPLAY_CHUNK = 65536
_CHUNKS_PER_TURN = 16  # then let the reactor serve others


class _Transaction:
    """What L{AuthVerifier} keeps per envelope besides the verdicts."""

    def __init__(self, dns: MessageDNS) -> None:
        self.dns = dns
        self.spf: Optional[Deferred[None]] = None


class AuthVerifier:
    """
    Hooks that verify SPF, DKIM, DMARC and ARC, wrapping C{hooks}.

    @param hooks: the hooks (or delivery) to call after the checks; C{None}
        to use the verifier alone (messages are then accepted and dropped,
        unless a policy option refuses them).
    @param authserv_id: the name in our C{Authentication-Results} fields
        (usually the server's host name).
    @param verify: which of C{"spf", "dkim", "dmarc", "arc"} to run.
    @param resolver: a C{twisted.names} C{IResolver}; default: one asking
        C{nameservers}, or those of C{/etc/resolv.conf}.
    @param dns_timeout: seconds one DNS query may take, retries included.
    @param dns_budget: DNS queries allowed per transaction.
    @param check_timeout: seconds all checks of one message may take (a
        check still waiting then is C{temperror}).
    @param reject_spf_fail: refuse recipients with C{550 5.7.1} when the
        MAIL FROM SPF result is C{fail}.
    @param reject_dmarc: refuse the message with C{550 5.7.1} when DMARC
        fails and the domain's policy (after C{pct=}) is C{reject}.
    @param spool_memory: body bytes kept in memory before spooling to disk.
    @param inline_signatures: a message with more signature fields than this
        (DKIM-Signature, ARC-Seal, ARC-Message-Signature: up to 10 + 100) has
        them checked in the reactor's thread pool, so that a long ARC chain
        (about 1 ms of dkimpy's RSA per signature) does not hold the reactor.
    """

    log = Logger()

    def __init__(self, hooks: Optional[object] = None, *, authserv_id: str,
                 verify: Sequence[str] = METHODS, resolver: Optional[IResolver] = None,
                 nameservers: Sequence[str] = (), reactor: Optional[IReactorTime] = None,
                 dns_timeout: float = 5.0, dns_budget: int = 50, check_timeout: float = 20.0,
                 max_signatures: int = 10, reject_spf_fail: bool = False, reject_dmarc: bool = False,
                 spool_memory: int = 1 << 20, tmpdir: Optional[str] = None, inline_signatures: int = 4) -> None:
        unknown = set(verify) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown verification method(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(METHODS)}")
        if not authserv_id or re.search(r"[^\x21-\x7e]|[;()\"\\]", authserv_id):
            raise ValueError(f"authserv_id must be a token such as the host name, not {authserv_id!r}")
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.hooks = hooks
        self._inner = ResolvedHooks(hooks)
        self.authserv_id = authserv_id
        self.verify = tuple(m for m in METHODS if m in verify)
        self._clock: IReactorTime = reactor
        self._resolver = resolver if resolver is not None else make_resolver(nameservers, reactor)
        self.dns_timeout = dns_timeout
        self.dns_budget = dns_budget
        self.check_timeout = check_timeout
        self.max_signatures = max_signatures
        self.inline_signatures = inline_signatures
        self.reject_spf_fail = reject_spf_fail
        self.reject_dmarc = reject_dmarc
        self.spool_memory = spool_memory
        self.tmpdir = tmpdir
        if "dmarc" in self.verify:
            organizational_domain("example.com")  # load the Public Suffix List now, not at the first message

    def __repr__(self) -> str:
        return f"<AuthVerifier {','.join(self.verify)} for {self.hooks!r}>"

    def __getattr__(self, name: str) -> Any:
        """Every other hook is the wrapped one's (absent if it has none)."""
        if name.startswith("on_") and name != "on_rcpt_to" and name != "on_data":
            method = getattr(self.__dict__.get("_inner"), name, None)
            if method is not None:
                return method
        raise AttributeError(name)

    # -- per transaction ------------------------------------------------------------

    def _transaction(self, session: Any) -> AuthResults:
        envelope = session.envelope
        auth = getattr(envelope, "auth", None)
        if auth is None:
            auth = AuthResults()
            auth._state = _Transaction(MessageDNS(self._resolver, self._clock, self.dns_timeout, self.dns_budget))
            envelope.auth = auth
        return auth

    def on_rcpt_to(self, session: Any, address: Any) -> Any:
        """SPF (once per transaction), the SPF policy, then the wrapped hook."""
        auth = self._transaction(session)
        state: _Transaction = auth._state
        if "spf" in self.verify and state.spf is None:
            state.spf = self._bounded(Deferred.fromCoroutine(self._check_spf(session, auth, state.dns)),
                                      lambda: self._spf_timed_out(auth), session, "SPF")
        if state.spf is None:
            return self._then_inner(session, address, auth)
        return when_fired(state.spf).addCallback(lambda _: self._then_inner(session, address, auth))

    def _then_inner(self, session: Any, address: Any, auth: AuthResults) -> Any:
        spf = auth.spf_mailfrom
        if self.reject_spf_fail and spf is not None and spf.result == "fail":
            raise SMTPError(550, spf.explanation or f"SPF: {spf.domain} does not authorize "
                                                    f"{session.remote_address} to send its mail", "5.7.1")
        if self._inner.on_rcpt_to is None:
            return None
        return self._inner.on_rcpt_to(session, address)

    async def _check_spf(self, session: Any, auth: AuthResults, dns: MessageDNS) -> None:
        envelope = session.envelope
        ip = session.remote_address or ""
        helo = session.host_name_appears_as or ""
        mail = envelope.mail_from.address if envelope.mail_from is not None else ""
        me = self.authserv_id
        helo_d = Deferred.fromCoroutine(check_identity(dns, ip, "helo", None, helo, me))
        mail_d = Deferred.fromCoroutine(check_identity(dns, ip, "mailfrom", mail, helo, me)) if mail else None
        auth.spf_helo = verdict = await helo_d
        if mail_d is None:  # RFC 7208 2.4: for <>, the MAIL FROM identity is postmaster@HELO
            verdict = SPFVerdict(verdict.result, "mailfrom", verdict.domain, verdict.sender, verdict.reason,
                                 verdict.explanation)
        else:
            verdict = await mail_d
        auth.spf_mailfrom = verdict

    @staticmethod
    def _spf_timed_out(auth: AuthResults) -> None:
        if auth.spf_helo is None:
            auth.spf_helo = SPFVerdict("temperror", "helo", "", reason="SPF check timed out")
        if auth.spf_mailfrom is None:
            auth.spf_mailfrom = SPFVerdict("temperror", "mailfrom", "", reason="SPF check timed out")

    def _bounded(self, d: "Deferred[None]", timed_out: Any, session: Any, what: str) -> "Deferred[None]":
        """Cap C{d} at C{check_timeout}; on any failure call C{timed_out} and log."""
        d.addTimeout(self.check_timeout, self._clock)

        def failed(reason: Failure) -> None:
            if reason.check(TimeoutError, CancelledError):
                self.log.warn("{what} checks of session {session_id} timed out", what=what, session_id=session.id)
            else:
                self.log.failure("{what} checks of session {session_id} failed", reason, what=what,
                                 session_id=session.id)
            timed_out()

        return d.addErrback(failed)

    # -- the message ------------------------------------------------------------------

    def on_data(self, session: Any, stream: MessageStream) -> "Deferred[Any]":
        """Verify while receiving, then hand the message with our header to the wrapped hook."""
        return Deferred.fromCoroutine(self._on_data(session, stream))

    async def _on_data(self, session: Any, stream: MessageStream) -> Any:
        auth = self._transaction(session)
        state: _Transaction = auth._state
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=self.spool_memory, dir=self.tmpdir)
        try:
            body_checks = bool({"dkim", "arc", "dmarc"} & set(self.verify))

            def spooled(data: bytes) -> None:
                spool.write(data)

            scanner = MessageScanner(spooled, arc="arc" in self.verify)
            started: List[Deferred[Any]] = []

            def feed(chunk: bytes) -> None:
                scanner.feed(chunk)
                if body_checks and not started and scanner.header_done:
                    started.append(self._prefetch(scanner, state.dns))

            await stream.collect(feed)
            scanner.finish()
            if body_checks:
                prefetch = started[0] if started else self._prefetch(scanner, state.dns)
                work = Deferred.fromCoroutine(self._check_message(session, auth, state, scanner, prefetch))
                await self._bounded(work, lambda: self._message_timed_out(auth), session, "message")
            elif state.spf is not None:
                await when_fired(state.spf)
            field = auth.header(self.authserv_id)
            self.log.debug("session {session_id}: {results}", session_id=session.id,
                          results=field.decode("ascii").replace("\r\n\t", " ").strip())
            self._policy(auth)
            if self._inner.on_data is None:
                return None
            spool.seek(0)
            head = field + self._header_without_ours(scanner)
            return await self._replay(session, head, spool)
        finally:
            spool.close()

    def _prefetch(self, scanner: MessageScanner, dns: MessageDNS) -> "Deferred[Dict[str, Any]]":
        """Start the key and DMARC record lookups the message will need, while the body streams."""
        names = key_names(scanner.signature_fields(arc="arc" in self.verify))
        if "dkim" not in self.verify and "arc" not in self.verify:
            names = []
        names = names[:self.max_signatures * 2]
        if "dmarc" in self.verify:
            author = from_domain([value for name, value in scanner.fields if name.lower() == b"from"])[0]
            if author is not None:  # check_dmarc will ask again and share this query
                dns(f"_dmarc.{author}", "TXT").addErrback(lambda _: None)
        lookups = [dns(name, "TXT") for name in names]
        return DeferredList(lookups, consumeErrors=True).addCallback(
            lambda results: {name: _key_answer(ok, value) for name, (ok, value) in zip(names, results)})

    async def _check_message(self, session: Any, auth: AuthResults, state: _Transaction,
                             scanner: MessageScanner, prefetch: "Deferred[Dict[str, KeyAnswer]]") -> None:
        keys = await prefetch
        header = scanner.parse_header if scanner.header is not None else None

        def signatures() -> Tuple[Optional[List[DKIMVerdict]], Optional[ARCVerdict]]:
            dkim: Optional[List[DKIMVerdict]] = None
            arc: Optional[ARCVerdict] = None
            if "dkim" in self.verify:
                if header is None:
                    dkim = [DKIMVerdict("permerror", reason="header section too large")]
                else:
                    dkim = verify_dkim(header, scanner.body_hashes, keys, self.max_signatures) or [
                        DKIMVerdict("none", reason="no signature")]  # RFC 8601 2.7.1
            if "arc" in self.verify:
                arc = verify_arc(header, scanner.body_hashes, keys) if header is not None else \
                    ARCVerdict("fail", reason="header section too large")
            return dkim, arc

        fields = len(scanner.signature_fields(arc="arc" in self.verify))
        if fields > self.inline_signatures and IReactorThreads.providedBy(self._clock):
            reactor: Any = self._clock
            dkim, arc = await deferToThreadPool(reactor, reactor.getThreadPool(), signatures)
        else:
            dkim, arc = signatures()
        if dkim is not None:
            auth.dkim = dkim
        auth.arc = arc
        if state.spf is not None:
            await when_fired(state.spf)
        if "dmarc" in self.verify:
            froms = [value for name, value in scanner.fields if name.lower() == b"from"]
            domain, why = from_domain(froms)
            if domain is None:
                auth.dmarc = DMARCVerdict("permerror", reason=why)
            else:
                auth.dmarc = await check_dmarc(state.dns, domain, auth.spf_mailfrom, auth.dkim)

    def _message_timed_out(self, auth: AuthResults) -> None:
        if "spf" in self.verify:
            self._spf_timed_out(auth)
        if "dkim" in self.verify and not auth.dkim:
            auth.dkim = [DKIMVerdict("temperror", reason="checks timed out")]
        if "arc" in self.verify and auth.arc is None:
            auth.arc = ARCVerdict("fail", reason="checks timed out")
        if "dmarc" in self.verify and auth.dmarc is None:
            auth.dmarc = DMARCVerdict("temperror", reason="checks timed out")

    def _policy(self, auth: AuthResults) -> None:
        dmarc = auth.dmarc
        if self.reject_dmarc and dmarc is not None and dmarc.result == "fail" and dmarc.disposition == "reject":
            raise SMTPError(550, f"DMARC: {dmarc.from_domain} rejects mail that fails authentication", "5.7.1")

    def _header_without_ours(self, scanner: MessageScanner) -> bytes:
        """The header section as received, minus fields claiming our authserv-id, plus its end."""
        if scanner.header is None:
            return b""
        own = self.authserv_id.lower()
        kept = [field for field in re.split(rb"(?<=\n)(?![ \t])", scanner.header)
                if not ((m := _OWN_FIELD.match(field)) and authserv_id_of(field[m.end():]) == own)]
        return b"".join(kept) + scanner.separator

    async def _replay(self, session: Any, head: bytes, spool: IO[bytes]) -> Any:
        replay = _Replay(head, spool, self._clock)
        inner_stream = MessageStream(replay.pause, replay.resume)
        replay.stream = inner_stream
        assert self._inner.on_data is not None
        answer = maybeDeferred(self._inner.on_data, session, inner_stream)
        replay.resume()
        try:
            value = await answer
            if inner_stream.has_reader and not inner_stream.ended:
                await when_fired(replay.done)  # the hook answered first; its reader still gets everything
            return value
        finally:
            replay.stop()
            inner_stream.discard()


def _key_answer(ok: bool, value: Any) -> KeyAnswer:
    if not ok:
        error = value.value if isinstance(value, Failure) else value
        return error if isinstance(error, DNSTempError) else DNSTempError(str(error))
    return value[0] if value else None


class _Replay:
    """Writes C{head} then the spool into a L{MessageStream}, honouring its pauses."""

    def __init__(self, head: bytes, spool: IO[bytes], clock: Any) -> None:
        self.stream: Optional[MessageStream] = None
        self._head: Optional[bytes] = head
        self._spool = spool
        self._clock = clock
        self._paused = False
        self._running = False
        self._done = False
        self._call: Any = None
        #: fires when everything was written or the reader stopped
        self.done: Deferred[None] = Deferred()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if not self._running and not self._done and self._call is None:
            self._run()

    def stop(self) -> None:
        self._end()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _end(self) -> None:
        self._done = True
        if not self.done.called:
            self.done.callback(None)

    def _next(self) -> None:
        self._call = None
        if not self._paused:
            self._run()

    def _run(self) -> None:
        stream = self.stream
        assert stream is not None
        self._running = True
        try:
            for _ in range(_CHUNKS_PER_TURN):
                if self._paused or self._done:
                    return
                if stream.ended:
                    self._end()
                    return
                if self._head is not None:
                    chunk, self._head = self._head, None
                else:
                    chunk = self._spool.read(_REPLAY_CHUNK)
                if not chunk:
                    self._end()
                    stream.finish()
                    return
                stream.write(chunk)
            if not self._done and not self._paused:
                self._call = self._clock.callLater(0, self._next)
        finally:
            self._running = False
