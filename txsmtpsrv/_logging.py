# -*- test-case-name: tests.test_oplog -*-
"""
A C{Logger} that puts the session id into the text of every session's line,
and can tell whether anyone would keep an event before it is built.

The id is a structured field (C{session_id}) for JSON consumers, but text
logs only show C{log_format} and C{log_system}; an operator correlating
lines with C{grep} needs the id in the text. Twisted's convention for
per-connection context is the system (C{[SMTP,0,127.0.0.1]} in legacy
logging), so the id goes there: C{[txsmtpsrv#info 3f2a9c1e0b7d4c55]},
leaving C{log_format} (what tests and JSON readers match) unchanged.

Per-connection info lines (a connection's first line, the session summary)
cost several microseconds each to build and emit even when a level filter
drops them (issue 13), and a busy server makes thousands a second.
L{SessionLogger.wants} says whether any observer would keep one, so the
line is only built when one would.
"""

from __future__ import annotations

from functools import partial
from string import Formatter
from typing import Any, Dict, Tuple

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, LogPublisher
from twisted.logger._filter import shouldLogEvent
from twisted.logger._flatten import KeyFlattener
from twisted.logger._observer import bitbucketLogObserver

__all__ = ["SessionLogger", "session_system", "observer_wants", "instance_logger_wants", "log_prefix",
           "apply_format_specs"]


def log_prefix(obj: Any) -> str:
    """
    C{obj.logPrefix()}, or its class name when it has none: what a wrapper
    (the PROXY factory, the TLS record gatherer, implicit TLS's start-up
    protocol) names its log context after.
    """
    prefix = getattr(obj, "logPrefix", None)
    return prefix() if prefix is not None else type(obj).__name__


def session_system(session_id: str, level: LogLevel) -> str:
    """The C{log_system} of a session's event: C{txsmtpsrv#info <id>}."""
    return f"txsmtpsrv#{level.name} {session_id}"


#: namespace -> the names LogLevelFilterPredicate.logLevelForNamespace looks up, in its
#: order (the namespace, then each dotted prefix, longest first); "" is looked up last.
_lookups: Dict[str, Tuple[str, ...]] = {}


def _namespace_lookups(namespace: str) -> Tuple[str, ...]:
    names = _lookups.get(namespace)
    if names is None:
        segments = namespace.split(".")
        names = (namespace,) + tuple(".".join(segments[:i]) for i in range(len(segments) - 1, 0, -1))
        if len(_lookups) < 1024:  # namespaces are class names: few; bounded all the same
            _lookups[namespace] = names
    return names


#: LogLevel -> its order: comparing two LogLevels calls constantly's C{__lt__}
#: (Python); two lookups in this dict (the constants hash by identity) do not.
_RANKS: Dict[Any, int] = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}


def instance_logger_wants(instance: Any, level: Any, attribute: str = "log") -> bool:
    """
    C{observer_wants} for C{instance.log} (a C{Logger} class attribute) without
    reading C{instance.log}: C{Logger.__get__} builds a new C{Logger} on every
    access (~3 us), only to be asked for its observer and namespace, which are
    the descriptor's observer and the name of C{type(instance)}, as
    C{Logger.__get__} makes them. Anything but a plain class-level C{Logger}
    is read the ordinary way.
    """
    owner = type(instance)
    for klass in owner.__mro__:
        descriptor = klass.__dict__.get(attribute)
        if descriptor is not None:
            break
    if (isinstance(descriptor, Logger) and type(descriptor).__get__ is Logger.__get__
            and attribute not in getattr(instance, "__dict__", ())):
        return observer_wants(descriptor.observer, level, f"{owner.__module__}.{owner.__name__}")
    log = getattr(instance, attribute)
    return observer_wants(log.observer, level, log.namespace)


def observer_wants(observer: Any, level: Any, namespace: str, depth: int = 0) -> bool:
    """
    Whether C{observer} might keep an event of C{level} (a C{LogLevel}) from C{namespace}.

    Twisted has no public way to ask, so this looks at what the standard
    set-up is made of: a C{LogPublisher} fanning out to
    C{FilteringLogObserver}s with C{LogLevelFilterPredicate}s (what
    C{twistd}, C{txsmtpsrv.sink} and most programs configure). It answers
    False only when every path certainly drops the event; anything it does
    not recognise (another observer, another predicate, a changed Twisted)
    counts as wanting it, so a line is never lost, only built for nothing.
    """
    if depth > 8:
        return True
    if type(observer) is LogPublisher:
        observers = getattr(observer, "_observers", None)
        if not isinstance(observers, list):
            return True
        for o in observers:  # a loop, not any(generator): this runs for every connection
            if observer_wants(o, level, namespace, depth + 1):
                return True
        return False
    if type(observer) is FilteringLogObserver:
        should = getattr(observer, "_shouldLogEvent", None)
        if (getattr(observer, "_negativeObserver", None) is not bitbucketLogObserver
                or not isinstance(should, partial) or should.func is not shouldLogEvent or len(should.args) != 1):
            return True
        rank = _RANKS.get(level)
        for predicate in should.args[0]:
            if type(predicate) is not LogLevelFilterPredicate:
                return True  # it may say yes
            # predicate.logLevelForNamespace(namespace) without splitting and joining the
            # namespace each time, inline (this runs for every connection): no calls.
            levels = getattr(predicate, "_logLevelsByNamespace", None)
            if not namespace or type(levels) is not dict or "" not in levels:
                limit = predicate.logLevelForNamespace(namespace)  # not what we know: Twisted's own answer
            else:
                names = _lookups.get(namespace)
                if names is None:
                    names = _namespace_lookups(namespace)
                for name in names:
                    if name in levels:
                        limit = levels[name]
                        break
                else:
                    limit = levels[""]
            limit_rank = _RANKS.get(limit)
            if rank is None or limit_rank is None:
                if level < limit:
                    return False  # dropped here
            elif rank < limit_rank:
                return False  # dropped here
        return observer_wants(getattr(observer, "_observer", None), level, namespace, depth + 1)
    return True


class SessionLogger(Logger):
    """
    A C{Logger} whose events with a C{session_id} get a C{log_system} naming
    it; events without one are emitted unchanged.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        sid = kwargs.get("session_id")
        if sid and "log_system" not in kwargs:
            kwargs["log_system"] = session_system(str(sid), level)
        super().emit(level, format, **kwargs)

    def wants(self, level: Any) -> bool:
        """Whether an event of C{level} from this logger might be kept (see L{observer_wants})."""
        return observer_wants(self.observer, level, self.namespace)


def apply_format_specs(event: Dict[str, Any]) -> None:
    """
    An event read back from Twisted's JSON log (a worker's, relayed) is
    formatted from its flattened fields, each C{str(value)} without the
    format spec: the summary's C{duration={duration:.3f}s} read
    C{duration=0.01322174072265625s}. Format those fields again from the
    values the flattening kept beside them (as C{flattenEvent} names both).
    """
    flattened, text = event.get("log_flattened"), event.get("log_format")
    if not isinstance(flattened, dict) or not isinstance(text, str) or ":" not in text:
        return
    keys = KeyFlattener()  # one, as flattenEvent's: each key is counted apart
    for _, name, spec, conversion in Formatter().parse(text):
        if name is None:
            continue
        key, value_key = keys.flatKey(name, spec, conversion or "s"), keys.flatKey(name, spec, "")
        if spec and not conversion and value_key in flattened:
            try:
                flattened[key] = format(flattened[value_key], spec)
            except (TypeError, ValueError):
                pass  # not the type it was (a value JSON could not keep): its str() stays
