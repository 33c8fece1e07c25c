"""A bounded dictionary for the caches on the decision path."""

from __future__ import annotations

from collections import deque
from typing import Any


class FifoCache(dict):
    """A dict that keeps the `size` most recently inserted keys: read it with `get` (a plain
    dict lookup), insert with `put`, which drops the oldest key when full.

    First in, first out rather than least recently used: a hit costs nothing extra, and a miss
    costs a few C-level operations. (An OrderedDict costs several times more per insert, and
    popping a plain dict's first key slows down as deleted slots pile up at its front.)
    """

    __slots__ = ("size", "_order")

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._order: deque = deque()

    def put(self, key: Any, value: Any) -> None:
        """Insert a key that `get` just missed. (Should two threads race to insert the same key,
        it is queued twice and merely leaves the cache early.)"""
        order = self._order
        order.append(key)
        if len(order) > self.size:
            self.pop(order.popleft(), None)
        self[key] = value

    def clear(self) -> None:
        super().clear()
        self._order.clear()
