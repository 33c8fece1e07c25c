"""The HTML report: one self-contained file (inline CSS, inline SVG chart, no script, nothing
fetched), so it can be attached to a ticket or mailed and still look the same offline.

Everything taken from the recording is escaped: host names, URLs and reasons come from traffic
that may be hostile.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from geogate.audit.aggregate import CHANGE_TITLES
from geogate.audit.aggregate import CHANGES
from geogate.audit.aggregate import NEWLY_ALLOWED
from geogate.audit.aggregate import NEWLY_BLOCKED
from geogate.audit.aggregate import NEWLY_FLAGGED
from geogate.audit.aggregate import NO_LONGER_FLAGGED
from geogate.audit.aggregate import SPECIAL_KEY
from geogate.audit.aggregate import UNKNOWN_KEY
from geogate.audit.aggregate import UNRESOLVED_KEY
from geogate.audit.aggregate import Aggregate
from geogate.audit.aggregate import Changes
from geogate.audit.aggregate import Country
from geogate.audit.auditor import AuditResult
from geogate.audit.fmt import LISTED_FILES
from geogate.audit.fmt import count
from geogate.audit.fmt import country_name
from geogate.audit.fmt import database_line
from geogate.audit.fmt import files_title
from geogate.audit.fmt import human_bytes
from geogate.audit.fmt import plural

CHART_ROWS = 24  # countries drawn; the rest are summed into one "other" bar

CSS = """
:root{--ink:#172033;--muted:#5e687a;--line:#e3e7ee;--bg:#f3f5f9;--panel:#fff;
--block:#c0392b;--block-soft:#fdecea;--warn:#9a5b00;--warn-soft:#fff3dc;--ok:#1f7a3d;--ok-soft:#e5f4ea;
--unres:#6a3fa0;--unres-soft:#f0e9fb;--sent:#2f5fc4;--recv:#93b1ee;--bsent:#c0392b;--brecv:#ec9a90;
--gsent:#7b8597;--grecv:#c3c9d4}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding:0 28px}
header.top{background:linear-gradient(135deg,#121d36 0%,#253d73 100%);color:#fff;padding:26px 0 24px}
.brand{font-size:12px;letter-spacing:.14em;text-transform:uppercase;opacity:.7}
h1{margin:4px 0 6px;font-size:24px;font-weight:650;overflow-wrap:anywhere}
.meta{margin:0;opacity:.85}
main{padding-top:22px;padding-bottom:32px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-bottom:18px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:12px;padding:14px 16px}
.card .k{color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.07em}
.card .v{font-size:26px;font-weight:680;margin-top:2px;font-variant-numeric:tabular-nums}
.card .s{color:var(--muted);font-size:12px}
.card.bad{border-color:#f1b9b2;background:linear-gradient(180deg,#fff 0%,#fff7f6 100%)}
.card.bad .v{color:var(--block)}
.card.good .v{color:var(--ok)}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:12px;padding:18px 20px;margin-bottom:18px}
h2{font-size:16px;margin:0 0 12px}
h2 .sub{font-weight:400;color:var(--muted);font-size:13px;margin-left:8px}
table{width:100%;border-collapse:collapse;font-size:13px}
th{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);text-align:left;
padding:6px 8px;border-bottom:2px solid var(--line);white-space:nowrap}
td{padding:7px 8px;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.row-block td:first-child,tr.row-unresolved td:first-child,tr.row-would-block td:first-child{box-shadow:inset 3px 0 var(--block)}
tr.row-monitor td:first-child{box-shadow:inset 3px 0 var(--warn)}
tr.total td{font-weight:650;border-top:2px solid var(--line)}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;white-space:nowrap}
.pill.block,.pill.would-block,.pill.newly-blocked{background:var(--block-soft);color:var(--block)}
.pill.unresolved{background:var(--unres-soft);color:var(--unres)}
.pill.monitor,.pill.newly-flagged{background:var(--warn-soft);color:var(--warn)}
.pill.allow,.pill.newly-allowed,.pill.no-longer-flagged{background:var(--ok-soft);color:var(--ok)}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;overflow-wrap:anywhere}
.small{color:var(--muted);font-size:12px}
.cc{font-weight:650}
.banner{background:var(--block-soft);border:1px solid #f1b9b2;color:#7d1d12;border-radius:12px;padding:12px 16px;margin-bottom:18px}
.banner ul{margin:6px 0 0;padding-left:20px}
.note{background:#f7f9fc;border:1px solid var(--line);border-radius:10px;padding:10px 14px;color:var(--muted);margin-bottom:18px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.grid2 .panel{margin-bottom:0}
.grid2+.panel{margin-top:18px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
svg.chart{width:100%;height:auto;display:block}
svg.chart text{font-family:inherit;font-size:12.5px;fill:var(--ink)}
svg.chart text.dim{fill:var(--muted)}
svg.chart .sent{fill:var(--sent)}svg.chart .received{fill:var(--recv)}
svg.chart .blocked.sent{fill:var(--bsent)}svg.chart .blocked.received{fill:var(--brecv)}
svg.chart .neutral.sent{fill:var(--gsent)}svg.chart .neutral.received{fill:var(--grecv)}
svg.chart .allowed.sent{fill:var(--ok)}svg.chart .allowed.received{fill:#9fd3ae}
svg.chart .flagged.sent{fill:var(--warn)}svg.chart .flagged.received{fill:#e3b36b}
svg.chart line{stroke:var(--line)}
footer{color:var(--muted);font-size:12px;margin-top:8px}
footer div{margin:2px 0}
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(n: int) -> str:
    return f'<td class="n">{count(n)}</td>'


def _bytes(n: int) -> str:
    return f'<td class="n" title="{count(n)} bytes">{e(human_bytes(n))}</td>'


def _pill(label: str) -> str:
    return f'<span class="pill {e(label)}">{e(label.replace("-", " "))}</span>'


def _country(key: str) -> str:
    if len(key) == 2:
        return f'<span class="cc">{e(key)}</span> <span class="small">{e(country_name(key))}</span>'
    return f'<span class="small">{e(key)}</span>'


# -- chart ------------------------------------------------------------------------------------

@dataclass
class Bar:
    key: str  # country code or one of the (…) keys
    sent: int
    received: int
    flows: int
    blocked: int
    tone: str  # blocked | neutral | allowed | "" (plain)


def _bars_for(countries: list[Country], tone_of) -> list[Bar]:
    bars = [Bar(c.key, c.tally.bytes_sent, c.tally.bytes_received, c.tally.flows, c.tally.would_block, tone_of(c))
            for c in countries]
    if len(bars) > CHART_ROWS:
        rest = bars[CHART_ROWS - 1:]
        bars = bars[:CHART_ROWS - 1] + [Bar(f"other ({len(rest)})", sum(b.sent for b in rest),
                                            sum(b.received for b in rest), sum(b.flows for b in rest),
                                            sum(b.blocked for b in rest), "neutral")]
    return bars


_LEGEND = (("sent", "sent"), ("received", "received"), ("blocked sent", "country with blocked flows"))


def chart(bars: list[Bar], note: str, legend=_LEGEND) -> str:
    """Horizontal bars, one per country: bytes sent then received, blocked countries in red."""
    if not bars:
        return '<p class="small">No traffic.</p>'
    label_w, bar_w, value_w, row_h, top = 210, 560, 230, 30, 34
    width = label_w + bar_w + value_w
    height = top + row_h * len(bars) + 8
    peak = max(b.sent + b.received for b in bars) or 1
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{e(note)}</title>"]
    # legend
    x = label_w
    for cls, text in legend:
        parts.append(f'<rect class="legend {cls}" x="{x}" y="8" width="12" height="12" rx="2"/>'
                     f'<text x="{x + 17}" y="18.5" class="dim">{e(text)}</text>')
        x += 30 + 7 * len(text)
    for i, b in enumerate(bars):
        y = top + i * row_h
        cls = b.tone
        label = b.key if len(b.key) != 2 else f"{b.key}  {country_name(b.key)}"
        if len(label) > 28:
            label = label[:27] + "…"
        parts.append(f'<text x="{label_w - 10}" y="{y + 15}" text-anchor="end">{e(label)}</text>')
        parts.append(f'<line x1="{label_w}" x2="{label_w + bar_w}" y1="{y + 21.5}" y2="{y + 21.5}"/>')
        w_sent = bar_w * b.sent / peak
        w_recv = bar_w * b.received / peak
        if b.flows and w_sent + w_recv < 2:  # traffic without bytes still shows
            w_sent = 2
        parts.append(f'<rect class="bar sent {cls}" x="{label_w}" y="{y + 4}" width="{w_sent:.1f}" height="16" rx="2">'
                     f"<title>{e(b.key)}: sent {e(human_bytes(b.sent))} ({count(b.sent)} bytes)</title></rect>")
        parts.append(f'<rect class="bar received {cls}" x="{label_w + w_sent:.1f}" y="{y + 4}" width="{w_recv:.1f}" '
                     f'height="16" rx="2"><title>{e(b.key)}: received {e(human_bytes(b.received))} '
                     f"({count(b.received)} bytes)</title></rect>")
        value = f"{human_bytes(b.sent + b.received)} · {plural(b.flows, 'flow')}"
        if b.blocked:
            value += f" · {count(b.blocked)} blocked"
        parts.append(f'<text x="{label_w + w_sent + w_recv + 8:.1f}" y="{y + 16}" class="dim">{e(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tone(c: Country) -> str:
    if c.tally.would_block:
        return "blocked"
    if c.key in (SPECIAL_KEY, UNKNOWN_KEY, UNRESOLVED_KEY):
        return "neutral"
    return ""


# -- sections ---------------------------------------------------------------------------------

def _cards(items: list[tuple[str, str, str, str]]) -> str:
    out = ['<section class="cards">']
    for title, value, sub, cls in items:
        out.append(f'<div class="card {cls}"><div class="k">{e(title)}</div><div class="v">{value}</div>'
                   f'<div class="s">{e(sub)}</div></div>')
    out.append("</section>")
    return "".join(out)


def _problems(result: AuditResult) -> str:
    if result.complete:
        return ""
    items = "".join(f"<li>{e(p.text())}</li>" for p in result.problems)
    if result.problems_unlisted:
        items += f"<li>… and {count(result.problems_unlisted)} more</li>"
    return ('<div class="banner"><strong>Incomplete:</strong> some input could not be read; the numbers below '
            f"cover only the flows that could.<ul>{items}</ul></div>")


def _flows_table(sample: list[dict], unlisted: int, changes: bool = False) -> str:
    head = ("<tr><th>Flow</th><th>Destination</th><th>Country</th><th>Decision</th>"
            '<th class="n">Sent</th><th class="n">Received</th></tr>')
    rows = []
    for f in sample:
        source = f"{f['file']} #{f['index'] + 1}" + (f" · client {f['client']}" if f.get("client") else "")
        address = f["address"] + (" (resolved now)" if f["resolution"] == "resolved" else "") if f["address"] else "no address"
        decision = _pill(f["action"]) + f' <span class="mono">{e(f["rule"])}</span>'
        if changes:
            decision = (f'{_pill(f["change"])}<div class="small">{e(f["before"])} ({e(f["rule_before"])}) → '
                        f'{e(f["action"])} ({e(f["rule"])})</div>')
        reason = f'<div class="small">{e(f["reason"])}</div>'
        if f.get("citation"):
            reason += f'<div class="small">{e(f["citation"])}</div>'
        rows.append(f'<tr class="row-{e(f["action"])}"><td><div class="mono">{e(f["url"])}</div>'
                    f'<div class="small">{e(source)}</div></td>'
                    f'<td><div class="mono">{e(f["destination"])}</div><div class="small mono">{e(address)}</div></td>'
                    f'<td>{_country(f["country"])}</td><td>{decision}{reason}</td>'
                    f'{_bytes(f["bytes_sent"])}{_bytes(f["bytes_received"])}</tr>')
    more = f'<p class="small">… and {plural(unlisted, "more flow")} (see the JSON or CSV report for all).</p>' if unlisted else ""
    return f"<table>{head}{''.join(rows)}</table>{more}"


def _destinations(agg: Aggregate) -> str:
    head = ("<tr><th>Destination</th><th>Address</th><th>Country</th><th>Action</th><th>Rule</th>"
            '<th class="n">Flows</th><th class="n">Sent</th><th class="n">Received</th></tr>')
    rows = []
    for d in agg.destination_rows():
        address = e(d.address or "–") + (' <span class="small">resolved now</span>' if d.resolution == "resolved" else "")
        rows.append(f'<tr class="row-{e(d.label)}"><td class="mono">{e(d.host)}</td><td class="mono">{address}</td>'
                    f'<td>{_country(d.country)}</td><td>{_pill(d.label)}</td>'
                    f'<td><span class="mono" title="{e(d.reason)}">{e(d.rule)}</span></td>'
                    f"{_num(d.tally.flows)}{_bytes(d.tally.bytes_sent)}{_bytes(d.tally.bytes_received)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _countries(rows_in: list[Country], total=None) -> str:
    head = ('<tr><th>Country</th><th class="n">Flows</th><th class="n">Blocked</th><th class="n">Hosts</th>'
            '<th class="n">Sent</th><th class="n">Received</th></tr>')
    rows = [f'<tr class="{"row-block" if c.tally.would_block else ""}"><td>{_country(c.key)}</td>'
            f"{_num(c.tally.flows)}{_num(c.tally.would_block)}{_num(len(c.hosts))}"
            f"{_bytes(c.tally.bytes_sent)}{_bytes(c.tally.bytes_received)}</tr>" for c in rows_in]
    if total is not None:
        t, hosts = total
        rows.append(f'<tr class="total"><td>all</td>{_num(t.flows)}{_num(t.would_block)}{_num(hosts)}'
                    f"{_bytes(t.bytes_sent)}{_bytes(t.bytes_received)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _rules(agg: Aggregate) -> str:
    head = ('<tr><th>Rule</th><th class="n">Flows</th><th class="n">Blocked</th><th class="n">Sent</th>'
            '<th class="n">Received</th></tr>')
    rows = [f'<tr class="{"row-block" if t.would_block else ""}"><td class="mono">{e(rule)}</td>{_num(t.flows)}'
            f"{_num(t.would_block)}{_bytes(t.bytes_sent)}{_bytes(t.bytes_received)}</tr>"
            for rule, t in agg.rule_rows()]
    return f"<table>{head}{''.join(rows)}</table>"


def _not_sent(result: AuditResult) -> str:
    ns = result.not_sent
    if not ns.entries:
        return ""
    several = len(result.inputs) > 1
    head = ("<tr>" + ("<th>File</th>" if several else "") + '<th>Destination</th><th class="n">Entries</th>'
            "<th>Address</th><th>Why</th></tr>")
    rows = []
    for r in ns.destination_rows():
        address = (" ".join(f'<span class="mono">{e(a)}</span> {_country(c)}' for a, c in r.inferred)
                   + ' <span class="small">inferred</span>') if r.inferred else '<span class="small">none recorded</span>'
        rows.append("<tr>" + (f'<td class="mono">{e(r.file)}</td>' if several else "")
                    + f'<td class="mono">{e(r.destination)}</td>{_num(r.entries)}<td>{address}</td>'
                    f'<td class="small">{e(r.reason)}</td></tr>')
    return (f'<section class="panel"><h2>Not sent to the network<span class="sub">'
            f'{plural(ns.entries, "HAR entry", "HAR entries")}: browser cache, service worker or failed before '
            "sending; not judged, no bytes counted</span></h2>"
            f"<table>{head}{''.join(rows)}</table>"
            '<p class="small">Inferred: an address the same host\'s recorded traffic went to elsewhere in the same '
            "file; these entries record none.</p></section>")


def _title(result: AuditResult) -> str:
    if result.source == "replay" and not result.inputs:
        return "replayed flows"
    if len(result.inputs) == 1:
        return result.inputs[0].path
    return files_title([i.path for i in result.inputs])


def _meta(result: AuditResult) -> str:
    parts = [plural(result.flows, "flow")]
    if result.source != "replay":
        formats = sorted({"mitmproxy flow file" if i.format == "mitmproxy" else "HAR" for i in result.inputs})
        parts.append(" + ".join(formats))
    parts.append("addresses as recorded" + (", names without one resolved now" if result.resolve else " (offline)"))
    ignored = sum(i.ignored for i in result.inputs)
    if ignored:
        parts.append(f"{plural(ignored, 'HAR entry', 'HAR entries')} without a destination (data:, blob: URLs) not counted")
    if result.not_sent.entries:
        parts.append(f"{plural(result.not_sent.entries, 'HAR entry', 'HAR entries')} not sent to the network, listed apart")
    parts.append("generated " + result.generated.strftime("%Y-%m-%d %H:%M UTC"))
    return " · ".join(parts)


def _footer(result: AuditResult) -> str:
    lines = [f"policy <strong>{e(result.policy.name)}</strong> · {e(result.policy.path)} · "
             f'<span class="mono">sha256:{e(result.policy.sha256[:16])}</span>']
    if result.against is not None:
        lines.append(f"against <strong>{e(result.against.name)}</strong> · {e(result.against.path)} · "
                     f'<span class="mono">sha256:{e(result.against.sha256[:16])}</span>')
    lines += [f"database {e(database_line(i))}" for i in result.databases]
    if result.source != "replay":
        lines += [f"input {e(i.path)} · {e(i.format)} · {plural(i.flows, 'flow')} · {count(i.size)} bytes"
                  + ("" if i.complete else " · <strong>incomplete</strong>") for i in result.inputs[:LISTED_FILES]]
        rest = result.inputs[LISTED_FILES:]
        if rest:
            lines.append(f"… and {plural(len(rest), 'more input file')}, {plural(sum(i.flows for i in rest), 'flow')}"
                         + ("" if all(i.complete for i in rest) else " · <strong>incomplete</strong>"))
    lines.append("Byte counts are HTTP heads and bodies as transferred, plus WebSocket, TCP and UDP message payloads. "
                 "Countries come from GeoIP databases, which estimate where an address is, not who operates it.")
    return "<footer>" + "".join(f"<div>{line}</div>" for line in lines) + "</footer>"


def _body_single(result: AuditResult, agg: Aggregate) -> str:
    t = agg.totals
    countries = [c for c in agg.countries if len(c) == 2]
    blocked_cls = "bad" if t.would_block else "good"
    hosts = len(set().union(*(c.hosts for c in agg.countries.values()))) if agg.countries else 0
    cards = _cards([
        ("Flows", count(t.flows), f"to {plural(hosts, 'host')}", ""),
        ("Would be blocked", count(t.would_block), f"{t.would_block * 100 // max(t.flows, 1)}% of flows", blocked_cls),
        ("Countries", count(len(countries)), "with a known country", ""),
        ("Sent", e(human_bytes(t.bytes_sent)), f"{count(t.bytes_sent)} bytes", ""),
        ("Received", e(human_bytes(t.bytes_received)), f"{count(t.bytes_received)} bytes", ""),
        ("Unresolved", count(agg.unresolved), "flows without an address", "bad" if agg.unresolved else ""),
    ])
    out = [cards]
    if agg.unresolved and not result.resolve:
        out.append('<div class="note">Flows without a recorded address are listed as <em>unresolved</em> and '
                   "count as blocked (the engine fails closed). <span class=\"mono\">--resolve</span> looks their "
                   "names up now instead.</div>")
    bars = _bars_for(agg.country_rows(), _tone)
    out.append(f'<section class="panel"><h2>Traffic per destination country<span class="sub">bytes sent and '
               f"received; countries with blocked flows first</span></h2>{chart(bars, 'traffic per country')}</section>")
    if agg.blocked_sample:
        out.append(f'<section class="panel"><h2>Blocked flows<span class="sub">{plural(t.would_block, "flow")}'
                   f"</span></h2>{_flows_table(agg.blocked_sample, agg.blocked_unlisted)}</section>")
    out.append(f'<section class="panel"><h2>Destinations<span class="sub">blocked first</span></h2>'
               f"{_destinations(agg)}</section>")
    out.append('<div class="grid2">'
               f'<section class="panel"><h2>Per country</h2>{_countries(agg.country_rows(), (t, hosts))}</section>'
               f'<section class="panel"><h2>Per rule</h2>{_rules(agg)}</section></div>')
    return "".join(out)


# How each kind of change is drawn: chart tone, row class (the stripe), card class when non-zero.
_CHANGE_STYLE = {NEWLY_BLOCKED: ("blocked", "row-block", "bad"), NEWLY_FLAGGED: ("flagged", "row-monitor", "bad"),
                 NEWLY_ALLOWED: ("allowed", "row-allow", ""), NO_LONGER_FLAGGED: ("neutral", "row-allow", "")}


def _change_table(ch: Changes, change: str) -> str:
    rows = ch.rows_for(change)
    if not rows:
        return '<p class="small">None.</p>'
    body = "".join(
        f'<tr class="{_CHANGE_STYLE[change][1]}"><td class="mono">{e(r.host)}</td>'
        f'<td class="mono">{e(r.address or "–")}</td><td>{_country(r.country)}</td>'
        f"<td>{_pill(r.before)} → {_pill(r.after)}</td>"
        f'<td class="mono">{e(r.rule_before)} → {e(r.rule_after)}</td>'
        f"{_num(r.tally.flows)}{_bytes(r.tally.bytes_sent)}{_bytes(r.tally.bytes_received)}</tr>" for r in rows)
    return ("<table><tr><th>Destination</th><th>Address</th><th>Country</th><th>Action</th><th>Rule</th>"
            f'<th class="n">Flows</th><th class="n">Sent</th><th class="n">Received</th></tr>{body}</table>')


def _body_changes(ch: Changes) -> str:
    cards = [("Flows evaluated", count(ch.totals.flows), "under both policies", "")]
    for change in CHANGES:
        t = ch.changed[change]
        bad = _CHANGE_STYLE[change][2]
        cards.append((CHANGE_TITLES[change].capitalize(), count(t.flows), human_bytes(t.bytes_total),
                      bad if t.flows else ("good" if bad else "")))
    cards.append(("Unchanged", count(ch.unchanged), "same outcome", ""))
    out = [_cards(cards)]
    bars = [b for change in CHANGES
            for b in _bars_for(ch.country_rows(change), lambda c, tone=_CHANGE_STYLE[change][0]: tone)]
    legend = tuple((f"{_CHANGE_STYLE[change][0]} sent", CHANGE_TITLES[change]) for change in CHANGES)
    out.append(f'<section class="panel"><h2>Changed traffic per country<span class="sub">one bar per kind of change'
               f"</span></h2>{chart(bars, 'changed traffic per country', legend)}</section>")
    for change in CHANGES:
        out.append(f'<section class="panel"><h2>{e(CHANGE_TITLES[change].capitalize())}<span class="sub">'
                   f'{plural(ch.changed[change].flows, "flow")}</span></h2>{_change_table(ch, change)}</section>')
    if ch.sample:
        out.append(f'<section class="panel"><h2>Changed flows</h2>{_flows_table(ch.sample, ch.unlisted, True)}</section>')
    return "".join(out)


def render(result: AuditResult) -> str:
    title = _title(result)
    counts = result.counts
    body = _body_changes(counts) if isinstance(counts, Changes) else _body_single(result, counts)
    heading = "geogate audit" + (" · policy change" if isinstance(counts, Changes) else "")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>geogate audit: {e(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><div class="wrap"><div class="brand">{e(heading)}</div><h1>{e(title)}</h1>'
        f'<p class="meta">{e(_meta(result))}</p></div></header>'
        f'<main class="wrap">{_problems(result)}{body}{_not_sent(result)}{_footer(result)}</main></body></html>\n'
    )
