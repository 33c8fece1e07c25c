"""What a hook knows about a destination, turned into a decide.Request; and the decisions each
client connection carries from one hook to the next. Pure: no I/O, no mitmproxy state.

Two kinds of mitmproxy modes exist for geogate:
- the client names its destination (regular, socks5, reverse, upstream): that name is resolved
  once, checked, and the connection is pinned to the checked address;
- the destination was intercepted by the operating system (transparent, wireguard, local, tun,
  osproxy): the address is the original destination and is what gets checked. A name from SNI or
  the Host header is only a claim about it (the record's host_mismatch).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from functools import lru_cache
from typing import NamedTuple

from geogate.core import clients
from geogate.core.addresses import AddressError
from geogate.core.addresses import IPAddress
from geogate.core.addresses import parse_ip
from geogate.core.addresses import split_host_port
from geogate.core.cache import BoundedCache
from geogate.core.decide import Decision
from geogate.core.decide import Request
from geogate.core.decide import parse_client
from geogate.core.record import printable
from geogate.policy.state import utc_day

HostPort = tuple[str, int]  # where mitmproxy dials: a host name or address text, and a port


class FlowKey(NamedTuple):
    """What a decision for a destination the client named depends on, besides the state: the
    key of RecentDecisions."""

    host: str
    port: int
    client_ip: str | None
    user: str | None
    mode: str


def mode_name(proxy_mode: object) -> str:
    """The mitmproxy mode name (regular, transparent, socks5, ...) of a client connection."""
    return getattr(proxy_mode, "type_name", None) or "unknown"


# every request of a connection asks again; a cache hit runs no Python code
client_text = lru_cache(maxsize=4096)(clients.client_text)


def make_request(
    host: str | None,
    port: int | None,
    *,
    peername: tuple | None,
    mode: str,
    flow_id: str | None,
    user: str | None = None,
    sni: str | None = None,
    claim: bool = False,
    claimed_addresses: frozenset[IPAddress] | None = None,
) -> Request:
    client = client_text(peername)
    # host, SNI and user are what a client sent: kept as valid UTF-8 (record.printable), so
    # every record, log line and block page made from them is
    return Request(
        host=printable(host) if host else host,
        port=port,
        client_ip=parse_client(str(peername[0])) if peername else None,
        user=printable(user) if user else user,
        host_is_claim=claim,
        host_addresses=claimed_addresses if claim else None,
        flow_id=flow_id,
        client=client,
        mode=mode,
        sni=printable(sni) if sni else sni,
    )


def pinned_address(decision: Decision, port: int) -> HostPort | None:
    """Where an allowed connection must go: the checked address, never a name."""
    if decision.address is None:
        return None
    return (str(decision.address), port)


_DEFAULT_PORTS = {b"http": 80, b"https": 443, b"ws": 80, b"wss": 443}


def target_url(data) -> str:
    """The URL a request names (mitmproxy RequestData: scheme, host, port, path), default port
    left out, IPv6 in brackets; bytes of the path that are not UTF-8 as `\\xNN` (record.printable)."""
    path = data.path
    return _origin_text(data.scheme, data.host, data.port) + ("" if path == b"*" else path.decode("utf-8", "backslashreplace"))


@lru_cache(maxsize=4096)  # clients repeat their destinations; see client_text
def _origin_text(scheme: bytes, host: str, port: int) -> str:
    """`scheme://host[:port]`: target_url without the path."""
    if ":" in host:
        host = f"[{host}]"
    if _DEFAULT_PORTS.get(scheme) != port:
        host = f"{host}:{port}"
    return f"{scheme.decode('ascii', 'replace')}://{host}"


def host_of_header(value: str) -> str:
    """The host part of a Host header (`name`, `name:port`, `[v6]:port`)."""
    try:
        return split_host_port(value)[0]
    except AddressError:
        return value.strip()


def is_ip(host: str) -> bool:
    return parse_ip(host) is not None


@dataclass
class CarriedDecisions:
    """Decisions made earlier on a client connection (http_connect, requestheaders, an earlier
    server_connect), so server_connect pins without deciding twice.

    Keyed by the exact upstream address mitmproxy is about to dial: the name the client asked
    for and the address it was pinned to. An address with no entry was never checked on this
    connection and gets a fresh decision. Entries live as long as the client connection; after a
    reload, revocation (revoke.py) closes the open connections the new state blocks.
    """

    _by_client: dict[str, dict[HostPort, Decision]] = field(default_factory=dict)

    def remember(self, client_id: str, address: HostPort, decision: Decision) -> None:
        self.remember_key(client_id, carried_key(address), decision)

    def remember_key(self, client_id: str, key: HostPort, decision: Decision) -> None:
        """remember() for an address already in key form (lower-case host, int port): what
        carried_key gives."""
        by_address = self._by_client.get(client_id)
        if by_address is None:
            by_address = self._by_client[client_id] = {}
        by_address[key] = decision

    def get(self, client_id: str, address: tuple | None) -> Decision | None:
        if not address:
            return None
        return self._by_client.get(client_id, {}).get(carried_key(address))

    def forget(self, client_id: str) -> None:
        self._by_client.pop(client_id, None)

    def __len__(self) -> int:
        return len(self._by_client)


def carried_key(address: tuple) -> HostPort:
    """The form CarriedDecisions keys an address by: lower-case host, int port."""
    host, port = address[0], address[1]
    if type(address) is tuple and len(address) == 2 and type(host) is str and type(port) is int and host == host.lower():
        return address  # already in key form (the common case): no new tuple
    return (str(host).lower(), int(port))


# How long a decision on a host name is reused for repeated requests. The resolver re-reads the
# hosts file at most once a second and keeps DNS answers for at least 5 s, so a fresh decision
# could differ only when a DNS answer expires within that second: then the old answer is used for
# less than a second longer, still an answer that was checked.
NAME_REUSE_SECONDS = 1.0


@dataclass(slots=True)
class RecentDecision:
    state: object  # the GateState that decided; a reload makes a new one
    day_ends: float  # time.time() at which the UTC day of the decision ends (rules expire by date),
    # or earlier the databases turn stale (geo.max_age): then the same request decides differently
    until: float  # time.monotonic() after which the name must be resolved again
    decision: Decision  # the decision: the same for every request it is reused for
    record: dict  # its decision record, the template for repeats (see record.repeat_record)

    @classmethod
    def of(cls, state: object, decision: Decision, record: dict, until: float) -> "RecentDecision":
        ends = utc_day(decision.wall)[1]
        limit = getattr(state, "limit", None)  # GateState.limit: when its databases turn stale
        if limit is not None and decision.wall < limit.stale_at:
            ends = min(ends, limit.stale_at)
        return cls(state, ends, until, decision, record)

    def again(self, flow_id: str | None, client: str | None, wall: float) -> Decision:
        """The same decision, made for another request (only who asked and when differ). A tunnel
        needs one of its own: the requests inside it name the CONNECT that decided it
        (connection_id)."""
        r = self.decision.request
        req = Request(r.host, r.port, r.client_ip, r.user, r.host_is_claim, r.host_addresses,
                      flow_id, client, r.mode, r.sni)
        return Decision(req, self.decision.outcome, wall=wall)


class RecentDecisions:
    """Plain-HTTP proxy requests repeat: the same client asks for the same host and port many
    times a second. Deciding each of them again (canonical name, resolution, engine, record)
    cannot come out differently while the state, the day and the name's resolution hold, so
    the decision is reused for that long. Keyed by everything the outcome depends on that the
    request carries: host as sent, port, client address and user.
    """

    def __init__(self, size: int = 1024) -> None:
        # first in, first out: a destination that stays busy is decided again only if more than
        # `size` others were decided since it was first
        self._entries = BoundedCache(size)

    def get(self, key: FlowKey, state: object, wall: float, mono: float) -> RecentDecision | None:
        """The entry for `key` if it still holds at `wall` (time.time()) and `mono` (time.monotonic())."""
        entry = self._entries.get(key)
        if entry is None or entry.state is not state or entry.until < mono or wall >= entry.day_ends:
            return None
        return entry

    def put(self, key: FlowKey, entry: RecentDecision) -> None:
        self._entries.put(key, entry)

    def __len__(self) -> int:
        return len(self._entries)
