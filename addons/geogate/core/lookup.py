"""Looking addresses up: a DatabaseSet -> the facts of each address (and of the IPv4 it carries), cached."""

from __future__ import annotations

import copy

from maxminddb.errors import InvalidDatabaseError

from geogate.core.addresses import NO_NAT64
from geogate.core.addresses import Address
from geogate.core.addresses import IPAddress
from geogate.core.addresses import Nat64Prefixes
from geogate.core.addresses import classify
from geogate.core.cache import CLEAR
from geogate.core.cache import BoundedCache
from geogate.core.databases import DatabaseSet
from geogate.core.facts import AddressFacts
from geogate.core.facts import IPFacts
from geogate.core.geo import DatabaseInfo
from geogate.core.geo import GeoRecord


class FactsSource:
    """Looks addresses up in a DatabaseSet, with a cache per set (up to `cache_size` addresses).

    A new DatabaseSet (reload) gets a new FactsSource, so cached answers never outlive the
    databases that gave them. Addresses are classified with the policy's declared NAT64 prefixes
    (`nat64`): GateState binds them with with_nat64, so cached facts never outlive those either.
    """

    def __init__(self, databases: DatabaseSet, cache_size: int = 4096, nat64: Nat64Prefixes = NO_NAT64) -> None:
        self.databases = databases
        self.nat64 = nat64
        self.infos: tuple[DatabaseInfo, ...] = tuple(databases.infos)
        self.cache_size = cache_size
        # addresses.ip_key -> the whole AddressFacts (classification included): one probe per
        # address, with a key whose hash runs no Python code. Emptied when full (CLEAR): this
        # cache only serves an address decided again under another outcome key (another host
        # name, port or address list), so it need not be exact, and any eviction bookkeeping
        # would cost more on every new address than the occasional lost hit.
        self._cache: BoundedCache = BoundedCache(cache_size, CLEAR)

    def facts_of(self, ip: IPAddress, key: int) -> AddressFacts:
        """Facts for `ip` as it will be dialled (see addresses.classify); `key` is ip_key(ip)."""
        facts = self._cache.get(key)
        if facts is None:
            facts = self.facts(classify(ip, self.nat64))
            self._cache.put(key, facts)
        return facts

    def with_nat64(self, nat64: Nat64Prefixes) -> "FactsSource":
        """The same source (subclass and all) classifying with `nat64`, with an empty cache."""
        other = copy.copy(self)
        other.nat64 = nat64
        other._cache = BoundedCache(self.cache_size, CLEAR)
        return other

    def facts(self, address: Address) -> AddressFacts:
        """Facts for an already classified address, looked up now (not cached)."""
        own = self._lookup_ip(address.ip)
        embedded = self._lookup_ip(address.embedded_ipv4) if address.embedded_ipv4 else None
        return AddressFacts(address, own, embedded)

    def _lookup_ip(self, ip: IPAddress) -> IPFacts:
        records: list[GeoRecord] = []
        prefix_len = None
        for db in self.databases.databases:
            try:
                # the network is that of the first record: later databases need not give theirs
                if records:
                    rec = db.lookup(ip)
                else:
                    rec, found = db.find(ip)
                    if rec is not None:
                        prefix_len = found
            except (InvalidDatabaseError, ValueError, OSError) as e:
                return IPFacts(ip, tuple(records), f"lookup of {ip} in {db.name} failed: {e}", prefix_len)
            if rec is not None:
                records.append(rec)
        return IPFacts(ip, tuple(records), None, prefix_len)
