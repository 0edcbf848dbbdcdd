# -*- test-case-name: tests.test_threaded -*-
"""
L{ThreadedServer}: a real SMTP server on loopback, driven from blocking code.

Code that sends mail with C{smtplib}, C{aiosmtplib}, Django or a Celery task
runs outside Twisted; its tests need a server in a background thread. A
Twisted reactor cannot be restarted, so every L{ThreadedServer} in the
process shares one reactor thread: the global reactor, run by C{crochet}
(C{crochet.setup()} on first use). Crochet rather than our own thread
because it is the maintained way to run Twisted from blocking code, shares
that thread with any other crochet user in the process, and unblocks waiters
when the process exits. It has to be the I{global} reactor: Twisted's TLS
layer schedules its writes on it whatever reactor the port runs on.

Where the process already runs that reactor itself (trial, pytest-twisted,
an application using C{crochet.no_setup()}), the blocking methods cannot
be used from the reactor's thread; the C{*_async} methods return Deferreds
for exactly that case and never touch crochet.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Tuple, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import threadable
from twisted.python.failure import Failure

from ._capture import CapturedMessage, CapturingHooks, Mailbox
from ._options import ServerOptions

__all__ = ["ThreadedServer"]

_REACTOR_THREAD_HINT = (
    "{what} blocks until the reactor thread answers, but it was called in the reactor's own thread "
    "(trial, pytest-twisted or a hook): use {alt}, which returns a Deferred, and send mail from "
    "another thread (twisted.internet.threads.deferToThread)"
)
_setup_lock = threading.Lock()


def _in_reactor_thread() -> bool:
    """Whether this thread is the one that runs (or last ran) the global reactor."""
    is_io_thread = cast(Callable[[], bool], threadable.isInIOThread)
    return is_io_thread()


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


def _ensure_reactor_thread(what: str, alt: str) -> None:
    """
    Make sure the global reactor runs in a thread other than this one:
    start it with C{crochet.setup()} unless someone already runs it.
    """
    if _in_reactor_thread():
        raise RuntimeError(_REACTOR_THREAD_HINT.format(what=what, alt=alt))
    import crochet  # imported here: the pytest plugin must load without it
    with _setup_lock:
        reactor = _reactor()
        if reactor.running:
            # Run by someone else in another thread: let crochet use it as is.
            try:
                crochet.no_setup()
            except RuntimeError:
                pass  # crochet.setup() was already called: fine too
        else:
            crochet.setup()


def _blocking(func: Any, timeout: float, what: str, alt: str, *args: Any) -> Any:
    """
    Run C{func(*args)} in the reactor thread and wait for its (Deferred)
    result. Not crochet's C{run_in_reactor}: its results emit a
    DeprecationWarning per call on Python 3.10+ (C{Event.isSet}).
    """
    _ensure_reactor_thread(what, alt)
    reactor = _reactor()
    done = threading.Event()
    outcome: List[Any] = []
    running: List["Deferred[Any]"] = []

    def finish(result: Any) -> None:
        outcome.append(result)
        done.set()  # returning None also consumes a failure nobody waits for any more

    def run() -> None:
        d = maybeDeferred(func, *args)
        running.append(d)
        d.addBoth(finish)

    def cancel() -> None:
        for d in running:
            d.cancel()

    reactor.callFromThread(run)
    if not done.wait(timeout):
        reactor.callFromThread(cancel)
        raise TimeoutError(f"{what} did not finish within {timeout:g} s")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


class ThreadedServer:
    """
    An SMTP (or LMTP) server listening on loopback that captures the
    messages it accepts, for tests of code that sends mail::

        with ThreadedServer() as server:
            send_welcome_mail(host=server.host, port=server.port)
            [message] = server.wait_for(1)
            assert message.rcpt_to == ("new@example.test",)
            assert message.message["Subject"] == "Welcome"

    Keyword arguments are L{SMTPServer}'s (L{ServerOptions} fields, plus
    C{resolver}), or give a whole L{ServerOptions} as C{options} (used as it
    is, apart from C{tls}); C{hooks} is any hooks object, as for
    L{SMTPServer}. What
    differs from a production server: C{name} defaults to C{localhost},
    reverse DNS is off unless a C{resolver} is given, C{close_timeout} is
    one second, and TLS is off unless asked for (so that clients which use
    STARTTLS whenever it is offered, as C{aiosmtplib} does, work unchanged);
    with C{tls}, the certificate comes from the process's throwaway CA
    (L{test_ca}), so that clients can verify it.

    @param host: the address to listen on (C{::1} listens on IPv6).
    @param port: the port; 0 (the default) picks a free one, read it from
        L{port} once started.
    @param tls: C{False} (the default) offers no TLS; C{"starttls"} (or
        C{True}) offers STARTTLS; C{"implicit"} speaks TLS from the first
        byte (SMTPS, like port 465); a L{TLSConfig} (or dict) uses your own
        certificate for STARTTLS (add C{secure=True} for implicit TLS).
    @param timeout: how long L{start} and L{stop} may take before
        C{TimeoutError}.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, hooks: Optional[object] = None, options: Optional[ServerOptions] = None, *,
                 host: str = "127.0.0.1", port: int = 0, tls: Any = False, timeout: float = 10.0,
                 resolver: Any = None, **kwargs: Any) -> None:
        self.hooks = hooks
        self.host = host
        self._requested_port = port
        self.port: int = 0
        self.timeout = timeout
        self._resolver = resolver
        if options is None:  # a whole ServerOptions given is used as it is
            kwargs.setdefault("name", "localhost")
            kwargs.setdefault("close_timeout", 1.0)
            if resolver is None:
                kwargs.setdefault("disable_reverse_lookup", True)
        name = kwargs.get("name", options.name if options is not None else "localhost")
        self._tls_mode = self._apply_tls(tls, kwargs, name, options)
        #: The server's L{ServerOptions}; built here so that a typo or a bad
        #: value fails at once, in the test's thread.
        self.options = ServerOptions.build(options, **kwargs) if kwargs or options is None else options
        self._mailbox = Mailbox()
        self.server: Any = None  # the running SMTPServer, once started
        self._listening: Any = None

    @staticmethod
    def _apply_tls(tls: Any, kwargs: dict[str, Any], name: str, base: Optional[ServerOptions]) -> str:
        if tls is True:
            tls = "starttls"
        if tls in ("starttls", "implicit"):
            if "tls" not in kwargs and (base is None or base.tls is None):
                from ._testca import test_ca
                kwargs["tls"] = test_ca().server_config([name])
            if tls == "implicit":
                kwargs["secure"] = True
            return str(tls)
        if tls is False or tls is None:
            kwargs["hide_starttls"] = True
            return "off"
        kwargs["tls"] = tls  # the user's TLSConfig or dict
        secure = kwargs.get("secure", base.secure if base is not None else False)
        return "implicit" if secure else "starttls"

    # -- state -----------------------------------------------------------------

    @property
    def address(self) -> Tuple[str, int]:
        """C{(host, port)}, e.g. for C{smtplib.SMTP(*server.address)}."""
        return self.host, self.port

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._listening is not None

    @property
    def tls(self) -> str:
        """C{"starttls"}, C{"implicit"} or C{"off"}."""
        return self._tls_mode

    @property
    def messages(self) -> List[CapturedMessage]:
        """A copy of the messages accepted so far (oldest first); safe from any thread."""
        return self._mailbox.messages

    def clear(self) -> None:
        """Forget the messages captured so far (the server keeps running)."""
        self._mailbox.clear()

    def client_context(self) -> Any:
        """An C{ssl.SSLContext} that trusts the server's certificate (the throwaway CA) and checks names."""
        from ._testca import test_ca
        return test_ca().client_context()

    @property
    def ca_file(self) -> str:
        """The throwaway CA's certificate as a PEM file, for clients configured by path."""
        from ._testca import test_ca
        return test_ca().path

    # -- blocking API -----------------------------------------------------------

    def start(self) -> "ThreadedServer":
        """Start listening; returns once the port accepts connections."""
        _blocking(self.start_async, self.timeout, "ThreadedServer.start()", "start_async()")
        return self

    def stop(self) -> None:
        """
        Stop: close the port, answer 421 to idle clients, let a transaction
        in progress finish for C{close_timeout} seconds, drop the rest.
        Returns once every connection is closed. Stopping twice is harmless.
        """
        if self._listening is None:
            return
        limit = float(self.options.close_timeout) + 3.0 + self.timeout
        _blocking(self.stop_async, limit, "ThreadedServer.stop()", "stop_async()")

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> List[CapturedMessage]:
        """
        Wait until at least C{count} messages were accepted; return them all.

        @raise MessagesNotReceived: (an C{AssertionError}) after C{timeout}
            seconds, listing the messages that did arrive.
        """
        if _in_reactor_thread():
            raise RuntimeError(_REACTOR_THREAD_HINT.format(what="ThreadedServer.wait_for()",
                                                           alt="wait_for_async()"))
        return self._mailbox.wait_for(count, timeout)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- reactor-thread API -------------------------------------------------------

    def start_async(self) -> "Deferred[ThreadedServer]":
        """L{start} for code running in the reactor thread: fires with C{self} once listening."""
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        from ._server import SMTPServer

        if self._listening is not None:
            raise RuntimeError("this ThreadedServer is already running")
        reactor = _reactor()
        server = SMTPServer(CapturingHooks(self.hooks, self._mailbox), self.options, reactor=reactor,
                            resolver=self._resolver)
        endpoint_class = TCP6ServerEndpoint if ":" in self.host else TCP4ServerEndpoint
        endpoint: Any = endpoint_class(reactor, self._requested_port, interface=self.host)

        def listening(port: Any) -> "ThreadedServer":
            self.server, self._listening = server, port
            self.port = port.getHost().port
            return self

        return server.listen(endpoint).addCallback(listening)

    def stop_async(self) -> "Deferred[None]":
        """L{stop} for code running in the reactor thread."""
        server, self._listening = self.server, None
        if server is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        closing: Deferred[None] = server.close()
        return closing

    def wait_for_async(self, count: int = 1, timeout: float = 5.0) -> "Deferred[List[CapturedMessage]]":
        """L{wait_for} for code running in the reactor thread."""
        return self._mailbox.when(count, timeout, _reactor())

    def __repr__(self) -> str:
        state = f"listening on {self.host}:{self.port}" if self.running else "stopped"
        return f"<ThreadedServer {state}, {len(self.messages)} message(s)>"
