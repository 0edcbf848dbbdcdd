"""
L{ActionQueue}, the dialogue's list of actions not yet performed.

In a module of its own so that it stays a Python class when the dialogue's
modules are compiled with mypyc (see C{setup.py}): mypyc cannot compile a
subclass of C{list} as a native class, and marking it non-native would need
C{mypy_extensions} at run time. Pure: no Twisted import.
"""

from __future__ import annotations

from typing import Any, List, Tuple

__all__ = ["ActionQueue"]


class ActionQueue(List[Tuple[Any, ...]]):
    """
    The actions not yet performed, oldest first: a list (56 bytes empty,
    where a C{deque} takes 760 in every idle connection) with C{deque}'s
    C{popleft}. It rarely holds more than a few actions.
    """

    __slots__ = ()

    def popleft(self) -> Tuple[Any, ...]:
        return self.pop(0)
