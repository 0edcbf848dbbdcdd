# -*- test-case-name: tests.test_tlslayer_dialogue,tests.test_tlslayer_flow,tests.test_tlslayer_peer,tests.test_tlslayer_loopback -*-
"""
STARTTLS on a plain TCP connection without Twisted's TLS protocol wrapper.

Twisted's C{transport.startTLS} puts a C{TLSMemoryBIOProtocol} (a
C{ProtocolWrapper}) between the TCP connection and the SMTP protocol: a
factory and a wrapper per connection, nine C{directlyProvides} copying the
transport's interfaces onto the wrapper, every reply held for a
C{callLater(0)} pass and then queued for a writability pass of the reactor,
and a C{WantReadError} raised at the end of every read (C{bench/README.md},
"Issue 13 part 3"). L{start_tls} does the same job with one small object.

How it hooks in: as Twisted's own C{startTLS} does (its
C{twisted.internet._newtls}), so the SMTP protocol, C{tls_info}, hooks and
users' code see the transport they saw before:

  - C{transport.protocol} becomes the L{TLSLayer}: the reactor's reads, the
    end of input and the end of the connection reach it first;
  - C{transport.TLS = True}: C{tcp.Connection} then hands every C{write},
    C{writeSequence}, C{loseConnection} and C{(un)registerProducer} to its
    protocol, i.e. to the layer;
  - the transport provides C{ISSLTransport}; its C{getHandle} and
    C{getPeerCertificate} answer from the layer's C{SSL.Connection}, as after
    Twisted's C{startTLS}; C{pauseProducing}, C{resumeProducing} and
    C{abortConnection} also go through the layer (instance attributes, as
    C{startTLS} sets C{getHandle}), so that it stops handing over decrypted
    data the moment the SMTP protocol pauses, and never sends after an abort.
    When the connection is lost these instance attributes go (they and
    OpenSSL's app data hold the layer in reference cycles): the closed
    transport answers with its own methods from then on.

Ciphertext goes out through a L{ReplyWriter} of its own: directly on the
socket while the transport has nothing queued, else (for good) through
C{FileDescriptor.write}, which is the transport's raw, pre-TLS write. Only a
C{twisted.internet.tcp.Server} qualifies (L{eligible}); a PROXY wrapper
and in-memory transports keep Twisted's layer. Implicit TLS on plain TCP
starts this layer as the connection is made (L{txsmtpsrv._tlsimplicit}).
What one read makes the layer send (handshake messages, TLS 1.3 session
tickets, the implicit-TLS greeting, replies, our close_notify) leaves in one
send at the end of the read (up to C{_HOLD} bytes): sent as made, a second
small segment waits under Nagle for the client's delayed ACK of the first
(40 ms per implicit-TLS connection: C{bench/README.md}, tls16/tls17).

What it keeps as it was (each has a test in C{tests/test_tlslayer_*.py}):
plaintext written before the handshake ends waits for it; a failed
handshake passes OpenSSL's error to C{connectionLost} (an EOF in violation
of TLS as C{ConnectionLost}), after sending OpenSSL's alert; the handshake
timer aborts as before; the client's close_notify under TLS 1.2 is answered
with ours and the connection closes, under TLS 1.3 (which closes only the
client's side, RFC 8446 6.1) it is a half-close, as a TCP FIN; the end of input (TCP FIN) after the handshake is a
half-close the SMTP protocol answers (L{txsmtpsrv._halfclose}), before it
the end of the connection; our close sends close_notify and then closes TCP
(not waiting for the client's, which RFC 8446 6.1 and RFC 5246 7.2.1 allow);
whatever OpenSSL writes while reading (alerts, a refusal to renegotiate)
is sent after every read (OpenSSL answers a TLS 1.3 KeyUpdate with its
next record, as RFC 8446 4.6.3 allows). While the SMTP
protocol is paused nothing more is decrypted: the ciphertext of the read
in progress (at most one read, 64 KiB) stays in OpenSSL's memory BIO and
the socket is not read until it resumes.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterable, List, Optional

from OpenSSL import SSL
from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import (IHalfCloseableProtocol, IHandshakeListener, IOpenSSLServerConnectionCreator,
                                         ISSLTransport)
from twisted.internet.tcp import Server
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

from ._halfclose import half_closeable
from ._sendnow import ReplyWriter, eligible as direct_socket
from ._tlsconn import keep_declarations
from ._tlsgather import GATHER as _GATHER, gather_records

__all__ = ["ENABLED", "TLSLayer", "eligible", "start_tls", "upgrade"]

#: Whether STARTTLS on an eligible transport takes this layer (a switch for
#: tests, which run both paths, and a way back to Twisted's layer).
ENABLED = True

#: Plaintext asked of OpenSSL per C{recv}: more than a record holds (16 KiB),
#: so each call returns one whole record.
_RECV_SIZE = 1 << 15
#: Ciphertext taken out of OpenSSL's memory BIO per C{bio_read}; a shorter
#: answer means the BIO is empty (no C{WantReadError} raised to learn it).
#: Below glibc's 128 KiB C{mmap} threshold: each call allocates this much.
_BIO_SIZE = 1 << 16
#: Plaintext written in a read whose ciphertext is held back (to leave in one
#: send at the read's end) at most: beyond it, it goes now, so that a full
#: socket still pauses the protocol (C{FileDescriptor.write}'s producer
#: pausing) while it answers a long pipeline.
_HOLD = 1 << 14

try:
    # How many bytes a memory BIO holds, without a read that raises when it
    # holds none (pyOpenSSL's binding has the macro; the BIOs are
    # C{Connection._into_ssl} and C{_from_ssl}). Without them: the raising way.
    from OpenSSL._util import ffi as _ffi, lib as _lib
    _held: Any = _lib.BIO_get_mem_data
    _NULL: Any = _ffi.NULL
except (ImportError, AttributeError):  # pragma: no cover  (another pyOpenSSL)
    _held = None
    _NULL = None


def _unexpected_eof(error: BaseException) -> bool:
    """Whether an OpenSSL error is an EOF in violation of TLS (no close_notify)."""
    if isinstance(error, SSL.SysCallError):
        reason = str(error.args[1]) if len(error.args) > 1 else ""
    else:
        queue = error.args[0] if error.args else None
        if not queue:
            return True
        reason = str(queue[-1][2]) if len(queue[-1]) > 2 else ""
    return reason.casefold().startswith("unexpected eof")


def eligible(transport: Any, creator: Any) -> bool:
    """
    Whether L{start_tls} may take C{transport}: a plain, connected TCP server
    connection of Twisted's POSIX reactors (not a wrapper, not TLS already),
    and TLS settings that make server connections.
    """
    return bool(type(transport) is Server and not transport.TLS and transport.connected
                and not transport.disconnecting and not ISSLTransport.providedBy(transport)
                and IOpenSSLServerConnectionCreator.providedBy(creator))


@implementer(IHalfCloseableProtocol)
class TLSLayer:
    """
    The TLS side of one connection after STARTTLS: the TCP connection's
    protocol, and what the SMTP protocol's writes, closes and producer calls
    reach through C{transport.TLS}.
    """

    __slots__ = ("_transport", "_protocol", "_conn", "_rbio", "_wbio", "_raw", "_queue", "_done", "_closing",
                 "_over", "_paused", "_busy", "_ended", "_reason", "_clean", "_listener", "_eof", "_hold",
                 "_unsent")

    def __init__(self, transport: Server, protocol: Any, sock: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        self._conn: SSL.Connection = None  # type: ignore[assignment]  # set by start_tls
        # OpenSSL's memory BIOs (ciphertext in, ciphertext out), when their fill can be asked.
        self._rbio: Any = None
        self._wbio: Any = None
        # Raw (ciphertext) output: the transport's own pre-TLS write.
        self._raw = ReplyWriter(_RawWrite(transport), sock)
        self._queue: Optional[List[bytes]] = []  # plaintext waiting for the handshake (None: none waits)
        self._done = False  # handshake completed
        self._closing = False  # the protocol asked to close
        self._over = False  # TLS over: nothing more decrypted or encrypted
        self._paused = False  # the protocol paused reading
        self._busy = False  # handing decrypted data over (re-entrancy guard)
        self._ended = False  # the client's input ended (TCP FIN)
        self._reason: Optional[Failure] = None  # for the protocol's connectionLost
        self._clean = False  # the client's close_notify arrived
        self._eof = 0  # after a TLS 1.3 close_notify: 1 the protocol is still to be told, 2 told
        self._listener = IHandshakeListener.providedBy(protocol)
        self._hold = False  # in a read: ciphertext stays in OpenSSL's BIO until its end (one send)
        self._unsent = 0  # plaintext written (encrypted, not sent) in this read

    # -- what the transport asks of its protocol ------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """IProtocol; never called (the transport was connected before STARTTLS)."""

    def dataReceived(self, data: bytes) -> None:
        """Ciphertext from the socket (after the client's close_notify: nothing more, discarded)."""
        if self._over or self._eof:
            return
        # What this read makes us send (OpenSSL's handshake messages and
        # session tickets, the implicit-TLS greeting written in
        # handshakeCompleted, the replies, our close_notify) leaves in one
        # send at its end: sent one by one, the second small segment waits
        # for the client's (delayed, 40 ms) ACK of the first under Nagle,
        # and each send wakes the client.
        self._hold = True
        try:
            self._conn.bio_write(data)
            if not self._done:
                if self._handshake():
                    self._deliver()  # application data that came with the client's Finished
            else:
                if self._queue:
                    self._unqueue()  # a write that waited for a read (renegotiation)
                self._deliver()
        finally:
            self._hold = False
            self._unsent = 0
        if not self._over:
            self._flush()

    def readConnectionLost(self) -> None:
        """IHalfCloseableProtocol: the client's FIN."""
        self._ended = True
        if self._eof:
            return  # its close_notify ended its input already: the protocol knows
        if self._done and not self._over and half_closeable(self._protocol):
            self._protocol.readConnectionLost()
        else:
            # Before the handshake (or after TLS ended) the end of input ends the
            # connection, as for a protocol that cannot half-close.
            self._transport.connectionLost(Failure(main.CONNECTION_DONE))

    def writeConnectionLost(self) -> None:
        """IHalfCloseableProtocol: never asked for (we close both sides at once)."""

    def connectionLost(self, reason: Failure) -> None:
        """The TCP connection is gone: tell the protocol, with TLS's reason."""
        self._over = True
        self._raw.stop()
        if self._reason is not None:
            reason = self._reason
        elif not self._clean:
            # Gone without close_notify (or mid-handshake): what Twisted's layer says.
            reason = Failure(main.CONNECTION_LOST)
        self._reason = None
        protocol, self._protocol = self._protocol, None  # (its writer holds us: nothing uses it once _over)
        protocol.connectionLost(reason)
        # Undo what else holds this layer in cycles -- the transport's methods start_tls
        # pointed at it, OpenSSL's app data -- so that reference counting frees the
        # connection, not the cyclic collector. The transport's own methods serve now.
        self._conn.set_app_data(None)
        patched = self._transport.__dict__
        for name in _PATCHED:
            patched.pop(name, None)

    # -- what the SMTP protocol's transport calls reach (transport.TLS) ----------------

    def write(self, data: bytes) -> None:
        """Encrypt and send C{data}; before the handshake ends, keep it for then."""
        if self._over or self._closing or not data:
            return
        queue = self._queue
        if queue is not None:
            queue.append(data)
        else:
            rest = self._send(data)
            if rest is not None:
                self._queue = [rest]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """Encrypt and send the pieces, as one write."""
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """
        Close: what is written goes first, then our close_notify, then TCP
        (after the transport's queue). Before the handshake ends with
        nothing to say there is nothing TLS could close cleanly: abort.
        """
        if self._closing or self._over:
            return
        self._closing = True
        if not self._done:
            if not self._queue:
                self.abortConnection()
            return  # closes once the handshake ends (or the handshake timer aborts)
        if not self._queue:
            self._shutdown()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The transport's own: its write buffer pauses the producer, as before STARTTLS."""
        FileDescriptor.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self) -> None:
        FileDescriptor.unregisterProducer(self._transport)

    # -- installed on the transport -----------------------------------------------------

    def getHandle(self) -> SSL.Connection:
        """ISystemHandle, as after Twisted's C{startTLS}: the OpenSSL connection (C{tls_info} reads it)."""
        return self._conn

    def getPeerCertificate(self) -> Any:
        """ISSLTransport: the client's certificate (pyOpenSSL C{X509}) or C{None}."""
        return self._conn.get_peer_certificate()

    def pauseProducing(self) -> None:
        """The protocol stops reading: nothing more is decrypted for it, the socket is not read."""
        self._paused = True
        FileDescriptor.pauseProducing(self._transport)

    def resumeProducing(self) -> None:
        """The protocol reads again: first what is already received, then the socket."""
        self._paused = False
        if not self._busy and self._done and not self._over:  # (while busy, that loop goes on)
            self._deliver()
            if self._eof == 1 and not self._paused and not self._over:
                self._input_closed()
        if not self._paused and not self._ended:
            FileDescriptor.resumeProducing(self._transport)

    def abortConnection(self) -> None:
        """Drop the connection now: nothing more is sent or handed over."""
        if self._hold and self._done and not self._over:
            self._flush()  # (what was written before the abort goes, as it went at once before)
        self._over = True
        self._raw.stop()
        Server.abortConnection(self._transport)

    # -- TLS ------------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Go on with the handshake; whether it is done."""
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False  # (OpenSSL's flight leaves at the end of the read)
        except SSL.Error:
            self._fail(Failure())
            return False
        if self._over:  # aborted meanwhile (e.g. by the SNI callback)
            return False
        self._done = True
        # The end of OpenSSL's part (TLS 1.3: the session tickets) is flushed
        # with what waited and what handshakeCompleted writes (the greeting).
        self._unqueue()
        if self._listener:
            self._protocol.handshakeCompleted()
        return True

    def _unqueue(self) -> None:
        """Send what waited for the handshake (or for a read); then close if asked to."""
        queue = self._queue
        self._queue = None
        if queue:
            for i, data in enumerate(queue):
                rest = self._send(data)
                if rest is not None:  # blocked again: keep the rest, in order
                    self._queue = [rest, *queue[i + 1:]]
                    return
        if self._closing and not self._over:
            self._shutdown()

    def _send(self, data: bytes) -> Optional[bytes]:
        """Encrypt and send C{data}; what OpenSSL could not take before reading (or None)."""
        conn = self._conn
        try:
            sent = conn.send(data)
            while sent < len(data):  # not with OpenSSL's defaults, but allowed
                data = data[sent:]
                sent = conn.send(data)
        except SSL.WantReadError:
            # OpenSSL needs the client's next message first (TLS 1.2
            # renegotiation): the rest waits for the next read.
            if not self._hold:
                self._flush()
            return data
        except SSL.Error:
            self._fail(Failure())
            return None
        if self._hold:  # in a read: sent at its end, unless that is much
            self._unsent += len(data)
            if self._unsent < _HOLD:
                return None
            self._unsent = 0
        self._flush()
        return None

    def _deliver(self) -> None:
        """
        Hand decrypted data to the protocol until OpenSSL has no more or the
        protocol pauses. OpenSSL reads exactly one record at a time from its
        memory BIO (read-ahead is off: OpenSSL's default, which neither
        pyOpenSSL, Twisted nor txsmtpsrv change), so an empty BIO means no
        record is left: no C{recv} that would only raise C{WantReadError}.
        """
        if self._busy or self._eof:
            return  # (an outer call goes on; after close_notify nothing more comes)
        self._busy = True
        conn = self._conn
        protocol = self._protocol
        rbio = self._rbio
        try:
            while not self._paused and not self._over:
                # Small records are gathered up to _GATHER bytes: a client's
                # one-byte records must not reach the dialogue (and a reader
                # keeping chunks) as thousands of one-byte chunks per read.
                parts: List[bytes] = []
                size = 0
                end: Any = None
                while size < _GATHER:
                    if rbio is not None and not _held(rbio, _NULL) and not conn.pending():
                        break
                    try:
                        data = conn.recv(_RECV_SIZE)
                    except SSL.WantReadError:
                        break  # a partial record: the rest comes with the next read
                    except SSL.ZeroReturnError:
                        end = self._peer_closed
                        break
                    except SSL.Error:
                        end = partial(self._fail, Failure())
                        break
                    parts.append(data)
                    size += len(data)
                if parts:
                    protocol.dataReceived(parts[0] if len(parts) == 1 else b"".join(parts))
                if end is not None:
                    if not self._over:  # (the protocol may have closed meanwhile)
                        end()
                    break
                if size < _GATHER:
                    break  # nothing more in the BIO
        finally:
            self._busy = False
        if not self._over and not self._hold:
            self._flush()  # what OpenSSL wrote while reading: alerts, a refused renegotiation

    def _flush(self) -> None:
        """Send what OpenSSL has written to its memory BIO."""
        conn = self._conn
        wbio = self._wbio
        if wbio is not None:
            size = _held(wbio, _NULL)
            if size:
                self._raw.write(conn.bio_read(size))
            return
        while True:
            try:
                data = conn.bio_read(_BIO_SIZE)
            except SSL.WantReadError:
                return
            self._raw.write(data)
            if len(data) < _BIO_SIZE:
                return

    def _shutdown(self) -> None:
        """Our close_notify, then close TCP after what is queued."""
        self._over = True  # (what a read held goes with the close_notify)
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass  # mid-handshake, or TLS failed already: nothing to close cleanly
        self._flush()
        self._close_tcp()

    def _close_tcp(self) -> None:
        """Close TCP after what the transport holds (a paused producer would hold the close back)."""
        self._raw.stop()
        transport = self._transport
        if transport.producer is not None:
            FileDescriptor.unregisterProducer(transport)
        FileDescriptor.loseConnection(transport)

    def _peer_closed(self) -> None:
        """
        The client's close_notify. Under TLS 1.3 it closes only the client's
        side (RFC 8446 6.1): a half-close, as a TCP FIN is, so the commands
        sent before it are answered and then the protocol closes (our
        close_notify, then TCP). Under TLS 1.2 (RFC 5246 7.2.1), or for a
        protocol that cannot half-close: ours in answer, and the connection
        ends at once (what Twisted's layer does).
        """
        self._clean = True
        if self._conn.get_protocol_version_name() != "TLSv1.3" or not half_closeable(self._protocol):
            self._shutdown()
            return
        self._eof = 1
        if not self._paused:  # else once the protocol reads again (resumeProducing)
            self._input_closed()

    def _input_closed(self) -> None:
        """Tell the protocol the client's input ended (after its close_notify)."""
        self._eof = 2
        self._protocol.readConnectionLost()

    def _fail(self, failure: Failure) -> None:
        """TLS failed (a handshake refused, a bad record): send OpenSSL's alert and close."""
        if failure.value is not None and _unexpected_eof(failure.value):
            failure = Failure(main.CONNECTION_LOST)
        if self._reason is None:
            self._reason = failure
        self._over = True  # (what a read held goes first, OpenSSL's alert last)
        self._flush()
        self._close_tcp()


class _RawWrite:
    """The transport's write under TLS: C{FileDescriptor.write}, what C{_BypassTLS} calls."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Server) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        FileDescriptor.write(self._transport, data)


#: The transport's methods that reach the layer while TLS runs (undone when the connection is lost).
_PATCHED = ("getHandle", "getPeerCertificate", "pauseProducing", "resumeProducing", "abortConnection")


def start_tls(transport: Server, creator: Any, protocol: Any, sock: Any) -> TLSLayer:
    """
    Start TLS (server side) on C{transport}, which L{eligible} accepted:
    from now on its bytes go through a L{TLSLayer}.

    @param creator: the TLS settings (an C{IOpenSSLServerConnectionCreator},
        e.g. L{txsmtpsrv._tls.TLSContextHolder}).
    @param protocol: the transport's protocol (the SMTP connection); it gets
        C{handshakeCompleted} when the handshake is done.
    @param sock: the socket to send ciphertext on directly, or C{None} when
        the transport may hold queued data (everything then goes through it).
    """
    layer = TLSLayer(transport, protocol, sock)
    conn = creator.serverConnectionForTLS(layer)
    conn.set_accept_state()
    conn.set_app_data(layer)  # Twisted's SNI callback aborts through it
    layer._conn = conn
    if _held is not None:
        layer._rbio = getattr(conn, "_into_ssl", None)
        layer._wbio = getattr(conn, "_from_ssl", None)
    t: Any = transport
    t.protocol = layer
    for name in _PATCHED:
        setattr(t, name, getattr(layer, name))
    directlyProvides(transport, ISSLTransport)
    keep_declarations(transport)  # Provides(tcp.Server, ISSLTransport), which zope caches weakly
    t.TLS = True
    # Nothing to do before the client's first message: the first read starts the handshake.
    return layer


def upgrade(transport: Any, creator: Any, protocol: Any, out: ReplyWriter) -> ReplyWriter:
    """
    STARTTLS for the SMTP protocol, after its 220 went out through C{out}:
    this layer where L{eligible}, else Twisted's C{startTLS}. Returns the
    writer for the protocol's replies from now on (C{out} is stopped: it
    holds the raw socket, and no plaintext byte may follow the 220).
    """
    # Sends the 220 if it is still held (a pass's replies); True: nothing is queued
    # in the transport, so ciphertext may go straight out.
    direct = out.stop()
    if ENABLED and eligible(transport, creator):
        layer = start_tls(transport, creator, protocol, direct_socket(transport) if direct else None)
        # Replies to the layer itself, not through tcp.Connection.write (the
        # same kind of writer as C{out}: tests count writes through it).
        return type(out)(layer, None)
    transport.startTLS(creator)
    keep_declarations(transport)  # zope caches them weakly: keep them for the next one
    gather_records(transport)  # a read's tiny records handed over together, as here
    return out
