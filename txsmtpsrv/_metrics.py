# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics for L{SMTPServer}s, fed by the server's observers::

    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    metrics.observe(server)          # any number of servers

C{twistd smtpsrv --metrics ENDPOINT} does the same and serves the registry
over HTTP (C{prometheus_client}'s Twisted resource); with C{--workers} every
process writes to C{prometheus_client}'s multiprocess directory and the
parent's scrape adds them up. C{prometheus_client} is imported only when
metrics are made, so the library does not need it otherwise.

Metrics (all prefixed C{txsmtpsrv_}): C{connections_open} and
C{connections_total} by C{listener} (the local address); C{refusals_total}
by C{reason} (max_clients, shutting_down, timeout, unrecognized_commands,
unauthenticated_commands, auth_failures, connect_hook); C{commands_total} by
C{verb} and C{reply_class} (2xx..5xx; one per final reply, so an LMTP DATA
counts once per recipient; verb CONNECT is the greeting and a 421 said
between commands, a timeout or shutdown); C{messages_total} by C{outcome} (accepted,
refused) and C{received_bytes_total}; C{tls_handshakes_total} by C{result}
(ok, failed); C{auth_total} by C{mechanism} and C{result} (success,
failure); C{hook_duration_seconds} by C{hook} and C{session_duration_seconds}
(histograms).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["ServerMetrics", "multiprocess_directory"]

#: Verbs that C{commands_total} names; anything else is counted as UNKNOWN.
_VERBS = frozenset({"CONNECT", "EHLO", "HELO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP",
                    "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "XCLIENT", "XFORWARD"})
_HOOK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SESSION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


def multiprocess_directory() -> Optional[str]:
    """C{prometheus_client}'s multiprocess directory when that mode is on, else C{None}."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


_DEFAULT: Any = object()


class ServerMetrics:
    """
    The metrics, registered once in a registry, for any number of servers.

    @param registry: a C{prometheus_client.CollectorRegistry}; by default
        C{prometheus_client.REGISTRY}; C{None} registers nowhere (multiprocess
        mode, where a C{MultiProcessCollector} reads the values back).
    """

    def __init__(self, registry: Any = _DEFAULT) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        if registry is _DEFAULT:
            registry = REGISTRY
        kw: Dict[str, Any] = {"registry": registry, "namespace": "txsmtpsrv"}
        self.connections_open = Gauge("connections_open", "Connections open now.", ["listener"],
                                      multiprocess_mode="livesum", **kw)
        self.connections = Counter("connections", "Connections accepted.", ["listener"], **kw)
        self.refusals = Counter("refusals", "Connections refused or closed by a limit.", ["reason"], **kw)
        self.commands = Counter("commands", "Final replies to commands.", ["verb", "reply_class"], **kw)
        self.messages = Counter("messages", "Messages accepted or refused.", ["outcome"], **kw)
        self.received_bytes = Counter("received_bytes", "Bytes of accepted messages.", **kw)
        self.tls_handshakes = Counter("tls_handshakes", "TLS handshakes.", ["result"], **kw)
        self.auth = Counter("auth", "AUTH attempts.", ["mechanism", "result"], **kw)
        self.hook_duration = Histogram("hook_duration_seconds", "Time hooks took to answer.", ["hook"],
                                       buckets=_HOOK_BUCKETS, **kw)
        self.session_duration = Histogram("session_duration_seconds", "Length of client sessions.",
                                          buckets=_SESSION_BUCKETS, **kw)
        self._open: Dict[str, Tuple[str, float]] = {}

    def observe(self, server: Any) -> Callable[[], None]:
        """
        Count what C{server} does from now on.

        @return: a function that stops counting it.
        """
        clock = server.reactor
        removers: List[Callable[[], None]] = []

        def connect(session: Any) -> None:
            listener = (f"{session.local_address}:{session.local_port}" if session.local_address
                        else "local")
            self._open[session.id] = (listener, clock.seconds())
            self.connections.labels(listener).inc()
            self.connections_open.labels(listener).inc()

        def disconnect(session: Any) -> None:
            opened = self._open.pop(session.id, None)
            if opened is not None:
                self.connections_open.labels(opened[0]).dec()
                self.session_duration.observe(max(0.0, clock.seconds() - opened[1]))

        def reply(session: Any, verb: str, code: int, enhanced: Optional[str], text: str) -> None:
            if code == 354:
                return  # DATA's go-ahead: the final reply is counted
            self.commands.labels(verb if verb in _VERBS else "UNKNOWN", f"{code // 100}xx").inc()
            if code >= 400 and verb in ("DATA", "BDAT"):
                self.messages.labels("refused").inc()

        def message(session: Any, envelope: Any, size: int) -> None:
            self.messages.labels("accepted").inc()
            self.received_bytes.inc(size)

        def tls(session: Any, error: Optional[str]) -> None:
            self.tls_handshakes.labels("ok" if error is None else "failed").inc()

        def auth(session: Any, mechanism: str, username: Optional[str], code: int) -> None:
            self.auth.labels(mechanism, "success" if code < 400 else "failure").inc()

        def hook(session: Any, name: str, seconds: float) -> None:
            self.hook_duration.labels(name).observe(max(0.0, seconds))

        def refused(reason: str, address: str, session: Any) -> None:
            self.refusals.labels(reason).inc()

        for event, callback in (("connect", connect), ("disconnect", disconnect), ("reply", reply),
                                ("message", message), ("tls", tls), ("auth", auth), ("hook", hook),
                                ("refused", refused)):
            removers.append(server.observe(event, callback))

        def stop() -> None:
            for remove in removers:
                remove()
            removers.clear()

        return stop


def metrics_resource(registry: Any) -> Any:
    """The twisted.web resource that serves C{registry} (C{prometheus_client}'s own)."""
    from prometheus_client.twisted import MetricsResource

    return MetricsResource(registry)


def scrape_registry() -> Any:
    """The registry a scrape reads: in multiprocess mode, a collector over every process's files."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    directory = multiprocess_directory()
    if directory:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=directory)
    return registry


def process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (multiprocess mode)."""
    directory = multiprocess_directory()
    if directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, directory)
