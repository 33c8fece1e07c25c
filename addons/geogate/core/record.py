"""Decision -> the JSON decision record (docs/decision-record.md), and the short forms derived from it."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from datetime import timezone
from typing import Any

from geogate.core.cache import BoundedCache
from geogate.core.decide import Decision
from geogate.core.decide import Outcome
from geogate.core.decide import Verdict
from geogate.core.facts import IPFacts


def _sources(facts: IPFacts, names: list[str]) -> dict[str, str | None]:
    by_source = {r.source: r.country for r in facts.records}
    return {n: by_source.get(n) for n in names}


def address_record(v: Verdict, country_dbs: list[str]) -> dict[str, Any]:
    f = v.facts
    geo = f.geo
    subdivisions: list[str] = []
    for r in geo.records:
        subdivisions.extend(s for s in r.subdivisions if s not in subdivisions)
    return {
        "ip": str(f.address.ip),
        "embedded_ipv4": str(f.address.embedded_ipv4) if f.address.embedded_ipv4 else None,
        "embedding": f.address.embedding,
        "special": f.address.special,
        "country": geo.first("country"),
        "registered_country": geo.first("registered_country"),
        "represented_country": geo.first("represented_country"),
        "continent": geo.first("continent"),
        "subdivisions": subdivisions,
        "asn": geo.first("asn"),
        "as_org": geo.first("as_org"),
        "anycast": any(r.anycast for r in geo.records),
        "network": geo.first("network"),
        "sources": _sources(geo, country_dbs),
        "action": str(v.action),  # the text, not the enum: records leave for JSON, CSV, flow files
        "rule": v.rule,
        "error": f.error,
    }


# The rendering of each recent outcome: id(outcome) -> (outcome, fields). The entry holds the
# outcome, so its id cannot be reused by another object while the entry lives; the size is that of
# GateState's outcome cache (policy.state), so every outcome it still serves keeps its rendering.
_RENDERED_SIZE = 4096
_rendered: BoundedCache = BoundedCache(_RENDERED_SIZE)


def _outcome_fields(d: Decision) -> dict[str, Any]:
    """The part of a record that depends only on the outcome, built once per shared outcome.

    Outcomes are memoised and shared by many decisions; so is this dict. Callers copy the top
    level (decision_record does) and must not mutate what is nested inside.
    """
    o = d.outcome
    key = id(o)
    entry = _rendered.get(key)
    if entry is not None and entry[0] is o:
        fields: dict[str, Any] = entry[1]
        return fields
    fields = _render_outcome(d, o)
    _rendered.put(key, (o, fields))
    return fields


def _render_outcome(d: Decision, o: Outcome) -> dict[str, Any]:
    country_dbs = [i.name for i in o.databases if i.has_country]
    match = o.verdict.match if o.verdict else None
    return {
        "action": str(o.action),
        "enforced": o.enforced,
        "would_block": o.would_block,
        "rule": o.rule,
        "reason": o.reason,
        "citation": o.citation,
        "address": str(d.address) if d.address is not None else None,
        "country": d.country,
        "host_mismatch": d.host_mismatch,
        "match": (
            {"key": match.key, "value": match.value, "field": match.field, "source": match.source, "group": match.group}
            if match
            else None
        ),
        "addresses": [address_record(v, country_dbs) for v in o.verdicts],
        "policy": {"name": o.policy.name, "path": o.policy.path, "sha256": o.policy.sha256},
        "databases": [
            {"name": i.name, "type": i.type, "build_epoch": i.build_epoch, "sha256": i.sha256}
            for i in o.databases
        ],
        "warnings": list(o.warnings),
        **({"stale": str(o.stale)} if o.stale is not None else {}),
    }


_second: tuple[tuple[int, ...] | None, str] = (None, "")  # the last second formatted: (key, text), replaced whole
_epoch_second: tuple[int | None, str] = (None, "")  # the same for timestamp_at: (whole seconds since the epoch, text)
# ".000Z" ... ".999Z": every record spells its milliseconds, and a `:03d` format costs more than
# the rest of the timestamp
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def timestamp(ts: datetime) -> str:
    """ISO 8601 with milliseconds, `Z` for UTC. Every record has one; formatting the second once
    for all records made within it costs half of isoformat()."""
    global _second
    if ts.tzinfo is not timezone.utc:
        return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    key = (ts.second, ts.minute, ts.hour, ts.day, ts.month, ts.year)
    cached = _second
    if cached[0] != key:
        cached = _second = (key, ts.strftime("%Y-%m-%dT%H:%M:%S"))
    return cached[1] + _MILLIS[ts.microsecond // 1000]


def decision_record(d: Decision) -> dict[str, Any]:
    req = d.request
    return {
        "ts": timestamp(d.ts),
        "event": "decision",
        "flow_id": req.flow_id,
        "client": req.client,
        "user": req.user,
        "mode": req.mode,
        "host": req.host,
        "port": req.port,
        "sni": req.sni,
        **_outcome_fields(d),
    }


def repeat_record(template: dict[str, Any], wall: float, flow_id: str | None, client: str | None) -> dict[str, Any]:
    """The record of a decision repeated for another request, from the record of the decision:
    only who asked and when differ (flow id, client address, `wall` = time.time())."""
    rec = template.copy()
    rec["ts"] = timestamp_at(wall)
    rec["flow_id"] = flow_id
    rec["client"] = client
    return rec


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(m: re.Match[str]) -> str:
    c = ord(m.group())
    # U+DC80..U+DCFF is how Python keeps a byte that is not UTF-8 (surrogateescape): that byte
    return f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"\\u{c:04x}"


def printable(text: str) -> str:
    """`text` as valid UTF-8: a byte a client sent that is not UTF-8 (mitmproxy keeps it as a
    surrogateescape'd character) becomes the four characters `\\xNN`, as Python's
    backslashreplace writes it; any other lone surrogate becomes `\\uXXXX`. Everything else,
    valid non-ASCII included, is unchanged. The one rule for every text geogate writes that a
    client had a hand in: the decision log, flow metadata, the event log, block pages."""
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape_surrogate, text)


def _printable_tree(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable_tree(v) for v in value]
    return value


def to_json_line(record: dict[str, Any]) -> str:
    """One JSON line, always valid UTF-8 (see printable)."""
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a text that missed printable() on its way in
            line = json.dumps(_printable_tree(record), ensure_ascii=False, separators=(",", ":"),
                              default=lambda o: printable(str(o)))
    return line


def proxy_status(d: Decision) -> str:
    """RFC 9209 Proxy-Status value for a blocked request."""
    country = d.country or "unknown"
    details = f"country={country}; rule={d.rule}".replace('"', "'")
    return f'geogate; error=destination_ip_prohibited; details="{details}"'


INTERNAL_ERROR_TEXT = "geogate could not decide; refused (fail closed)"


def client_reason(d: Decision) -> str:
    """The reason as a blocked client reads it. A policy's own reasons are meant for clients and
    are shown as written. Where geogate itself failed to check the destination (rules `error`
    and `resolve-error`), the full reason, which can name files and name servers, stays in the
    decision record; the client reads what happened, and the resolver's detail only when it
    names no path."""
    if d.rule == "error":
        return "the GeoIP lookup of the address failed, so the connection is refused (fail closed)"
    if d.rule == "resolve-error":
        detail = d.reason or ""
        text = "the name could not be resolved, so its address could not be checked; refused (fail closed)"
        return f"{text}: {detail}" if detail and "/" not in detail and "\\" not in detail else text
    return d.reason


def block_body(d: Decision) -> str:
    """The short plain-text body a blocked HTTP client reads: what was blocked and why, and the
    id of the decision record (its flow_id), never a file name or a hash of one."""
    req = d.request
    lines = [
        "Blocked by geogate.",
        f"host:    {f'[{req.host}]' if req.host and ':' in req.host else req.host}" + (f":{req.port}" if req.port else ""),
        f"address: {d.address or '-'}",
        f"country: {d.country or 'unknown'}",
        f"rule:    {d.rule}",
        f"reason:  {client_reason(d)}",
    ]
    if d.citation:
        lines.append(f"citation: {d.citation}")
    lines.append(f"policy:  {d.policy.name}")
    if req.flow_id:
        lines.append(f"id:      {req.flow_id}")
    return printable("\n".join(lines) + "\n")


def internal_error_body(error_id: str) -> str:
    """What a client reads when geogate failed: no exception text, no path."""
    return f"{INTERNAL_ERROR_TEXT}.\nerror id: {error_id}\n"


def timestamp_at(wall: float) -> str:
    """timestamp() of the UTC time `wall` (seconds since the epoch, as time.time() gives), for
    records that have no datetime: the same text, without building one."""
    global _epoch_second
    second, micros = divmod(round(wall * 1_000_000), 1_000_000)  # rounded as datetime.fromtimestamp rounds
    cached = _epoch_second
    if cached[0] != second:
        cached = _epoch_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return cached[1] + _MILLIS[micros // 1000]


def summary_line(rec: dict[str, Any]) -> str:
    """One event-log line per decision record, for people watching the console."""
    host = rec["host"]
    if host and ":" in host:
        host = f"[{host}]"
    verdict = "BLOCK" if rec["action"] == "block" else ("allow, WOULD BLOCK" if rec["would_block"] else "allow")
    claim = " (name not verified)" if rec["host_mismatch"] else ""
    port = f":{rec['port']}" if rec["port"] is not None else ""
    who = f"{rec['mode']} {rec['client']}" if rec["client"] else rec["mode"]
    return (f"geogate: {verdict} {host}{port}{claim} -> {rec['address'] or '-'} "
            f"({rec['country'] or 'no country'}) rule {rec['rule']} [{who}]")
