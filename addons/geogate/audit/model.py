"""The audit's vocabulary: one recorded flow, reduced to what a decision and a report need, and the
problems met while reading. Plain data, shared by the readers, the aggregation and the reports."""

from __future__ import annotations

from dataclasses import dataclass

from geogate.core.addresses import IPAddress

# How a flow's destination address was obtained; reports say which, because only `recorded`
# is evidence of where the traffic really went.
RECORDED = "recorded"
RESOLVED = "resolved"  # looked up during the audit (--resolve): today's DNS, not the recording's
UNRESOLVED = "unresolved"  # no recorded address and no lookup (or the lookup failed)


def ip_text(ip: IPAddress) -> str:
    """An address as people read it: IPv4-mapped IPv6 with its IPv4 dotted (::ffff:192.0.2.1)."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)



def destination_text(host: str, port: int | None) -> str:
    """`host:port` (IPv6 in brackets), or the host alone when there is no port."""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host

@dataclass(frozen=True, slots=True)
class RecordedFlow:
    """One flow of a mitmproxy file or one HAR entry, as the audit sees it."""

    source: str  # file path as given, or "replay"
    index: int  # 0-based position of the flow/entry in its file
    flow_id: str | None
    kind: str  # http | websocket | tcp | udp | dns
    scheme: str  # http, https, ws, wss, tcp, udp, dns
    url: str  # scheme://host:port/path, never user info or query (reports get shared)
    host: str | None  # canonical host name or IP literal the client asked for; None if unusable
    host_text: str  # the host as recorded, for display
    port: int | None
    sni: str | None
    client: str | None  # "ip:port" of the client, "[v6]:port" for IPv6
    client_ip: IPAddress | None
    user: str | None
    mode: str  # mitmproxy mode at recording time (regular, transparent, ...), or "har"
    address: IPAddress | None  # the address recorded as connected to
    address_source: str | None  # peername | server-address | url-host | serverIPAddress
    host_is_claim: bool  # the name came from SNI/Host only, so it is a claim about `address`
    bytes_sent: int
    bytes_received: int
    started: float | None  # epoch seconds
    error: str | None = None  # what the recording says went wrong, if anything

    @property
    def destination(self) -> str:
        """host:port as people write it (IPv6 literals in brackets)."""
        return destination_text(self.host or self.host_text or "?", self.port)


# Why a HAR entry never went to the network (NotSent.why), as reports say it.
NOT_SENT_REASONS = {
    "cache": "served from the browser cache",
    "service-worker": "answered by a service worker",
    "failed": "failed before anything was sent",
}


@dataclass(frozen=True, slots=True)
class NotSent:
    """A HAR entry that never went to the network: answered by the browser's cache or a service
    worker, or a request that failed before it was sent. Not traffic: it is listed apart, its
    bytes are not counted, it is not decided, and it never fails the gate."""

    source: str
    index: int
    url: str  # as in RecordedFlow: no user info, no query
    host: str | None
    host_text: str
    port: int | None
    why: str  # a key of NOT_SENT_REASONS
    detail: str | None  # what the browser recorded, e.g. net::ERR_INTERNET_DISCONNECTED
    started: float | None

    @property
    def destination(self) -> str:
        return destination_text(self.host or self.host_text or "?", self.port)

    @property
    def reason(self) -> str:
        text = NOT_SENT_REASONS[self.why]
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in an input file that could not be audited.

    fatal: the file could not be read past `offset`, so every later flow is missing.
    Otherwise only the one flow/entry was skipped and reading went on.
    """

    path: str
    unit: str  # "flow" or "entry"
    index: int  # 0-based index of the flow/entry concerned (= how many were read before it)
    offset: int  # byte offset where it starts
    message: str
    fatal: bool

    def text(self) -> str:
        where = f"{self.unit} #{self.index + 1} at byte offset {self.offset}"
        if self.fatal:
            return (f"{self.path}: unreadable from {where} ({self.index} {self.unit}"
                    f"{'s' if self.index != 1 else ''} read before it): {self.message}")
        return f"{self.path}: skipped {where}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.path, "unit": self.unit, "index": self.index, "offset": self.offset,
                "message": self.message, "fatal": self.fatal}
