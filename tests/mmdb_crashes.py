"""Damaged MMDB files that kill maxminddb's C extension (3.2.0), as recipes: a MaxMind test
database and the bytes to overwrite. Found by tools/find_mmdb_crashes.py (seed 1, 300 tries,
4 crashes) and reduced to one byte each. Opened in-process with the C extension, each one ends
the process with the signal given; geogate must refuse them instead (geogate.core.dbcheck).

- city-abrt: SIGABRT iterating the first records, so in Database()'s schema sample;
- city-segv: SIGSEGV in the same place;
- asn-abrt: SIGABRT only further into a full walk: Database() used to load it, and a walk
  (`geogate db info` counts networks) or a lookup of the damaged record would then crash.
"""

from __future__ import annotations

from pathlib import Path

MAXMIND = Path(__file__).parent / "data" / "maxmind"

CRASHES = {
    "city-abrt": ("GeoIP2-City-Test.mmdb", [(2680, 123)], "SIGABRT"),
    "city-segv": ("GeoIP2-City-Test.mmdb", [(17264, 28)], "SIGSEGV"),
    "asn-abrt": ("GeoLite2-ASN-Test.mmdb", [(6162, 112)], "SIGABRT"),
}


def write_crash(directory: Path, name: str) -> Path:
    """Write the damaged file `name` (a key of CRASHES) into `directory`."""
    source, patches, _signal = CRASHES[name]
    data = bytearray((MAXMIND / source).read_bytes())
    for at, byte in patches:
        data[at] = byte
    path = directory / f"{name}.mmdb"
    path.write_bytes(bytes(data))
    return path
