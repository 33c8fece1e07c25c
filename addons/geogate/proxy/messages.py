"""What the proxy says about a decision or a refusal, worded once: the flow comment, the reason
a connection was killed, and the refusal of upstream mode."""

from __future__ import annotations

from geogate.core.decide import Decision

UPSTREAM_REFUSAL = ("geogate cannot run in upstream mode: the upstream proxy resolves and dials, so geogate never "
                    "sees the real destination; use regular, socks5, transparent or another mode")


def decided_by(country: str | None, rule: object) -> str:
    """`(COUNTRY, rule RULE)`: how every message about a decision names what decided it."""
    return f"({country or 'no country'}, rule {rule})"


def flow_comment(d: Decision) -> str | None:
    """The comment of a flow that was blocked or would be, None for a plain allow."""
    if d.blocked:
        return f"geogate: blocked {d.request.host} {decided_by(d.country, d.rule)}"
    if d.would_block:
        return f"geogate: would block {d.request.host} {decided_by(d.country, d.rule)}"
    return None


def blocked_connection(d: Decision) -> str:
    """Why a blocked connection was killed (mitmproxy shows it to some clients)."""
    return f"geogate: blocked {d.request.host} -> {d.address or '-'} {decided_by(d.country, d.rule)}"
