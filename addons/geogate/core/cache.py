"""Bounded caches: BoundedCache for the decision path, TtlLruCache for DNS answers (entries that
expire, bounded in bytes as well)."""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections import deque
from typing import Any
from typing import Callable

FIFO = "fifo"
CLEAR = "clear"


class BoundedCache(dict[Any, Any]):
    """A dict of at most `size` entries: read it with `get` (a plain dict lookup, so a hit costs
    nothing extra), insert with `put`, which makes room when the cache is full in one of two ways,
    chosen when it is made (`evict`):

    - FIFO: drop the key inserted first. A miss costs a few C-level operations (an OrderedDict
      costs several times more per insert, and popping a plain dict's first key slows down as
      deleted slots pile up at its front). For caches whose hits are worth keeping.
    - CLEAR: empty the whole cache. A miss costs no bookkeeping at all; for caches that need not
      be exact, where the occasional lost hit costs less than any bookkeeping on every insert.
    """

    __slots__ = ("_order", "evict", "size")

    def __init__(self, size: int, evict: str = FIFO) -> None:
        if evict not in (FIFO, CLEAR):
            raise ValueError(f"evict must be {FIFO!r} or {CLEAR!r}, not {evict!r}")
        super().__init__()
        self.size = size
        self.evict = evict
        self._order: deque[Any] | None = deque() if evict == FIFO else None

    def put(self, key: Any, value: Any) -> None:
        """Insert `key` (a key `get` just missed, or replace one in place). Should two threads
        race to insert the same new key, it is queued twice and merely leaves the cache early."""
        order = self._order
        if order is None:
            if len(self) >= self.size and key not in self:
                super().clear()
            self[key] = value
            return
        if key not in self:
            order.append(key)
        self[key] = value
        if len(order) > self.size:
            self.pop(order.popleft(), None)

    def clear(self) -> None:
        super().clear()
        if self._order is not None:
            self._order.clear()


class TtlLruCache:
    """A cache whose entries expire, bounded in entries and in (approximate) bytes.

    - `get` returns (value, expires) for a live entry and marks it recently used; an expired
      entry is dropped there and then.
    - `put` stores a value for `ttl` seconds with the caller's estimate of its size in bytes. It
      first drops every entry that has expired (a heap of expiry times, so a name nobody asks for
      again still leaves on time: amortised O(log n) per insert), then the least recently used
      entries while there are more than `max_entries` or more than `max_bytes`. A value larger than
      `max_bytes` on its own is not kept.
    `cache[key]` is the raw entry (expires, value, size, seq), for tests and tools.
    """

    __slots__ = ("max_entries", "max_bytes", "bytes", "clock", "_data", "_heap", "_seq")

    def __init__(self, max_entries: int, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.clock = clock
        self._data: OrderedDict[Any, tuple[float, Any, int, int]] = OrderedDict()
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data

    def __getitem__(self, key: Any) -> tuple[float, Any, int, int]:
        return self._data[key]

    def get(self, key: Any, now: float | None = None) -> tuple[Any, float] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= (self.clock() if now is None else now):
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return entry[1], entry[0]

    def put(self, key: Any, value: Any, ttl: float, size: int, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if key in self._data:
            self._drop(key)
        self.purge(now)
        if ttl <= 0 or size > self.max_bytes or self.max_entries <= 0:
            return
        self._seq += 1
        expires = now + ttl
        self._data[key] = (expires, value, size, self._seq)
        self.bytes += size
        heapq.heappush(self._heap, (expires, self._seq, key))
        self.shrink()

    def shrink(self) -> None:
        """Evict least recently used entries until both bounds hold."""
        data = self._data
        while data and (len(data) > self.max_entries or self.bytes > self.max_bytes):
            _key, entry = data.popitem(last=False)
            self.bytes -= entry[2]
        if len(self._heap) > len(data) + len(data) // 4 + 64:  # evicted and replaced entries pile up: rebuild
            self._heap = [(e[0], e[3], k) for k, e in data.items()]
            heapq.heapify(self._heap)

    def purge(self, now: float | None = None) -> int:
        """Drop every expired entry; how many were dropped."""
        now = self.clock() if now is None else now
        heap, data, dropped = self._heap, self._data, 0
        while heap and heap[0][0] <= now:
            _expires, seq, key = heapq.heappop(heap)
            entry = data.get(key)
            if entry is not None and entry[3] == seq:
                del data[key]
                self.bytes -= entry[2]
                dropped += 1
        return dropped

    def pop(self, key: Any) -> None:
        if key in self._data:
            self._drop(key)

    def _drop(self, key: Any) -> None:
        entry = self._data.pop(key)
        self.bytes -= entry[2]  # its heap item goes when it expires or at the next rebuild

    def clear(self) -> None:
        self._data.clear()
        self._heap.clear()
        self.bytes = 0
