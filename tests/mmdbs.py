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


# -- hostile metadata ---------------------------------------------------------------------------
# The metadata map follows the last b"\xab\xcd\xefMaxMind.com" in the file, in the MaxMind DB data
# format. rewrite_metadata re-encodes it with any field replaced by any value, of any type, so
# tests can hand geogate the metadata a hostile or broken writer would produce.

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


class U16(int):
    """An integer written as uint16 (the format's type for ip_version, record_size, versions)."""


class U32(int):
    """An integer written as uint32 (node_count)."""


class I32(int):
    """An integer written as int32 (a type no metadata field should have)."""


def _control(kind: int, size: int) -> bytes:
    if size < 29:
        low, extra = size, b""
    elif size < 285:
        low, extra = 29, bytes([size - 29])
    elif size < 65821:
        low, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        low, extra = 31, (size - 65821).to_bytes(3, "big")
    head = bytes([kind << 5 | low]) if kind <= 7 else bytes([low, kind - 7])
    return head + extra


def _encode(value) -> bytes:
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return _control(2, len(raw)) + raw
    if isinstance(value, bytes):
        return _control(4, len(value)) + value
    if isinstance(value, I32):
        return _control(8, 4) + int(value).to_bytes(4, "big", signed=True)
    if isinstance(value, int):
        kind, width = (5, 2) if isinstance(value, U16) else (6, 4) if isinstance(value, U32) else (9, 8)
        raw = int(value).to_bytes(width, "big").lstrip(b"\0")
        return _control(kind, len(raw)) + raw
    if isinstance(value, float):
        import struct

        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(_encode(str(k)) + _encode(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return _control(11, len(value)) + b"".join(_encode(v) for v in value)
    raise TypeError(f"cannot encode {value!r}")


def rewrite_metadata(src: Path, dest: Path, **changes) -> Path:
    """Copy the MMDB `src` to `dest` with metadata fields replaced (None removes a field)."""
    import maxminddb

    data = src.read_bytes()
    with maxminddb.open_database(str(src)) as reader:
        m = reader.metadata()
    meta = {
        "binary_format_major_version": U16(m.binary_format_major_version),
        "binary_format_minor_version": U16(m.binary_format_minor_version),
        "build_epoch": int(m.build_epoch),
        "database_type": m.database_type,
        "description": dict(m.description),
        "ip_version": U16(m.ip_version),
        "languages": list(m.languages),
        "node_count": U32(m.node_count),
        "record_size": U16(m.record_size),
    }
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    at = data.rindex(METADATA_MARKER) + len(METADATA_MARKER)
    dest.write_bytes(data[:at] + _encode(meta))
    return dest
