"""
What a bench.py run is made of: the servers' names (txsmtpsrv, its
``@REACTOR`` and ``+mypyc`` variants, the peers), the clients and scenarios,
the workload sizes (L{Config}) and the figures reported (L{Figure}). Every
other bench.py module reads them from here, so a name or a size is defined
once.
"""

from __future__ import annotations

from dataclasses import dataclass

import _mypyc
import _peers

KIB = 1024
MIB = 1024 * 1024
SUBJECT = "txsmtpsrv"
PEERS = tuple(k for k in _peers.KINDS if k != SUBJECT)
CLIENTS = ("asyncio", "smtp-source")
#: Scenarios that smtp-source drives; the others keep the asyncio client (no idle/latency mode).
SMTP_SOURCE_SCENARIOS = ("persist", "churn", "large")
SCENARIOS = ("persist", "churn", "large", "idle", "latency")


def base_kind(server: str) -> str:
    """C{txsmtpsrv+mypyc@smtpsrv-epoll} -> C{txsmtpsrv}: the _peers.py kind of a server name."""
    return _mypyc.split(server.partition("@")[0])[0]


def is_mypyc(server: str) -> bool:
    """C{txsmtpsrv+mypyc} (or C{txsmtpsrv+mypyc@NAME}): the mypyc-compiled build (bench/_mypyc.py)."""
    return _mypyc.split(server.partition("@")[0])[1]


def is_subject(server: str) -> bool:
    """txsmtpsrv itself or txsmtpsrv on a named reactor (C{txsmtpsrv@NAME})."""
    return base_kind(server) == SUBJECT


@dataclass
class Config:
    """Workload sizes; ``quick()`` shrinks them for a smoke run."""

    repeat: int = 3
    pipelining: bool = False
    client: str = "asyncio"
    message_size: int = 1 * KIB
    persist_sessions: int = 20
    persist_per_connection: int = 100
    persist_total: int = 4000
    churn_sessions: int = 20
    churn_total: int = 2000
    large_size: int = 10 * MIB
    large_sessions: int = 4
    large_messages: int = 12
    idle_connections: int = 2000
    idle_concurrency: int = 32
    latency_transactions: int = 500
    #: Messages sent before persist/churn is measured (churn: half, one per connection).
    #: JIT runtimes need it: Node's persist messages cost ~360 µs in the first thousand,
    #: ~210 in the second, ~150 in the third and ~90-150 from then on.
    warmup_messages: int = 4000

    @classmethod
    def quick(cls) -> Config:
        """A run that exercises every scenario once, in well under a minute."""
        return cls(
            repeat=1,
            persist_total=2000,
            churn_total=400,
            large_messages=4,
            idle_connections=500,
            latency_transactions=100,
            warmup_messages=200,
        )


@dataclass(frozen=True)
class Figure:
    """One reported number: which scenario produces it and how to print it."""

    key: str
    scenario: str
    label: str
    unit: str
    digits: int
    ratio: bool = True  # False where the values are near zero and a ratio means nothing


def figures(cfg: Config) -> list[Figure]:
    """The table rows, in order (all are lower-is-better)."""
    size = f"{cfg.message_size // KIB} KiB"
    large = f"{cfg.large_size // MIB} MiB"
    return [
        Figure(
            "persist_cpu_us_per_msg",
            "persist",
            f"persist: {size}, {cfg.persist_per_connection} msg/conn, "
            f"{cfg.persist_sessions} sessions - server CPU per message",
            "µs",
            0,
        ),
        Figure(
            "churn_cpu_us_per_msg",
            "churn",
            f"churn: {size}, 1 msg/conn, {cfg.churn_sessions} sessions - server CPU per message",
            "µs",
            0,
        ),
        Figure(
            "large_cpu_ms_per_mib",
            "large",
            f"large: {large} messages, {cfg.large_sessions} sessions - server CPU per MiB",
            "ms",
            1,
        ),
        Figure(
            "large_peak_rss_mib",
            "large",
            f"large: peak server RSS while {large} messages stream",
            "MiB",
            1,
        ),
        Figure(
            "large_rss_growth_mib",
            "large",
            "large: peak RSS minus RSS before any large message",
            "MiB",
            1,
            ratio=False,
        ),
        Figure(
            "idle_kib_per_conn",
            "idle",
            f"idle: {cfg.idle_connections} connections after EHLO - server RSS per connection",
            "KiB",
            1,
        ),
        Figure(
            "latency_p50_us",
            "latency",
            f"latency: 1 client, lock-step, {size} - wall p50 per transaction",
            "µs",
            0,
        ),
    ]
