"""Small MMDB files written by the tests themselves, in both schemas geogate reads."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

MAXMIND_DATA = Path(__file__).parent / "data" / "maxmind"


def _write(path: Path, records: dict[str, dict], database_type: str) -> Path:
    writer = MMDBWriter(ip_version=6, database_type=database_type, ipv4_compatible=True,
                        description={"en": f"geogate test database {path.name}"})
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(path)  # atomic, so a watching proxy never reads half a file
    return path


def write_flat(path: Path, networks: dict[str, str], **extra: dict) -> Path:
    """Flat schema (ip-location-db style): {network: country_code}."""
    records = {net: {"country_code": cc, **extra.get(net, {})} for net, cc in networks.items()}
    return _write(path, records, "geogate-test-flat")


def maxmind_record(country: str | None, registered: str | None = None, continent: str | None = None,
                   represented: str | None = None, subdivisions: tuple[str, ...] = (), anycast: bool = False) -> dict:
    rec: dict = {}
    if country:
        rec["country"] = {"iso_code": country, "names": {"en": country}}
    if registered or country:
        rec["registered_country"] = {"iso_code": registered or country, "names": {"en": registered or country}}
    if continent:
        rec["continent"] = {"code": continent, "names": {"en": continent}}
    if represented:
        rec["represented_country"] = {"iso_code": represented, "type": "military"}
    if subdivisions:
        rec["subdivisions"] = [{"iso_code": s} for s in subdivisions]
    if anycast:
        rec["traits"] = {"is_anycast": True}
    return rec


def write_maxmind(path: Path, records: dict[str, dict], database_type: str = "geogate-test-City") -> Path:
    """MaxMind schema: {network: maxmind_record(...)}."""
    return _write(path, records, database_type)
