"""
The per-connection "would anyone keep this info line?" check (issue 13): its
fast namespace lookup gives what C{LogLevelFilterPredicate.logLevelForNamespace}
gives, a level change counts at once (nothing is cached but the namespace's
dotted prefixes), and C{instance_logger_wants} answers what reading
C{instance.log} and asking C{observer_wants} would.
"""

from __future__ import annotations

from typing import Any, List

from hypothesis import given, settings, strategies as st
from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, LogPublisher

from txsmtpsrv._logging import SessionLogger, instance_logger_wants, observer_wants
from txsmtpsrv._oplog import SessionLog
from txsmtpsrv._protocol import SMTPServerProtocol

LEVELS = list(LogLevel.iterconstants())
segment = st.sampled_from(["txsmtpsrv", "_protocol", "SMTPServerProtocol", "a", "b", "x.y", ""])
namespaces = st.lists(segment, min_size=0, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(default=st.sampled_from(LEVELS), settings_=st.lists(st.tuples(namespaces, st.sampled_from(LEVELS)), max_size=5),
       asked=namespaces)
def test_level_lookup_is_twisteds(default: Any, settings_: List[Any], asked: str) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=default)
    for namespace, level in settings_:
        predicate.setLogLevelForNamespace(namespace, level)
    limit = predicate.logLevelForNamespace(asked)
    observer = FilteringLogObserver(lambda event: None, [predicate])
    for level in LEVELS:
        assert observer_wants(observer, level, asked) is not (level < limit)


def test_a_level_change_counts_at_once() -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    publisher = LogPublisher(FilteringLogObserver(lambda event: None, [predicate]))
    ns = "txsmtpsrv._protocol.SMTPServerProtocol"
    assert not observer_wants(publisher, LogLevel.info, ns)
    predicate.setLogLevelForNamespace("txsmtpsrv._protocol", LogLevel.info)
    assert observer_wants(publisher, LogLevel.info, ns)
    predicate.clearLogLevels()
    assert not observer_wants(publisher, LogLevel.info, ns)
    publisher.addObserver(lambda event: None)  # an observer that keeps everything
    assert observer_wants(publisher, LogLevel.info, ns)


class Sub(SMTPServerProtocol):
    """A subclass: Logger.__get__ names it, not the class the Logger is declared on."""


class OwnGet(Logger):
    def __get__(self, instance: object, owner: Any = None) -> Any:
        return Logger("somewhere.else", observer=self.observer)


def test_instance_logger_wants_is_reading_the_attribute() -> None:
    """The same answer as reading instance.log, for every level, whatever kind of attribute C{log} is."""
    sub_namespace = f"{Sub.__module__}.Sub"
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    predicate.setLogLevelForNamespace(sub_namespace, LogLevel.debug)
    predicate.setLogLevelForNamespace("somewhere", LogLevel.error)
    publisher = LogPublisher(FilteringLogObserver(lambda event: None, [predicate]))

    class Plain:
        log = SessionLogger("x", observer=publisher)

    class WithOwnGet:
        log = OwnGet("x", observer=publisher)

    shadowed = Plain()
    shadowed.__dict__["log"] = Logger(sub_namespace, observer=publisher)
    sub = Sub.__new__(Sub)
    instances = [SMTPServerProtocol.__new__(SMTPServerProtocol), sub, SessionLog.__new__(SessionLog),
                 Plain(), WithOwnGet(), shadowed]

    def check() -> None:
        for instance in instances:
            for level in LEVELS:
                log = instance.log
                assert instance_logger_wants(instance, level) is observer_wants(log.observer, level, log.namespace), (
                    instance, level)

    check()  # the real classes on the global publisher, and the three kinds of attribute
    Sub.log = SessionLogger(observer=publisher)  # type: ignore[misc]
    try:
        check()
        assert instance_logger_wants(sub, LogLevel.debug)  # named after Sub, which is at debug
        assert not instance_logger_wants(WithOwnGet(), LogLevel.warn)  # its own __get__ names somewhere.else
        assert instance_logger_wants(shadowed, LogLevel.debug)  # the instance's own Logger
    finally:
        del Sub.log


def test_log_prefix_asks_the_object_else_names_its_class() -> None:
    """What the wrappers (PROXY factory, TLS record gatherer, implicit TLS start-up) name their log context after."""
    from txsmtpsrv._logging import log_prefix

    class Named:
        def logPrefix(self) -> str:
            return "named"

    class Plain:
        pass

    assert log_prefix(Named()) == "named"
    assert log_prefix(Plain()) == "Plain"
