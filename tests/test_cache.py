"""geogate.cache.FifoCache: the bounded dictionary of the decision caches."""

from __future__ import annotations

from geogate.cache import FifoCache


def test_keeps_the_most_recent_inserts() -> None:
    cache = FifoCache(3)
    for key in "abcde":
        assert cache.get(key) is None
        cache.put(key, key.upper())
    assert dict(cache) == {"c": "C", "d": "D", "e": "E"}
    assert cache.get("e") == "E" and cache.get("a") is None


def test_a_hit_does_not_refresh_a_key() -> None:
    """First in, first out: reading a key does not keep it longer (no bookkeeping on a hit)."""
    cache = FifoCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "a" not in cache and dict(cache) == {"b": 2, "c": 3}


def test_a_key_put_twice_leaves_early_but_never_overfills() -> None:
    """Two threads missing the same key both put it: harmless."""
    cache = FifoCache(2)
    cache.put("a", 1)
    cache.put("a", 1)
    cache.put("b", 2)
    assert len(cache) <= 2 and cache.get("b") == 2
    for i in range(10):
        cache.put(i, i)
    assert len(cache) == 2 and dict(cache) == {8: 8, 9: 9}


def test_clear() -> None:
    cache = FifoCache(2)
    cache.put("a", 1)
    cache.clear()
    assert not cache
    cache.put("b", 2)
    cache.put("c", 3)
    cache.put("d", 4)
    assert dict(cache) == {"c": 3, "d": 4}
