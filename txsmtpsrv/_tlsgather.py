# -*- test-case-name: tests.test_tlsgather -*-
"""
Tiny TLS records on Twisted's TLS layer: the records of one read reach the
protocol together.

Twisted's C{TLSMemoryBIOProtocol} hands its wrapped protocol one
C{dataReceived} per TLS record. A client sending one-byte records (23 bytes
of ciphertext each) turns one 64 KiB read into ~2,800 calls into the SMTP
dialogue and ~2,800 chunks for a data hook's reader: a reader keeping its
chunks (C{stream.content()}) holds ~40 bytes per body byte. Our own layer
(L{txsmtpsrv._tlslayer}) gathers small records itself; this module does the
same for the paths still on Twisted's layer (the PROXY wrapper, implicit
TLS over it or over C{unix:}, in-memory transports,
C{_tlslayer.ENABLED = False}).

How, through public attributes only (C{tcp.Connection.protocol} and
C{ProtocolWrapper.wrappedProtocol}, as L{txsmtpsrv._halfclose} does): the
TLS layer's C{dataReceived} (what the transport calls with each read) gets
an instance attribute that, for the length of the call, puts a L{_Records}
in the layer's C{wrappedProtocol}. The layer hands it each record; it
passes them on joined, when they reach C{GATHER} bytes, before any other
event reaches the protocol (the handshake's end, the connection's), and
when the read has been processed. Nothing is held past the read that
brought it; order is kept.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from ._halfclose import tls_layer
from ._logging import log_prefix

__all__ = ["GATHER", "gather_records"]

#: Plaintext of small records gathered into one handover (a plain TCP read's worth, roughly), on
#: Twisted's layer here and on the lean one (C{_tlslayer}).
GATHER = 1 << 13


@implementer(IHandshakeListener)
class _Records:
    """The TLS layer's C{wrappedProtocol} while it processes a read: gathers what it hands over."""

    __slots__ = ("_protocol", "_parts", "_size")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._parts: List[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= GATHER:
            self.flush()

    def flush(self) -> None:
        """Hand over what is gathered, as one chunk."""
        parts = self._parts
        if parts:
            self._parts = []
            self._size = 0
            self._protocol.dataReceived(parts[0] if len(parts) == 1 else b"".join(parts))

    def handshakeCompleted(self) -> None:
        self.flush()
        if IHandshakeListener.providedBy(self._protocol):
            self._protocol.handshakeCompleted()

    def connectionLost(self, reason: Any) -> None:
        self.flush()
        self._protocol.connectionLost(reason)

    def logPrefix(self) -> str:
        return log_prefix(self._protocol)


def gather_records(transport: Any) -> None:
    """
    Make the Twisted TLS layer under C{transport} (if there is one: see
    L{tls_layer}) hand each read's small records to the protocol it wraps
    as one chunk. Call once the layer is in place: in C{connectionMade}
    under implicit TLS, right after C{startTLS}.
    """
    tls = tls_layer(transport)
    if tls is None or "dataReceived" in vars(tls):
        return
    protocol = tls.wrappedProtocol
    records = _Records(protocol)
    read = type(tls).dataReceived

    def dataReceived(data: bytes) -> None:
        if tls.wrappedProtocol is not protocol:  # (gone, or a read inside a read: gathered by the outer one)
            read(tls, data)
            return
        tls.wrappedProtocol = records
        try:
            read(tls, data)
        finally:
            if tls.wrappedProtocol is records:  # (connectionLost clears it)
                tls.wrappedProtocol = protocol
            records.flush()

    tls.dataReceived = dataReceived
