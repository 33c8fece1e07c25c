"""Built-in country groups (`@eu`, `@us-doj-countries-of-concern`, ...), read from groups.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any

from geogate.policy.yamlnodes import compose
from geogate.policy.yamlnodes import plain


@dataclass(frozen=True, slots=True)
class BuiltinGroup:
    name: str
    title: str
    citation: str
    source_url: str
    as_of: date
    countries: frozenset[str]  # members, includes expanded
    regions: frozenset[str]  # ISO 3166-2 codes
    conditional: dict[str, str]  # not members: coverage depends on the recipient
    notes: str = ""

    def age_days(self, today: date) -> int:
        return (today - self.as_of).days


# A list older than this is reported as possibly stale by `geogate groups` and `geogate check`.
STALE_AFTER_DAYS = 183


@lru_cache(maxsize=1)
def builtin_groups() -> dict[str, BuiltinGroup]:
    source = resources.files("geogate.policy").joinpath("groups.yaml")
    raw = plain(compose(source.read_text(), "groups.yaml"))  # text scalars: `NO` stays Norway
    entries: dict[str, Any] = raw["groups"]  # YAML as plain values

    def members(name: str, seen: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
        if name in seen:
            raise ValueError(f"groups.yaml: include cycle {' -> '.join(seen + (name,))}")
        entry = entries[name]
        countries = {str(c).upper() for c in entry.get("countries") or ()}
        regions = {str(r).upper() for r in entry.get("regions") or ()}
        for inc in entry.get("include") or ():
            c, r = members(inc, seen + (name,))
            countries |= c
            regions |= r
        return countries, regions

    groups = {}
    for name, entry in entries.items():
        countries, regions = members(name)
        as_of = entry["as_of"]
        groups[name] = BuiltinGroup(
            name=name,
            title=str(entry.get("title", "")),
            citation=str(entry.get("citation", "")),
            source_url=str(entry.get("source_url", "")),
            as_of=as_of if isinstance(as_of, date) else date.fromisoformat(str(as_of)),
            countries=frozenset(countries),
            regions=frozenset(regions),
            conditional={str(k).upper(): str(v) for k, v in (entry.get("conditional") or {}).items()},
            notes=str(entry.get("notes", "") or "").strip(),
        )
    return groups
