"""geogate.core.cache: BoundedCache (the decision caches, FIFO or CLEAR) and TtlLruCache (the DNS cache)."""

from __future__ import annotations

import pytest

from geogate.core.cache import CLEAR
from geogate.core.cache import FIFO
from geogate.core.cache import BoundedCache
from geogate.core.cache import TtlLruCache


def test_keeps_the_most_recent_inserts() -> None:
    cache = BoundedCache(3)
    for key in "abcde":
        assert cache.get(key) is None
        cache.put(key, key.upper())
    assert dict(cache) == {"c": "C", "d": "D", "e": "E"}
    assert cache.get("e") == "E" and cache.get("a") is None


def test_a_hit_does_not_refresh_a_key() -> None:
    """First in, first out: reading a key does not keep it longer (no bookkeeping on a hit)."""
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "a" not in cache and dict(cache) == {"b": 2, "c": 3}


def test_a_key_put_again_keeps_its_place_and_its_new_value() -> None:
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("a", 2)
    cache.put("b", 3)
    assert dict(cache) == {"a": 2, "b": 3}  # queued once: "a" is still one of the two
    cache.put("c", 4)
    assert dict(cache) == {"b": 3, "c": 4}  # and still the first in, so the first out


def test_a_key_raced_in_twice_leaves_early_but_never_overfills() -> None:
    """Two threads missing the same key both queue it: harmless."""
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache._order.append("a")  # what the second of two racing puts leaves behind
    cache.put("b", 2)
    assert len(cache) <= 2 and cache.get("b") == 2
    for i in range(10):
        cache.put(i, i)
    assert len(cache) == 2 and dict(cache) == {8: 8, 9: 9}


def test_clear() -> None:
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.clear()
    assert not cache
    cache.put("b", 2)
    cache.put("c", 3)
    cache.put("d", 4)
    assert dict(cache) == {"c": 3, "d": 4}


def test_clear_mode_empties_the_cache_when_full() -> None:
    cache = BoundedCache(3, CLEAR)
    for key in "abc":
        cache.put(key, key.upper())
    cache.put("a", "again")  # a key it holds: replaced, nothing dropped
    assert dict(cache) == {"a": "again", "b": "B", "c": "C"}
    cache.put("d", "D")
    assert dict(cache) == {"d": "D"}
    for key in "efgh":
        cache.put(key, key)
    assert len(cache) <= 3 and cache.get("h") == "h"


def test_a_fifo_cache_of_size_zero_keeps_nothing() -> None:
    cache = BoundedCache(0)
    for key in "abc":
        cache.put(key, key)
    assert not cache


def test_an_unknown_eviction_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="evict"):
        BoundedCache(3, "lru")
    assert BoundedCache(3).evict == FIFO


# -- TtlLruCache: the DNS cache ------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ttl_entries_expire_without_being_asked_for_again() -> None:
    clock = Clock()
    cache = TtlLruCache(10_000, 10**9, clock=clock)
    for i in range(1000):
        cache.put(f"nx{i}.test", "no such host", 30.0, 100)
    assert len(cache) == 1000 and cache.bytes == 100_000
    clock.now += 30.0
    cache.put("one-more.test", "no such host", 30.0, 100)  # an insert sweeps what has expired
    assert len(cache) == 1 and cache.bytes == 100
    assert cache.get("nx5.test") is None


def test_ttl_an_expired_entry_is_a_miss() -> None:
    clock = Clock()
    cache = TtlLruCache(10, 10_000, clock=clock)
    cache.put("a", "A", 5.0, 10)
    assert cache.get("a") == ("A", 105.0)
    clock.now += 5.0
    assert cache.get("a") is None and len(cache) == 0 and cache.bytes == 0


def test_ttl_lru_evicts_the_least_recently_used() -> None:
    cache = TtlLruCache(3, 10_000, clock=Clock())
    for key in "abc":
        cache.put(key, key.upper(), 60.0, 10)
    assert cache.get("a") == ("A", 160.0)  # a is now the most recently used
    cache.put("d", "D", 60.0, 10)
    assert "b" not in cache and {"a", "c", "d"} == {k for k in "abcd" if k in cache}


def test_ttl_lru_bounds_the_bytes() -> None:
    cache = TtlLruCache(1000, 1000, clock=Clock())
    for i in range(50):
        cache.put(i, "x", 60.0, 300)
        assert cache.bytes <= 1000
    assert len(cache) == 3 and list(cache._data) == [47, 48, 49]
    cache.put("huge", "x", 60.0, 1001)  # larger than the whole bound: not kept
    assert "huge" not in cache and cache.bytes == 900


def test_ttl_replacing_a_key_keeps_one_entry_and_the_heap_small() -> None:
    clock = Clock()
    cache = TtlLruCache(10, 10_000, clock=clock)
    for i in range(10_000):
        cache.put("same", i, 60.0, 10)
    assert len(cache) == 1 and cache.bytes == 10 and cache.get("same") == (9999, 160.0)
    assert len(cache._heap) <= len(cache) + len(cache) // 4 + 64
    clock.now += 60.0
    assert cache.purge() == 1 and len(cache) == 0 and cache.bytes == 0
