"""URLs in mitmproxy's own event-log lines, shaped like those in decision records.

mitmproxy quotes what clients sent in some lines ("Bad HTTP request line: b'GET
http://user:password@host/?token=...'"). While the proxy runs, every log record made in the
process passes here first, and each URL or request target in its text is shaped by
core.urls.log_url, so the console says no more than the decision log.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from geogate.core.urls import log_url

# scheme://anything-not-blank-or-quote, and the target of a request line (`GET /x?y HTTP/1.1`)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s'\"<>]+")
_TARGET = re.compile(r"\b((?:GET|HEAD|POST|PUT|DELETE|OPTIONS|TRACE|PATCH) )(/[^\s'\"<>]*)")


def shape_text(text: str, mode: str) -> str:
    """`text` with every URL and request target in it as `mode` lets it be written."""
    if mode == "full" or ("://" not in text and " /" not in text):
        return text

    def url(m: re.Match[str]) -> str:
        return log_url(m.group(), mode) or "(url not logged)"

    def target(m: re.Match[str]) -> str:
        return m.group(1) + (log_url(m.group(2), mode) or "(url not logged)")

    return _TARGET.sub(target, _URL.sub(url, text))


class PrivateRecords:
    """A log-record factory that shapes URLs in every message; install() while running."""

    def __init__(self) -> None:
        self.mode = "path"
        self._previous: Any = None

    def install(self) -> None:
        if self._previous is None:
            self._previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(self._make)

    def uninstall(self) -> None:
        if self._previous is not None and logging.getLogRecordFactory() == self._make:
            logging.setLogRecordFactory(self._previous)
        self._previous = None

    def _make(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self._previous(*args, **kwargs)
        if self.mode == "full":
            return record
        try:
            message = record.getMessage()
        except Exception:
            return record  # a broken format is logging's to report
        shaped = shape_text(message, self.mode)
        if shaped != message:
            record.msg, record.args = shaped, None
        return record
