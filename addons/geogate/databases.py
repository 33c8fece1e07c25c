"""MMDB GeoIP databases: open, detect the schema, read one address into a GeoRecord.

Two schemas are read:
- MaxMind (GeoIP2/GeoLite2 Country, City, ASN, Anonymous-IP; DB-IP uses it too), interpreted with
  geoip2's models;
- flat (`country_code` at the top of each record, as in ip-location-db and IPinfo Lite), read with
  maxminddb directly.
The schema is detected from the records themselves, never from the file name or the type string.

Each database is read from a private snapshot of the file taken at load time: the reader mmaps the
snapshot, so a file rewritten in place cannot crash the process or change answers half-way, and
the sha256 reported is the hash of exactly the bytes in use.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import itertools
import os
import re
import tempfile
from dataclasses import dataclass
from dataclasses import field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import geoip2.models
import maxminddb
from maxminddb.errors import InvalidDatabaseError

from .addresses import IPAddress
from .errors import GeogateError

_CODE = re.compile(r"^[A-Z]{2}$")
_CONTINENT_OF: dict[str, str] = {
    k: v
    for k, v in json.loads(resources.files("geogate").joinpath("data/continents.json").read_text()).items()
    if not k.startswith("_")
}
_SAMPLE_RECORDS = 64


class DatabaseError(GeogateError):
    """A database that cannot be used; the message names the file."""


@dataclass(slots=True)
class GeoRecord:
    """What one database says about one address."""

    source: str
    country: str | None = None
    registered_country: str | None = None
    represented_country: str | None = None
    represented_type: str | None = None
    continent: str | None = None
    subdivisions: tuple[str, ...] = ()  # full ISO 3166-2 codes, largest first: ("GB-ENG",)
    asn: int | None = None
    as_org: str | None = None
    anycast: bool = False
    # the looked-up address and the record's prefix length: the network is derived on demand,
    # because building it for every lookup would cost more than the lookup itself
    found_at: tuple[IPAddress, int] | None = field(default=None, compare=False, repr=False)

    @property
    def network(self) -> str | None:
        if self.found_at is None:
            return None
        return str(ipaddress.ip_network(self.found_at, strict=False))


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    name: str
    path: str
    schema: str  # maxmind | flat
    kind: str  # country | city | asn | anonymous-ip | enterprise
    type: str  # metadata database_type
    build_epoch: int
    sha256: str
    ip_version: int
    node_count: int
    description: str
    has_country: bool
    has_subdivisions: bool
    has_asn: bool


@lru_cache(maxsize=1024)
def _code(value: Any) -> str | None:
    """An ISO code from a database field, upper-cased; anything else (a name, junk) is None."""
    if isinstance(value, str):
        value = value.strip().upper()
        if _CODE.match(value):
            return value
    return None


def _detect(reader: maxminddb.Reader, path: Path) -> tuple[str, str]:
    """(schema, kind) from the keys of the first records."""
    keys: set[str] = set()
    for _net, record in itertools.islice(reader, _SAMPLE_RECORDS):
        if isinstance(record, dict):
            keys.update(record)
    if "country_code" in keys:
        return "flat", "country"
    if "autonomous_system_number" in keys:
        return "maxmind", "asn"
    if keys & {"city", "subdivisions", "location", "postal"}:
        return "maxmind", "city"
    if keys & {"country", "registered_country", "represented_country", "continent"}:
        return "maxmind", "country"
    if keys & {"is_anonymous", "is_anonymous_vpn", "is_tor_exit_node", "is_hosting_provider"}:
        return "maxmind", "anonymous-ip"
    if not keys:
        raise DatabaseError(f"{path}: the database holds no records")
    raise DatabaseError(
        f"{path}: unknown record layout (keys {', '.join(sorted(keys)[:6])}); expected a MaxMind "
        "Country/City/ASN database or a flat database with `country_code`"
    )


class Database:
    """One opened MMDB file. `lookup` is safe to call from any thread."""

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        data = _read(self.path)
        self._reader = _open_snapshot(self.path, data)
        meta = self._reader.metadata()
        try:
            self.schema, self.kind = _detect(self._reader, self.path)
        except InvalidDatabaseError as e:
            raise DatabaseError(f"{self.path}: corrupt MaxMind DB file ({e})") from None
        self.info = DatabaseInfo(
            name=name or self.path.name.removesuffix(".mmdb"),
            path=str(self.path),
            schema=self.schema,
            kind=self.kind,
            type=str(meta.database_type),
            build_epoch=int(meta.build_epoch),
            sha256=hashlib.sha256(data).hexdigest(),
            ip_version=int(meta.ip_version),
            node_count=int(meta.node_count),
            description=str((meta.description or {}).get("en", "")),
            has_country=self.kind in ("country", "city", "enterprise"),
            has_subdivisions=self.kind in ("city", "enterprise"),
            has_asn=self.kind == "asn" or (self.schema == "flat" and self._flat_has_asn()),
        )
        self._read_record = {
            ("flat", "country"): self._flat,
            ("maxmind", "asn"): self._asn,
            ("maxmind", "anonymous-ip"): self._anonymous,
        }.get((self.schema, self.kind), self._maxmind)

    @property
    def name(self) -> str:
        return self.info.name

    def _flat_has_asn(self) -> bool:
        return any(
            isinstance(rec, dict) and "asn" in rec
            for _n, rec in itertools.islice(self._reader, _SAMPLE_RECORDS)
        )

    def lookup(self, ip: IPAddress) -> GeoRecord | None:
        """The record for `ip`, or None when the database has none (or cannot hold the family).

        Raises InvalidDatabaseError when the file is corrupt at this record: callers must treat
        that as a lookup error (fail closed), never as "no record".
        """
        if ip.version == 6 and self.info.ip_version == 4:
            return None
        record, prefix_len = self._reader.get_with_prefix_len(ip)
        if not isinstance(record, dict):
            return None
        return self._read_record(ip, record, prefix_len)

    def _flat(self, ip: IPAddress, rec: dict[str, Any], prefix_len: int) -> GeoRecord:
        asn = rec.get("asn")
        if isinstance(asn, str) and asn.upper().startswith("AS"):
            asn = asn[2:]
        try:
            asn = int(asn) if asn not in (None, "") else None
        except (TypeError, ValueError):
            asn = None
        country = _code(rec.get("country_code"))
        return GeoRecord(
            source=self.name,
            country=country,
            # flat databases rarely carry a continent; derive it so `continents` rules work
            continent=_code(rec.get("continent_code")) or _CONTINENT_OF.get(country),
            asn=asn,
            as_org=rec.get("as_name") if isinstance(rec.get("as_name"), str) else None,
            found_at=(ip, prefix_len),
        )

    def _maxmind(self, ip: IPAddress, rec: dict[str, Any], prefix_len: int) -> GeoRecord:
        model = geoip2.models.City(["en"], ip_address=ip, prefix_len=prefix_len, **rec)
        country = _code(model.country.iso_code)
        subdivisions = tuple(
            f"{country}-{s.iso_code.upper()}"
            for s in model.subdivisions
            if country and s.iso_code
        )
        represented = model.represented_country
        return GeoRecord(
            source=self.name,
            country=country,
            registered_country=_code(model.registered_country.iso_code),
            represented_country=_code(represented.iso_code),
            represented_type=represented.type,
            continent=_code(model.continent.code),
            subdivisions=subdivisions,
            anycast=bool(model.traits.is_anycast),
            found_at=(ip, prefix_len),
        )

    def _asn(self, ip: IPAddress, rec: dict[str, Any], prefix_len: int) -> GeoRecord:
        model = geoip2.models.ASN(ip, prefix_len=prefix_len, **rec)
        return GeoRecord(
            source=self.name,
            asn=model.autonomous_system_number,
            as_org=model.autonomous_system_organization,
            found_at=(ip, prefix_len),
        )

    def _anonymous(self, ip: IPAddress, rec: dict[str, Any], prefix_len: int) -> GeoRecord:
        return GeoRecord(source=self.name, found_at=(ip, prefix_len))

    def count_networks(self) -> int:
        """Number of networks with a record (walks the whole tree: seconds for a large file)."""
        return sum(1 for _ in self._reader)

    def close(self) -> None:
        self._reader.close()


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatabaseError(f"database {path} does not exist") from None
    except IsADirectoryError:
        raise DatabaseError(f"database {path} is a directory, not an .mmdb file") from None
    except OSError as e:
        raise DatabaseError(f"cannot read database {path}: {e.strerror or e}") from None
    if not data:
        raise DatabaseError(f"database {path} is empty")
    return data


def _open_snapshot(path: Path, data: bytes) -> maxminddb.Reader:
    fd, snapshot = tempfile.mkstemp(prefix="geogate-", suffix=".mmdb")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return maxminddb.open_database(snapshot, maxminddb.MODE_AUTO)
        except (InvalidDatabaseError, ValueError):
            raise DatabaseError(
                f"{path} is not a MaxMind DB (.mmdb) file, or it is truncated or corrupt"
            ) from None
    finally:
        os.unlink(snapshot)  # the reader keeps its mapping; nothing is left on disk


@dataclass
class DatabaseSet:
    """The databases of one configuration, in the order the user gave them."""

    databases: list[Database] = field(default_factory=list)

    @classmethod
    def open(cls, paths: list[str | os.PathLike[str]]) -> "DatabaseSet":
        if not paths:
            raise DatabaseError("no GeoIP database configured")
        opened: list[Database] = []
        seen: dict[str, int] = {}
        try:
            for p in paths:
                base = Path(p).name.removesuffix(".mmdb")
                seen[base] = seen.get(base, 0) + 1
                name = base if seen[base] == 1 else f"{base}#{seen[base]}"
                opened.append(Database(p, name=name))
        except BaseException:
            for db in opened:
                db.close()
            raise
        return cls(opened)

    @property
    def infos(self) -> list[DatabaseInfo]:
        return [db.info for db in self.databases]

    @property
    def has_subdivisions(self) -> bool:
        return any(db.info.has_subdivisions for db in self.databases)

    @property
    def has_asn(self) -> bool:
        return any(db.info.has_asn for db in self.databases)

    @property
    def has_country(self) -> bool:
        return any(db.info.has_country for db in self.databases)

    def close(self) -> None:
        for db in self.databases:
            db.close()
