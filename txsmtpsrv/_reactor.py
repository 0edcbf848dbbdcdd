# -*- test-case-name: tests.test_reactor -*-
"""
An epoll reactor that dispatches each I/O event without Twisted's generic
per-event logging wrapper: C{twistd smtpsrv}'s default on Linux, and
C{--reactor=smtpsrv-epoll} for C{twist}, C{trial} and the like.

Why: Twisted's C{EPollReactor.doPoll} runs every read/write event through
C{log.callWithLogger}, which pushes the selectable's C{logPrefix()} as the
legacy log context's C{system}, catches and logs anything that escapes, and
pops the context. Its work is right, but it is spread over about ten Python
calls, most of them through C{*args}/C{**kw} (a lookup of the current context
through a thread-local, a dict copy and update, two C{callWithContext}
layers), and a small SMTP message costs four such events (issue 13). This
reactor does the same work inline: the same C{system} context is pushed
around the same C{_doReadOrWrite} (Twisted's own, unchanged: disconnection
detection, the C{fileno() == -1} check, C{doRead}/C{doWrite}, logging an
exception and disconnecting the selectable with it), the same
"(buggy logPrefix method)" fallback, and the same C{log.err(system=...)} for
anything that escapes it. For the commonest event, a TCP connection's read,
it runs C{_doReadOrWrite} and C{doRead} inline, as Twisted's code does them
(L{SMTPEPollReactor._dispatch}): two calls less per read, 3.4 % of a small
message's instructions. (So a C{doRead} or C{logPrefix} set on one such
transport, or patched into Twisted's classes while it runs, is not seen
there; a subclass of the reactor with its own C{_doReadOrWrite} gets every
event, and a subclass of C{tcp.Server} its own C{doRead}.)

It also sends the replies to clients on this host of a pass with several
events together, once the pass's events are handled
(L{SMTPEPollReactor.held_replies}): such a connection's
L{_sendnow.HeldReplyWriter} hands its reply to the reactor instead of sending
it at once. Why: to a local client (a test sink's sender, an MTA handing
over by LMTP, a benchmark's load generator), each send that finds the client
asleep wakes it, and on a VM that wake-up (an inter-processor interrupt)
costs more than the send; sent back to back at the end of the pass, the
replies find it awake (bench/README.md). Redis writes its replies the same
way (before it sleeps). A reply waits at most for the rest of its pass's
events: never later than Twisted's own C{transport.write}, which sends in
the next pass. A pass with one event, replies written outside the events
(timers, threads), and clients elsewhere (whose sends wake nobody here) are
sent at once, as before.

And it closes a TCP or UNIX connection at the end of the pass in which
C{loseConnection} was called, when nothing is left in the transport's
buffer (L{SMTPEPollReactor.addWriter}): Twisted waits for a write event
first, which costs two C{epoll_ctl} calls and a pass per connection, only
to find that there is nothing to write. The close is Twisted's own
(C{_postLoseConnection}, C{_disconnectSelectable}), in the selectable's log
context, after the pass's held replies are sent (so a reply still held
when its connection closes goes before the FIN, as a write event would
find it sent). Nothing else differs from C{EPollReactor}.

It reads four attributes of C{EPollReactor} that are not public API
(C{_poller}, C{_selectables}, C{_doReadOrWrite} and C{_disconnectSelectable}),
a TCP connection's C{logstr}, C{socket}, C{bufferSize} and C{_dataReceived}, C{log}'s context tracker,
and a closing transport's buffers (C{dataBuffer}, C{_tempDataBuffer},
C{_sendmsgQueue}) and C{_aborting}; L{install}
refuses to install it when the four, or C{tcp.Server}'s C{logstr},
C{bufferSize} and C{_dataReceived}, are missing (another Twisted), so a changed
Twisted gives a clear error at start-up rather than a broken loop. If some
other context tracker has been installed (C{context.installContextTracker}),
events go through C{log.callWithLogger} exactly as in Twisted.

Linux only (epoll). The reactor plugin in C{twisted/plugins} names it
C{smtpsrv-epoll} for C{twistd}/C{twist}/C{trial --reactor}; a program that
runs its own reactor calls L{install} before anything imports
C{twisted.internet.reactor}. C{twistd smtpsrv} installs it itself when no
reactor was installed yet (L{install_unless_chosen}): twistd installs a
C{--reactor} while parsing its own options and has none installed when it
parses ours; the first import of C{twisted.internet.reactor} would install
Twisted's default. As a default (not when chosen by name) it is installed
only where Twisted's code it replaces and inlines is the code it was checked
against (L{CHECKED_TWISTED}): a Twisted that changed it gets its own reactor
and a warning, not a silent divergence.
"""

from __future__ import annotations

import errno
import select
import sys
from typing import Any, Dict, Optional, Tuple

from twisted.internet import error, posixbase, tcp, unix
from twisted.internet.main import CONNECTION_DONE as _CONNECTION_DONE
from twisted.internet.main import CONNECTION_LOST as _CONNECTION_LOST
from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger
from twisted.python import context, log

__all__ = ["SMTPEPollReactor", "install", "SHORT_NAME"]

SHORT_NAME = "smtpsrv-epoll"
"""The reactor plugin's name, for C{--reactor=smtpsrv-epoll}."""

CHECKED_TWISTED: Tuple[str, ...] = ("4fae703204572eda", "f8be215b1869423d")
"""
Digests of the Twisted source L{SMTPEPollReactor} replaces, inlines and relies on
(L{_twisted_digest}), as last checked: Twisted 26.4 and 26.10 (whose C{doRead}
differs in its annotations only; their C{_dataReceived} differs, and is called,
not inlined). Add a release's digest after reading what
changed, and mend L{SMTPEPollReactor} with it.
"""

_ILogContext = log.ILogContext
_log = Logger()
_BUGGY_PREFIX = "(buggy logPrefix method)"  # log.callWithLogger's text
_EPOLLIN = select.EPOLLIN
_EWOULDBLOCK = errno.EWOULDBLOCK
_TCP_SERVER = tcp.Server  # read events handled inline (L{SMTPEPollReactor._dispatch})
_TCP_SERVER_READS = ("_dataReceived", "logstr", "bufferSize")  # what they use of it (and each one's socket)
_DO_READ_OR_WRITE = getattr(EPollReactor, "_doReadOrWrite", None)  # the one inlined (None: L{install} refuses)
# _doReadOrWrite's reason for a selectable whose fileno() is -1 (its own object, where it is found).
_NO_FILEDESC = getattr(posixbase, "_NO_FILEDESC", None) or error.ConnectionFdescWentAway("File descriptor lost")


class SMTPEPollReactor(EPollReactor):
    """
    C{EPollReactor} whose C{doPoll} pushes the log context inline, sends
    the replies of a pass with several events together at its end, and
    closes a connection with nothing left to send at the end of its pass
    (see the module).

    @ivar held_replies: while such a pass's events are handled, each
        L{_sendnow.HeldReplyWriter} that wrote -> the bytes it was given
        (a list of them after its second write), in order; C{None}
        otherwise (writers send at once then).
    @ivar _in_pass: whether a pass's events are being handled.
    @ivar _closing: the TCP and UNIX transports that asked to write with
        empty buffers during the pass (in order, as dict keys), which
        L{addWriter} left out of epoll; made on first use.
    """

    held_replies: Optional[Dict[Any, Any]] = None
    _in_pass = False
    _closing: Optional[Dict[Any, None]] = None
    _inline_reads = True  # a subclass with its own _doReadOrWrite: False (L{__init_subclass__})

    def __init_subclass__(cls, **kw: Any) -> None:
        """A subclass that overrides C{_doReadOrWrite} gets every event there: only Twisted's is inlined."""
        super().__init_subclass__(**kw)
        cls._inline_reads = getattr(cls, "_doReadOrWrite", None) is _DO_READ_OR_WRITE

    def doPoll(self, timeout: Optional[float]) -> None:
        """Poll for events and dispatch each as C{log.callWithLogger(s, self._doReadOrWrite, ...)} would."""
        if timeout is None:
            timeout = -1  # wait indefinitely
        if self._in_pass and self._closing:
            self._close_nested()
            timeout = 0  # (Twisted's poll returns at once with their write events)
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        if not events:
            return
        tracker = context.theContextTracker
        if type(tracker) is not context.ThreadedContextTracker:
            self._dispatch_logged(events)
            return
        stack = tracker.currentContext().contexts
        if self._in_pass or self.held_replies is not None:  # nested: the outer pass sends (and closes the rest)
            self._dispatch(events, stack)
            return
        self._in_pass = True
        if len(events) == 1:  # one event: its replies go at once
            try:
                self._dispatch(events, stack)
            finally:
                self._in_pass = False
                if self._closing:
                    self._close_pending(stack)
            return
        self.held_replies = {}
        try:
            self._dispatch(events, stack)
        finally:
            self._in_pass = False
            try:
                self._send_held()  # first: a connection's replies go before its FIN
            finally:
                if self._closing:
                    self._close_pending(stack)

    def _dispatch(self, events: Any, stack: Any, selectables: Any = None, dispatch: Any = None) -> None:
        """
        Each event as C{log.callWithLogger(selectable, dispatch, selectable, fd, event)}
        would handle it (by default: the poll's events, by C{_doReadOrWrite}).

        A poll's read event of a plain TCP connection (C{tcp.Server}, the
        exact type; C{EPOLLIN} alone), four of a small message's four or five
        events, skips two calls: C{_doReadOrWrite} and C{doRead} run inline as
        Twisted's code does them (the C{fileno() == -1} check,
        C{recv(bufferSize)}, C{EWOULDBLOCK} ignored, another C{OSError}
        C{CONNECTION_LOST}, then C{_dataReceived}, Twisted's own, whose result
        ends the connection as a read; an exception logged and the connection
        disconnected with it, not as a read): 3.4 % fewer instructions per
        message (bench/README.md). Not in a subclass with its own
        C{_doReadOrWrite} (L{__init_subclass__}): that gets them all.
        """
        reads = False  # whether TCP reads go inline: a poll's, by Twisted's _doReadOrWrite
        if selectables is None:
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            reads = self._inline_reads
        # The current ILogContext, as log.callWithContext finds it for each event: the
        # same for all of them (each event's own frame is gone before the next one).
        for frame in reversed(stack):
            if _ILogContext in frame:
                current = frame[_ILogContext]
                break
        else:
            current = None
        for fd, event in events:
            try:
                selectable = selectables[fd]
            except KeyError:
                continue  # removed by an earlier event of this poll
            inline = reads and event == _EPOLLIN and type(selectable) is _TCP_SERVER
            if inline:
                prefix = selectable.logstr  # (what Connection.logPrefix returns)
            else:
                try:
                    prefix = selectable.logPrefix()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    prefix = _BUGGY_PREFIX
                    log.err(system=prefix)
            try:
                # log.callWithContext: a copy of the current ILogContext with our system
                # (no ILogContext at all: AttributeError, logged below as Twisted's is).
                ctx = current.copy()
                ctx["system"] = prefix
                stack.append({_ILogContext: ctx})
                try:
                    if not inline:
                        dispatch(selectable, fd, event)
                    else:  # _doReadOrWrite and doRead (tcp.Connection), inline
                        why: Any = None
                        read = False  # _doReadOrWrite's inRead: doRead returned
                        try:
                            if selectable.fileno() == -1:
                                why = _NO_FILEDESC
                            else:
                                try:
                                    data = selectable.socket.recv(selectable.bufferSize)
                                except OSError as se:
                                    if se.args[0] != _EWOULDBLOCK:
                                        why = _CONNECTION_LOST
                                    read = True
                                else:
                                    why = selectable._dataReceived(data)
                                    read = True
                        except BaseException:
                            why = sys.exc_info()[1]
                            log.err()
                        if why:
                            self._disconnectSelectable(selectable, why, read)  # type: ignore[no-untyped-call]
                finally:
                    stack.pop()
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=prefix)

    doIteration = doPoll

    def addWriter(self, writer: Any) -> None:
        """
        C{EPollReactor.addWriter}, except during a pass for a TCP or UNIX
        transport with empty buffers: that one is noted, and L{_close_pending}
        closes it at the end of the pass if it is closing (C{loseConnection}
        asks to write with nothing buffered, to close once the buffer is
        empty), or adds it then.
        """
        if (self._in_pass and type(writer) in _CLOSE_AT_ONCE
                and not writer.dataBuffer and not writer._tempDataBuffer):
            if self._closing is None:
                self._closing = {}
            self._closing[writer] = None
            return
        EPollReactor.addWriter(self, writer)

    def removeWriter(self, writer: Any) -> None:
        """C{EPollReactor.removeWriter}, also forgetting a writer L{addWriter} noted."""
        closing = self._closing
        if closing:
            closing.pop(writer, None)
        EPollReactor.removeWriter(self, writer)

    def _close_pending(self, stack: Any) -> None:
        """
        The writers L{addWriter} noted in this pass: each still closing with
        its buffers empty -- a write event would find nothing to send and
        close it (C{FileDescriptor.doWrite}) -- is closed now, as Twisted
        closes it then; any other is added to epoll as usual. That includes
        an aborted one (C{abortConnection}, then C{loseConnection}): its
        C{connectionLost(ConnectionAborted)} is a call later, and a clean
        close now would send a FIN for its reset and tell the protocol
        C{ConnectionDone}; and a UNIX one with descriptors queued
        (C{sendFileDescriptor}), whose write event reports their overrun.
        """
        closing = self._closing
        assert closing is not None
        try:
            while closing:
                writer = next(iter(closing))
                del closing[writer]
                if writer.disconnected:
                    continue
                if (writer.disconnecting and writer.producer is None and not writer._aborting
                        and not writer.dataBuffer and not writer._tempDataBuffer
                        and not getattr(writer, "_sendmsgQueue", None)):  # (UNIX: descriptors to send)
                    self._dispatch(((0, 0),), stack, (writer,), self._close_now)  # (fd 0 of "selectables" (writer,))
                else:
                    EPollReactor.addWriter(self, writer)
        finally:
            # A KeyboardInterrupt escaped a connectionLost: the rest wait for a write
            # event, as in Twisted, rather than for the end of a pass that may never come.
            for writer in list(closing):
                del closing[writer]
                if not writer.disconnected:
                    EPollReactor.addWriter(self, writer)

    def _close_nested(self) -> None:
        """
        A pass inside a pass (C{reactor.iterate()} in a handler) closes what
        the outer one noted so far, as Twisted's poll would (their write
        events): a handler waiting there for a connection it closed to be
        gone would otherwise wait forever. The replies held so far go first.
        """
        tracker = context.theContextTracker
        if type(tracker) is context.ThreadedContextTracker:  # (else the outer pass closes them)
            if self.held_replies:  # first, as at the end of a pass: a connection's replies go before its FIN
                self._send_held()
                self.held_replies = {}  # (the outer pass holds on)
            self._close_pending(tracker.currentContext().contexts)

    def _close_now(self, transport: Any, fd: int, event: int) -> None:
        """What a write event does to a closing transport with nothing to send (C{FileDescriptor.doWrite})."""
        self._disconnectSelectable(transport, transport._postLoseConnection(), False)  # type: ignore[no-untyped-call]

    def _send_held(self) -> None:
        """
        The pass's replies, one send per connection. A writer's failure is
        logged and the others still sent; so are they before a
        C{KeyboardInterrupt} or C{SystemExit} raised meanwhile goes on up.
        """
        held, self.held_replies = self.held_replies, None
        if not held:
            return
        escaped: Optional[BaseException] = None
        for writer, data in held.items():
            try:
                writer.send_held(data if type(data) is bytes else b"".join(data))  # (a list after a second write)
            except Exception:
                _log.failure("sending a connection's held replies failed")
            except BaseException as e:
                escaped = escaped or e
        if escaped is not None:
            raise escaped

    def _dispatch_logged(self, events: Any) -> None:
        """Twisted's own dispatch, for a process with another context tracker."""
        dispatch = self._doReadOrWrite
        for fd, event in events:
            try:
                selectable = self._selectables[fd]
            except KeyError:
                continue
            log.callWithLogger(selectable, dispatch, selectable, fd, event)


#: The transports whose C{loseConnection} L{SMTPEPollReactor} completes in the same pass
#: (exact types: a subclass may write or close differently).
_CLOSE_AT_ONCE = (tcp.Server, unix.Server)


def install() -> None:
    """Install L{SMTPEPollReactor} as Twisted's global reactor."""
    from twisted.internet.main import installReactor

    reactor = SMTPEPollReactor()  # type: ignore[no-untyped-call]  # Twisted: unannotated __init__
    missing = [name for name in ("_poller", "_selectables", "_doReadOrWrite", "_disconnectSelectable")
               if not hasattr(reactor, name)]
    missing_tcp = [name for name in _TCP_SERVER_READS if not hasattr(tcp.Server, name)]
    if missing or missing_tcp:
        poller = getattr(reactor, "_poller", None)
        if poller is not None:
            poller.close()
        if getattr(reactor, "waker", None) is not None:
            reactor.waker.connectionLost(None)  # its pipe
        lacks = [f"{what} lacks {names}" for what, names in (("EPollReactor", missing), ("tcp.Server", missing_tcp))
                 if names]
        raise RuntimeError(f"{SHORT_NAME}: this Twisted's {' and '.join(lacks)}; use the default reactor")
    installReactor(reactor)


def install_unless_chosen() -> Optional[str]:
    """
    Install L{SMTPEPollReactor} if nothing has installed a reactor yet: the
    daemon's default, where its saving is nobody's opt-in.

    A reactor already installed (C{twistd --reactor=...}, C{twist}, a program or
    plugin that imported C{twisted.internet.reactor}) is kept. Returns why this
    reactor was not installed -- Twisted's code it replaces and inlines is not
    the code it was checked against (L{CHECKED_TWISTED}), or Twisted lacks the
    attributes it reads -- for the caller's warning (Twisted's default then
    runs), else None. (Without epoll this module does not import: the caller
    checks C{select.epoll} first.)
    """
    if "twisted.internet.reactor" in sys.modules:
        return None
    digest = _twisted_digest()
    if digest not in CHECKED_TWISTED:
        found = "cannot be read" if digest is None else f"is {digest}"
        checked = " or ".join(CHECKED_TWISTED)
        return (f"the digest of Twisted's epoll dispatch code {found}, not {checked} as checked; "
                f"choose it explicitly with --reactor={SHORT_NAME}")
    try:
        install()
    except RuntimeError as e:
        return str(e)
    return None


def _twisted_digest() -> Optional[str]:
    """
    A short SHA-256 of the source of what C{doPoll} replaces (C{EPollReactor.doPoll})
    and inlines (C{log.callWithLogger}, C{log.callWithContext}, and the whole of
    C{twisted.python.context}: the trackers and its module-level C{call}/C{get}),
    and of what the close at the end of a pass relies on (C{EPollReactor.addWriter}/
    C{removeWriter}, C{FileDescriptor.loseConnection}/C{doWrite}/C{_postLoseConnection},
    C{abortConnection}'s C{_aborting}), and of what a TCP read event inlines
    (C{EPollReactor._doReadOrWrite}, C{tcp.Server.doRead}/C{logPrefix}: as
    resolved, so that an override nearer than today's C{_PollLikeMixin} and
    C{Connection} changes it too),
    or None where the source cannot be read. Only a default hangs on it, so no
    failure here may stop the daemon from starting.
    """
    import hashlib
    import inspect

    from twisted.internet import abstract

    fd = abstract.FileDescriptor
    server = tcp.Server  # (what it resolves them to, wherever they are defined: today tcp.Connection)
    try:  # (a Twisted without one of them: AttributeError, None as for no source)
        parts = (EPollReactor.doPoll, log.callWithLogger, log.callWithContext, context,
                 EPollReactor.addWriter, EPollReactor.removeWriter, fd.loseConnection, fd.doWrite,
                 fd._postLoseConnection, tcp._AbortingMixin.abortConnection,
                 EPollReactor._doReadOrWrite, server.doRead, server.logPrefix)
        text = "\0".join(inspect.getsource(part) for part in parts)
    except Exception:  # OSError/TypeError without sources (.pyc only, a frozen build), or anything else
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]
