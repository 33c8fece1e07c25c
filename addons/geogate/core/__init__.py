"""The core: address facts, GeoIP databases, the decision engine and its record.

Depends on nothing else in geogate. Nothing here does I/O at import; `decide` and the types it
works on (`rules`, `facts`, `geo`) load no database library at all.
"""
