"""The terminal report: who was contacted, from where, and what the policy says, blocked first."""

from __future__ import annotations

from geogate.audit.aggregate import CHANGE_TITLES
from geogate.audit.aggregate import CHANGES
from geogate.audit.aggregate import Aggregate
from geogate.audit.aggregate import Changes
from geogate.audit.auditor import AuditResult
from geogate.audit.fmt import LISTED_FILES
from geogate.audit.fmt import count
from geogate.audit.fmt import database_line
from geogate.audit.fmt import ellipsize
from geogate.audit.fmt import files_title
from geogate.audit.fmt import plural
from geogate.audit.fmt import policy_line
from geogate.audit.model import NOT_SENT_REASONS

HOST_WIDTH = 40


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(out).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def _header(result: AuditResult) -> list[str]:
    lines = []
    n = result.flows
    if result.source == "replay" and not result.inputs:
        lines.append(f"geogate audit of replayed flows: {plural(n, 'flow')}")
    elif len(result.inputs) == 1:
        i = result.inputs[0]
        kind = "mitmproxy flow file" if i.format == "mitmproxy" else "HAR file"
        replayed = " (replayed by mitmdump)" if result.source == "replay" else ""
        lines.append(f"geogate audit of {i.path}{replayed}: {plural(n, 'flow')} ({kind})")
    else:
        lines.append(f"geogate audit of {files_title([i.path for i in result.inputs])}: {plural(n, 'flow')}")
        for i in result.inputs[:LISTED_FILES]:
            lines.append(f"  {i.path}  {i.format}  {plural(i.flows, 'flow')}")
        rest = result.inputs[LISTED_FILES:]
        if rest:
            lines.append(f"  ... and {plural(len(rest), 'more file')}, {plural(sum(i.flows for i in rest), 'flow')}")
    lines.append(f"policy     {policy_line(result.policy)}")
    if result.against is not None:
        lines.append(f"against    {policy_line(result.against)}")
    for info in result.databases:
        lines.append(f"database   {database_line(info)}")
    lines.append(f"addresses  {_addresses_note(result)}")
    ignored = sum(i.ignored for i in result.inputs)
    if ignored:
        lines.append(f"skipped    {plural(ignored, 'HAR entry', 'HAR entries')} that are not network traffic "
                     "(data:, blob: and extension URLs)")
    return lines


def inferred_text(inferred: list[tuple[str, str]]) -> str:
    """Where entries of a host would have gone, as the rest of the file recorded it."""
    if not inferred:
        return "none recorded for this host"
    return "inferred " + ", ".join(f"{a} {c if c.startswith('(') else f'({c})'}" for a, c in inferred)


def _not_sent_section(result: AuditResult) -> list[str]:
    ns = result.not_sent
    if not ns.entries:
        return []
    why = ", ".join(f"{count(n)} {NOT_SENT_REASONS[w]}" for w, n in sorted(ns.by_why.items(), key=lambda wn: -wn[1]))
    lines = [f"NOT SENT: {plural(ns.entries, 'HAR entry', 'HAR entries')} never went to the network ({why}); "
             "not judged, no bytes counted"]
    several = len(result.inputs) > 1
    rows = [([r.file] if several else []) + [ellipsize(r.destination, HOST_WIDTH), count(r.entries),
                                             inferred_text(r.inferred), r.reason]
            for r in ns.destination_rows()]
    headers = (["FILE"] if several else []) + ["DESTINATION", "ENTRIES", "ADDRESS", "WHY"]
    lines += _table(headers, rows, right={2 if several else 1})
    if any(r.inferred for r in ns.rows.values()):
        lines.append("inferred: an address the same host's recorded traffic went to elsewhere in the same file; "
                     "these entries record none")
    return lines


def _addresses_note(result: AuditResult) -> str:
    resolved, unresolved = result.counts.resolved, result.counts.unresolved
    note = "as recorded in the file" + ("s" if len(result.inputs) > 1 else "")
    if result.resolve:
        note += ("; names without one were looked up now (--resolve), which reflects today's DNS, "
                 "not the recording's")
        if resolved:
            note += f" ({plural(resolved, 'flow')}, marked *)"
    else:
        note += " (offline)"
    if unresolved:
        note += (f"; {plural(unresolved, 'flow')} had no address and "
                 f"{'is' if unresolved == 1 else 'are'} listed as unresolved")
        if not result.resolve:
            note += " (--resolve looks names up)"
    return note


def _incomplete(result: AuditResult) -> list[str]:
    if result.complete:
        return []
    lines = ["INCOMPLETE: the results below cover only the flows that could be read."]
    lines += [f"  {p.text()}" for p in result.problems]
    if result.problems_unlisted:
        lines.append(f"  ... and {plural(result.problems_unlisted, 'more problem')}")
    return lines


def _destinations(agg: Aggregate) -> list[str]:
    rows = []
    for d in agg.destination_rows():
        address = (d.address + (" *" if d.resolution == "resolved" else "")) if d.address else "-"
        rows.append([ellipsize(d.host, HOST_WIDTH), address, d.country, d.label, d.rule,
                     count(d.tally.flows), count(d.tally.bytes_sent), count(d.tally.bytes_received)])
    return _table(["DESTINATION", "ADDRESS", "COUNTRY", "ACTION", "RULE", "FLOWS", "SENT", "RECEIVED"],
                  rows, right={5, 6, 7})


def _countries(agg: Aggregate) -> list[str]:
    rows = [[c.key, count(c.tally.flows), count(c.tally.would_block), count(len(c.hosts)),
             count(c.tally.bytes_sent), count(c.tally.bytes_received)] for c in agg.country_rows()]
    t = agg.totals
    hosts = len(set().union(*(c.hosts for c in agg.countries.values()))) if agg.countries else 0
    rows.append(["all", count(t.flows), count(t.would_block), count(hosts), count(t.bytes_sent),
                 count(t.bytes_received)])
    return _table(["COUNTRY", "FLOWS", "BLOCKED", "HOSTS", "SENT", "RECEIVED"], rows, right={1, 2, 3, 4, 5})


_OUTCOMES = (
    ("block", "blocked"),
    ("unresolved", "unresolved (no address to check)"),
    ("would-block", "would be blocked in enforce mode"),
    ("monitor", "allowed but flagged by a monitor rule"),
)


def _verdict(agg: Aggregate) -> list[str]:
    t = agg.totals
    if not t.flows:
        return ["no flows to audit"]
    if not t.would_block:
        lines = [f"none of the {plural(t.flows, 'flow')} would be blocked"]
    else:
        parts = []
        for lab, text in _OUTCOMES:
            n = agg.by_label.get(lab, 0)
            if n:
                rules = ", ".join(f"{rule} {count(k)}" for rule, k in agg.rules_for_label(lab))
                parts.append(f"{count(n)} {text}" + (f" ({rules})" if lab != "unresolved" else ""))
        lines = [f"{count(t.would_block)} of {plural(t.flows, 'flow')} would be blocked: " + "; ".join(parts)]
    if agg.host_mismatches:
        lines.append(f"{plural(agg.host_mismatches, 'flow')} named a host only in SNI or Host, a claim about the "
                     "address that is not checked offline, so `hosts` rules did not match; --resolve checks them")
    return lines


def _changes_section(changes: Changes, change: str) -> list[str]:
    tally = changes.changed[change]
    lines = [f"{CHANGE_TITLES[change].upper()}: {plural(tally.flows, 'flow')}, {count(tally.bytes_sent)} bytes sent, "
             f"{count(tally.bytes_received)} received"]
    rows = [[ellipsize(r.host, HOST_WIDTH), r.address or "-", r.country, f"{r.before} -> {r.after}",
             f"{r.rule_before} -> {r.rule_after}", count(r.tally.flows), count(r.tally.bytes_sent),
             count(r.tally.bytes_received)] for r in changes.rows_for(change)]
    if rows:
        lines += _table(["DESTINATION", "ADDRESS", "COUNTRY", "ACTION", "RULE", "FLOWS", "SENT", "RECEIVED"],
                        rows, right={5, 6, 7})
    return lines


def render(result: AuditResult) -> str:
    lines = _header(result)
    incomplete = _incomplete(result)
    if incomplete:
        lines += [""] + incomplete
    counted = result.counts
    if isinstance(counted, Changes):
        ch = counted
        for change in CHANGES:
            if ch.changed[change].flows:
                lines += [""] + _changes_section(ch, change)
        not_sent = _not_sent_section(result)
        if not_sent:
            lines += [""] + not_sent
        counts = ", ".join(f"{count(ch.changed[change].flows)} {CHANGE_TITLES[change]}" for change in CHANGES)
        lines += ["", f"{counts}, {count(ch.unchanged)} unchanged (of {plural(ch.totals.flows, 'flow')})"]
    else:
        agg = counted
        if agg.totals.flows:
            lines += [""] + _destinations(agg) + [""] + _countries(agg)
        not_sent = _not_sent_section(result)
        if not_sent:
            lines += [""] + not_sent
        lines += [""] + _verdict(agg)
    if incomplete:
        lines.append("INCOMPLETE: see the problems listed at the top")
    return "\n".join(lines) + "\n"
