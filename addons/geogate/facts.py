"""Address -> what every database says about it (and about the IPv4 it carries), cached."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from maxminddb.errors import InvalidDatabaseError

from .addresses import Address
from .addresses import IPAddress
from .databases import DatabaseInfo
from .databases import DatabaseSet
from .databases import GeoRecord


@dataclass(slots=True)
class IPFacts:
    """The records every database holds for one IP, in database order."""

    ip: IPAddress
    records: tuple[GeoRecord, ...] = ()
    error: str | None = None

    def first(self, attr: str):
        for r in self.records:
            value = getattr(r, attr)
            if value:
                return value
        return None


@dataclass(slots=True)
class AddressFacts:
    """Facts for an address as dialled. `geo` is the view rules look at: for a transition form
    (IPv4-mapped, NAT64, 6to4, ...) it is the embedded IPv4; `own` is the IPv6 address itself."""

    address: Address
    own: IPFacts
    embedded: IPFacts | None = None

    @property
    def geo(self) -> IPFacts:
        return self.embedded if self.embedded is not None else self.own

    @property
    def error(self) -> str | None:
        return self.own.error or (self.embedded.error if self.embedded else None)


class FactsSource:
    """Looks addresses up in a DatabaseSet, with an LRU cache per set.

    A new DatabaseSet (reload) gets a new FactsSource, so cached answers never outlive the
    databases that gave them.
    """

    def __init__(self, databases: DatabaseSet, cache_size: int = 4096) -> None:
        self.databases = databases
        self.infos: tuple[DatabaseInfo, ...] = tuple(databases.infos)
        self.lookup_ip = lru_cache(maxsize=cache_size)(self._lookup_ip)

    def _lookup_ip(self, ip: IPAddress) -> IPFacts:
        records = []
        for db in self.databases.databases:
            try:
                rec = db.lookup(ip)
            except (InvalidDatabaseError, ValueError, OSError) as e:
                return IPFacts(ip, tuple(records), f"lookup of {ip} in {db.name} failed: {e}")
            if rec is not None:
                records.append(rec)
        return IPFacts(ip, tuple(records))

    def facts(self, address: Address) -> AddressFacts:
        own = self.lookup_ip(address.ip)
        embedded = self.lookup_ip(address.embedded_ipv4) if address.embedded_ipv4 else None
        return AddressFacts(address, own, embedded)

