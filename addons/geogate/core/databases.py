"""MMDB GeoIP databases: open, detect the schema, read one address into a GeoRecord.

Two schemas are read, both from maxminddb's raw records:
- MaxMind (GeoIP2/GeoLite2 Country, City, ASN, Anonymous-IP; DB-IP uses it too), read the way
  geoip2's models read it (tests/test_databases.py checks the two agree on MaxMind's test files);
- flat (`country_code` at the top of each record, as in ip-location-db and IPinfo Lite).
The schema is detected from the records themselves, never from the file name or the type string.

A GeoRecord holds only what the record says, not where it was found, so records with the same
content are one shared object per database (most addresses share a handful of country records):
a lookup costs a dictionary probe instead of building a record.

Each database is read from a private snapshot of the file taken at load time: the reader mmaps the
snapshot, so a file rewritten in place cannot crash the process or change answers half-way, and
the sha256 reported is the hash of exactly the bytes in use.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Sequence

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from geogate.core import dbcheck
from geogate.core.addresses import IPAddress
from geogate.core.cache import CLEAR
from geogate.core.cache import BoundedCache
from geogate.core.errors import GeogateError
from geogate.core.geo import DatabaseInfo
from geogate.core.geo import DatabaseKind
from geogate.core.geo import DatabaseSchema
from geogate.core.geo import GeoRecord
from geogate.core.geo import clean_text

_CODE = re.compile(r"^[A-Z]{2}$")
_NONE: dict[str, Any] = {}  # an absent map in a MaxMind record; never written to
_CONTINENT_OF: dict[str, str] = {
    k: v
    for k, v in json.loads(resources.files("geogate").joinpath("data/continents.json").read_text()).items()
    if not k.startswith("_")
}
_SAMPLE_RECORDS = 64
_MAX_SHARED = 65536  # distinct records kept per database; a City database has ~100k, a country one ~250


class DatabaseError(GeogateError):
    """A database that cannot be used; the message names the file."""


def _meta_int(value: Any) -> int:
    """An integer metadata field; anything that is not an integer reads as 0."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _meta_description(value: Any) -> str:
    """The English description (else the first one that is a string), cleaned."""
    if isinstance(value, dict):
        text = value.get("en")
        if not isinstance(text, str):
            text = next((v for v in value.values() if isinstance(v, str)), "")
        return clean_text(text)
    return clean_text(value) if isinstance(value, str) else ""


@lru_cache(maxsize=1024)
def _code(value: Any) -> str | None:
    """An ISO code from a database field, upper-cased; anything else (a name, junk) is None."""
    if isinstance(value, str):
        code = value.strip().upper()
        if _CODE.match(code):
            return code
    return None


def _detect(reader: maxminddb.Reader, path: Path) -> tuple[DatabaseSchema, DatabaseKind]:
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
        sha256 = hashlib.sha256(data).hexdigest()
        self._reader = _open_snapshot(self.path, data, sha256)
        try:
            meta = self._reader.metadata()
            ip_version = meta.ip_version
            if ip_version not in (4, 6) or isinstance(ip_version, bool):
                raise DatabaseError(f"{self.path}: the metadata gives ip_version {clean_text(repr(ip_version), 40)}; "
                                    "an MMDB file is IPv4 (4) or IPv6 (6), so this one is corrupt")
            schema, kind = _detect(self._reader, self.path)
        except (InvalidDatabaseError, ValueError, TypeError, KeyError, IndexError, RecursionError, SystemError) as e:
            # ValueError: a string that is not UTF-8; TypeError: a map key that is not a string;
            # RecursionError: a search tree that loops; SystemError: maxminddb's C extension on a
            # damaged string's length. Either way the file is corrupt where the sample walked.
            self._reader.close()
            raise DatabaseError(f"{self.path}: corrupt MaxMind DB file ({type(e).__name__}: {clean_text(str(e))})") from None
        except DatabaseError:
            self._reader.close()
            raise
        self.info = DatabaseInfo(
            name=clean_text(name or self.path.name.removesuffix(".mmdb")),
            path=str(self.path),
            schema=schema,
            kind=kind,
            type=clean_text(meta.database_type, 100),
            build_epoch=_meta_int(meta.build_epoch),
            sha256=sha256,
            ip_version=ip_version,
            node_count=_meta_int(meta.node_count),
            description=_meta_description(meta.description),
            has_country=kind in ("country", "city", "enterprise"),
            has_subdivisions=kind in ("city", "enterprise"),
            has_asn=kind == "asn" or (schema == "flat" and self._flat_has_asn()),
        )
        self._read_record: Callable[[dict[str, Any]], GeoRecord] = {
            ("flat", "country"): self._flat,
            ("maxmind", "asn"): self._asn,
            ("maxmind", "anonymous-ip"): self._anonymous,
        }.get((schema, kind), self._maxmind)
        self._records: BoundedCache = BoundedCache(_MAX_SHARED, CLEAR)  # see _shared; a cleared table only costs rebuilding
        self._by_code: dict[str | None, GeoRecord] = {}  # see find; None never a key, but probed
        self._ipv4_only = self.info.ip_version == 4

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def schema(self) -> DatabaseSchema:
        return self.info.schema

    @property
    def kind(self) -> DatabaseKind:
        return self.info.kind

    def _flat_has_asn(self) -> bool:
        return any(
            isinstance(rec, dict) and "asn" in rec
            for _n, rec in itertools.islice(self._reader, _SAMPLE_RECORDS)
        )

    def find(self, ip: IPAddress) -> tuple[GeoRecord | None, int]:
        """(record, prefix length) for `ip`; the record is None when the database has none (or
        cannot hold the family).

        Raises InvalidDatabaseError when the file is corrupt at this record, and ValueError when a
        record is malformed: callers must treat both as a lookup error (fail closed), never as "no
        record".
        """
        if self._ipv4_only and ip.version == 6:
            return None, 0
        record, prefix_len = self._reader.get_with_prefix_len(ip)
        return self._record(record), prefix_len

    def lookup(self, ip: IPAddress) -> GeoRecord | None:
        """The record for `ip`, or None; raises as `find` does. Cheaper than `find` when the
        network is not needed (maxminddb then builds no tuple)."""
        if self._ipv4_only and ip.version == 6:
            return None
        return self._record(self._reader.get(ip))

    def _record(self, record: Any) -> GeoRecord | None:
        if not isinstance(record, dict):
            return None
        if len(record) == 1:
            # A record that is only a country code (the bundled databases) is found by the code,
            # without building a key; anything else, and the first of each code, goes through the
            # schema's reader (see _flat, which fills _by_code).
            shared = self._by_code.get(record.get("country_code"))
            if shared is not None:
                return shared
        return self._read_record(record)

    def _shared(self, key: Any, build: Callable[[Any], GeoRecord], raw: Any) -> GeoRecord:
        """The one GeoRecord for `key` (what the record's fields are): build(raw) on first use."""
        try:
            rec = self._records.get(key)
        except TypeError:  # an unhashable value in a record: build it, don't share it
            return build(raw)
        if rec is None:
            rec = build(raw)
            self._records.put(key, rec)
        return rec

    def _flat(self, rec: dict[str, Any]) -> GeoRecord:
        # every field can matter (unknown ones are ignored by _build_flat): key on all of them
        shared = self._shared(tuple(rec.items()), self._build_flat, rec)
        code = rec.get("country_code")
        if len(rec) == 1 and isinstance(code, str) and len(self._by_code) < _MAX_SHARED:
            self._by_code[code] = shared  # see find; a country database has ~250 codes
        return shared

    def _build_flat(self, rec: dict[str, Any]) -> GeoRecord:
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
            continent=_code(rec.get("continent_code")) or (_CONTINENT_OF.get(country) if country else None),
            asn=asn,
            as_org=rec.get("as_name") if isinstance(rec.get("as_name"), str) else None,
        )

    def _maxmind(self, rec: dict[str, Any]) -> GeoRecord:
        """The fields geoip2's City model would give (Country records are read the same way)."""
        try:
            represented = rec.get("represented_country") or _NONE
            raw = (
                (rec.get("country") or _NONE).get("iso_code"),
                (rec.get("registered_country") or _NONE).get("iso_code"),
                represented.get("iso_code"),
                represented.get("type"),
                (rec.get("continent") or _NONE).get("code"),
                tuple(s.get("iso_code") for s in rec.get("subdivisions") or ()),
                (rec.get("traits") or _NONE).get("is_anycast", False),
            )
            return self._shared(raw, self._build_maxmind, raw)
        except (AttributeError, TypeError):
            # a map that is not a map, a code that is not text: geoip2 raised here too. Fail
            # closed (a lookup error blocks), never crash the caller.
            raise ValueError(f"malformed record in {self.name}") from None

    def _build_maxmind(self, raw: tuple[Any, ...]) -> GeoRecord:
        country, registered, represented, represented_type, continent, subdivisions, anycast = raw
        country = _code(country)
        return GeoRecord(
            source=self.name,
            country=country,
            registered_country=_code(registered),
            represented_country=_code(represented),
            represented_type=represented_type,
            continent=_code(continent),
            # "UA" + "43" -> "UA-43": a subdivision code means nothing without its country
            subdivisions=tuple(f"{country}-{s.upper()}" for s in subdivisions if country and s),
            anycast=bool(anycast),
        )

    def _asn(self, rec: dict[str, Any]) -> GeoRecord:
        # as geoip2's ASN model: the values as the database has them
        raw = (rec.get("autonomous_system_number"), rec.get("autonomous_system_organization"))
        return self._shared(raw, self._build_asn, raw)

    def _build_asn(self, raw: tuple[Any, Any]) -> GeoRecord:
        return GeoRecord(source=self.name, asn=raw[0], as_org=raw[1])

    def _anonymous(self, rec: dict[str, Any]) -> GeoRecord:
        return self._shared((), self._build_anonymous, None)

    def _build_anonymous(self, _raw: None) -> GeoRecord:
        return GeoRecord(source=self.name)

    def networks(self) -> Iterator[tuple[Any, Any]]:
        """Every (network, raw record) in the file, in address order (walks the whole tree)."""
        return iter(self._reader)

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


def _open_snapshot(path: Path, data: bytes, sha256: str) -> maxminddb.Reader:
    """Open a private copy of `data` (whose hash is `sha256`). With the C extension, the copy is
    first walked in a separate process (dbcheck), so the bytes checked are the bytes opened."""
    fd, snapshot = tempfile.mkstemp(prefix="geogate-", suffix=".mmdb")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if dbcheck.has_extension():  # the pure-Python reader raises; only the extension kills
            dbcheck.verify(Path(snapshot), path, sha256)
        try:
            return maxminddb.open_database(snapshot, maxminddb.MODE_AUTO)
        except (InvalidDatabaseError, ValueError, TypeError, KeyError, IndexError, OverflowError):
            # TypeError: the pure-Python reader's answer to metadata with a required field missing
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
    def open(cls, paths: Sequence[str | os.PathLike[str]]) -> "DatabaseSet":
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
