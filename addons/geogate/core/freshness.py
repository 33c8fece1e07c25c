"""How old the databases are against `geo.max_age`: when they turn stale, and what to say then.

Age is counted from each database's metadata build time (build_epoch), the only date every MMDB
carries, whoever wrote it (the bundled databases, MaxMind's geoipupdate, any other writer). The
oldest database decides: a decision reads every database, so one stale file makes it stale.
A build time that is not a usable date (0, past the calendar, in the future) has an age nobody can
tell; under a `geo.max_age` it counts as stale, since freshness is exactly what cannot be shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from geogate.core.geo import DatabaseInfo
from geogate.core.geo import build_date
from geogate.core.rules import OnStale
from geogate.core.rules import Policy

DAY = 86400


def age_text(seconds: int) -> str:
    """`geo.max_age` as the policy spells it: 45d, 36h, 6w."""
    if seconds % (7 * DAY) == 0:
        return f"{seconds // (7 * DAY)}w"
    if seconds % DAY == 0:
        return f"{seconds // DAY}d"
    return f"{seconds // 3600}h"


@dataclass(frozen=True, slots=True)
class Limit:
    """What a loaded state knows once: when its databases turn stale, and the words for it."""

    max_age: int | None  # seconds; None: no limit, never stale
    on_stale: OnStale
    database: str | None  # the database that turns stale first
    built: int | None  # its build_epoch, when a usable time
    stale_at: float  # time.time() from which decisions are stale (inf: never; -inf: always)
    warning: str | None  # what each stale decision records

    def stale(self, wall: float) -> bool:
        return wall >= self.stale_at


def limit_of(policy: Policy, infos: Sequence[DatabaseInfo], now: float) -> Limit:
    """The staleness limit of `policy` over these databases (`now` only tells a build time in
    the future from a usable one)."""
    usable = [i for i in infos if build_date(i.build_epoch) is not None and i.build_epoch <= now]
    oldest = min(usable, key=lambda i: i.build_epoch) if usable else None
    name, built = (oldest.name, oldest.build_epoch) if oldest is not None else (None, None)
    if policy.max_age is None or not infos:
        return Limit(None, policy.on_stale, name, built, float("inf"), None)
    limit = age_text(policy.max_age)
    unusable = [i for i in infos if i not in usable]
    if unusable:
        i = unusable[0]
        return Limit(policy.max_age, policy.on_stale, i.name, built, float("-inf"),
                     f"database {i.name} has no usable build time (build_epoch {i.build_epoch}), so its age "
                     f"cannot be held to geo.max_age {limit}")
    assert oldest is not None and built is not None
    return Limit(policy.max_age, policy.on_stale, name, built, float(built + policy.max_age),
                 f"database {name} (built {build_date(built)}) is older than geo.max_age {limit}")


@dataclass(frozen=True, slots=True)
class Freshness:
    """The staleness of a state at one moment, for metrics, `geogate db info` and the event log."""

    stale: bool
    on_stale: OnStale
    max_age: int | None  # seconds
    age: float | None  # seconds since the oldest database's build time; None: cannot be told
    database: str | None  # the oldest database (or the one whose age cannot be told)
    stale_at: float | None  # time.time() at which it turns (or turned) stale; None: never
    warning: str | None  # set while stale

    @classmethod
    def of(cls, limit: Limit, wall: float) -> "Freshness":
        stale = limit.stale(wall)
        age = wall - limit.built if limit.built is not None else None
        stale_at = None if limit.stale_at in (float("inf"), float("-inf")) else limit.stale_at
        return cls(stale, limit.on_stale, limit.max_age, age, limit.database, stale_at,
                   limit.warning if stale else None)
