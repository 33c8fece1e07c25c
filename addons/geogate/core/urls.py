"""How a URL is written where people other than its sender read it: logs and reports.

Query strings and user info carry secrets (`?token=...`, `user:password@`), and logs and audit
reports travel further than the requests they describe. One function shapes every URL geogate
writes, per the setting `geogate_log_urls` (`--log-urls`):

- `path` (the default): `scheme://host[:port]/path`: no user info, no query, no fragment;
- `full`: as the client sent it;
- `none`: no URL at all (records leave the field out; the host and port are still recorded).
"""

from __future__ import annotations

LOG_URL_MODES = ("path", "full", "none")
DEFAULT_LOG_URLS = "path"


def log_url(url: str, mode: str = DEFAULT_LOG_URLS) -> str | None:
    """`url` as the setting `mode` lets it be written; None for `none`. An unknown mode is
    treated as the default (the options are checked where they are read)."""
    if mode == "full":
        return url
    if mode == "none":
        return None
    cut = len(url)
    for mark in ("?", "#"):
        at = url.find(mark)
        if 0 <= at < cut:
            cut = at
    url = url[:cut]
    start = url.find("://")
    if start < 0:
        return url  # authority form (host:port) or `*`: nothing private in it
    start += 3
    slash = url.find("/", start)
    at = url.rfind("@", start, len(url) if slash < 0 else slash)
    return url if at < 0 else url[:start] + url[at + 1:]


def check_log_urls(value: str) -> str:
    """The setting's value, or ValueError with the sentence to show."""
    value = str(value).strip().lower()
    if value not in LOG_URL_MODES:
        raise ValueError(f"geogate_log_urls: `{value}` is not one of {', '.join(LOG_URL_MODES)} "
                         "(path: no query string or user info; full: as sent; none: no URL)")
    return value
