"""What the databases say about one address as dialled (and about the IPv4 it carries); see lookup.FactsSource."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from typing import overload

from geogate.core.addresses import Address
from geogate.core.addresses import IPAddress
from geogate.core.geo import GeoRecord
from geogate.core.geo import network_text


@dataclass(slots=True)
class IPFacts:
    """The records every database holds for one IP, in database order.

    The records are shared between addresses (see geo.GeoRecord); what is particular to this
    IP is `prefix_len`, the length of the network the first record covers.
    """

    ip: IPAddress
    records: tuple[GeoRecord, ...] = ()
    error: str | None = None
    prefix_len: int | None = None

    @property
    def network(self) -> str | None:
        """The network of the first record, e.g. "1.2.3.0/24"."""
        if not self.records or self.prefix_len is None:
            return None
        return network_text(self.ip, self.prefix_len)

    @overload
    def first(self, attr: Literal["asn"]) -> int | None: ...
    @overload
    def first(self, attr: TextField) -> str | None: ...

    def first(self, attr: str) -> str | int | None:
        """The first non-empty value of a GeoRecord field, in database order ("network" too)."""
        if attr == "network":
            return self.network
        for r in self.records:
            value: str | int | None = getattr(r, attr)
            if value:
                return value
        return None


# The GeoRecord fields IPFacts.first reads that hold text, and the network the first record covers.
TextField = Literal["country", "registered_country", "represented_country", "continent", "as_org", "network"]


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
