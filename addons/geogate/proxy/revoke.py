"""Revocation: open connections judged again when the policy or the databases change.

A decision is made when a connection opens; a tunnel or a WebSocket can stay open for days. After
a reload (or when the databases turn stale under `geo.on_stale: block`) every open upstream
connection is decided again by the one engine, on what it is actually connected to: the address
it was pinned to (the socket's peer), its client and user, and the name it was opened for. Those
the new state blocks are closed and recorded with `"event": "revoked"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import Iterator

from mitmproxy.connection import Client
from mitmproxy.connection import Server

from geogate.core.addresses import parse_ip
from geogate.core.decide import Decision
from geogate.core.record import decision_record
from geogate.policy.state import GateState
from geogate.proxy.flows import carried_key


@dataclass(slots=True)
class OpenConnection:
    client: Client
    server: Server
    decision: Decision  # the decision it was opened under


class OpenConnections:
    """The upstream connections open now, from server_connected to server_disconnected.

    Plain HTTP through the explicit proxy is decided request by request (requestheaders), so its
    keep-alive connections need no second judgement: a request to a destination now blocked gets
    its 403, and closing the connection would only break requests in flight. In regular mode only
    CONNECT tunnels (`tunnel`) and WebSockets (upgraded plain HTTP) are held here.
    """

    def __init__(self) -> None:
        self._by_client: dict[str, dict[str, OpenConnection]] = {}
        self._tunnels: dict[str, set[tuple]] = {}  # client id -> CONNECT targets, as carried_key

    def opened(self, client: Client, server: Server, decision: Decision) -> None:
        self._by_client.setdefault(client.id, {})[server.id] = OpenConnection(client, server, decision)

    def closed(self, client: Client, server: Server) -> None:
        held = self._by_client.get(client.id)
        if held is not None:
            held.pop(server.id, None)
            if not held:
                del self._by_client[client.id]

    def tunnel(self, client_id: str, address: tuple) -> None:
        """A CONNECT to `address` was allowed on this client connection."""
        self._tunnels.setdefault(client_id, set()).add(carried_key(address))

    def is_tunnel(self, client_id: str, address: tuple | None) -> bool:
        held = self._tunnels.get(client_id)
        return held is not None and address is not None and carried_key(address) in held

    def forget(self, client_id: str) -> None:
        self._by_client.pop(client_id, None)
        self._tunnels.pop(client_id, None)

    def __iter__(self) -> Iterator[OpenConnection]:
        for held in list(self._by_client.values()):
            yield from list(held.values())

    def __len__(self) -> int:
        return sum(len(h) for h in self._by_client.values())


def judge_again(state: GateState, conn: OpenConnection) -> Decision | None:
    """The open connection decided by `state`, on the address it is connected to; None when that
    address is not known (nothing to judge it on)."""
    peer = conn.server.peername or conn.server.address
    ip = parse_ip(str(peer[0])) if peer else None
    if ip is None:
        return None
    return state.decide(conn.decision.request, [ip])  # the same question, asked of the new state


def revocations(state: GateState, open_now: OpenConnections) -> list[tuple[OpenConnection, Decision]]:
    """The open connections `state` blocks, with the decision that blocks each."""
    out = []
    for conn in open_now:
        d = judge_again(state, conn)
        if d is not None and d.blocked:
            out.append((conn, d))
    return out


def revoked_record(old: Decision, new: Decision) -> dict[str, Any]:
    """The decision-log line of a closed connection: the new decision, with what it replaced."""
    rec = decision_record(new)
    rec["event"] = "revoked"
    rec["revoked"] = {
        "old_rule": old.rule, "new_rule": new.rule,
        "old_policy_sha256": old.policy.sha256, "new_policy_sha256": new.policy.sha256,
    }
    return rec
