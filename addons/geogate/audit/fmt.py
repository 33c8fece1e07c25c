"""Number, byte and name formatting shared by the human-readable reports."""

from __future__ import annotations

from functools import lru_cache

from geogate.core.geo import DatabaseInfo
from geogate.core.geo import build_text
from geogate.core.rules import PolicyRef

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def count(n: int) -> str:
    return f"{n:,}"


def human_bytes(n: int) -> str:
    """1,536 -> '1.5 KiB'; exact counts stay in JSON and CSV."""
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


@lru_cache(maxsize=512)
def country_name(code: str) -> str:
    """'CN' -> 'China'; keys that are not ISO codes ('(unknown)', ...) are returned as they are."""
    if len(code) != 2:
        return code
    if code == "XK":
        return "Kosovo"
    try:
        import pycountry

        c = pycountry.countries.get(alpha_2=code)
    except (ImportError, KeyError, LookupError):
        c = None
    return getattr(c, "common_name", None) or getattr(c, "name", None) or code


TITLE_FILES = 3  # input files a report's title names; the rest are counted
LISTED_FILES = 10  # input files a report lists one by one (JSON lists all)


def files_title(paths: list[str], limit: int = TITLE_FILES) -> str:
    """'a.mitm', 'a.mitm and b.har', 'a.mitm, b.har and c.har', 'a.mitm, b.har, c.har and 4 more files'."""
    if len(paths) <= limit:
        return paths[0] if len(paths) == 1 else ", ".join(paths[:-1]) + " and " + paths[-1]
    return ", ".join(paths[:limit]) + f" and {plural(len(paths) - limit, 'more file')}"


def policy_line(ref: PolicyRef) -> str:
    return f"{ref.name}  {ref.path}  sha256:{ref.sha256[:12]}"


def database_line(info: DatabaseInfo) -> str:
    built = build_text(info.build_epoch)  # metadata is untrusted: UINT64_MAX is no date
    return f"{info.name}  built {built}  sha256:{info.sha256[:12]}"


def ellipsize(text: str, width: int) -> str:
    """Shorten from the middle: both a host's start and its registrable end matter."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]
