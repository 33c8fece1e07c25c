"""Revocation, one step at a time: open connections judged again by the one engine on the
address they are connected to, and the record of those closed (tests/test_revoke_e2e.py closes
real ones through a real mitmdump)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mitmproxy.test import tflow

from geogate.policy.state import GateState
from geogate.proxy.flows import make_request
from geogate.proxy.revoke import OpenConnections
from geogate.proxy.revoke import judge_again
from geogate.proxy.revoke import revocations
from geogate.proxy.revoke import revoked_record
from proxy_support import write_db
from proxy_support import write_policy
from record_schema import check_record

CUT = "  - name: cut\n    action: block\n    networks: [127.0.1.1/32]\n"


def states(tmp_path: Path) -> tuple[GateState, GateState]:
    db = write_db(tmp_path / "geo.mmdb")
    before = GateState.load(write_policy(tmp_path / "a.yaml", name="a"), [db])
    after = GateState.load(write_policy(tmp_path / "b.yaml", name="b", before=CUT), [db])
    return before, after


def opened(open_now: OpenConnections, state: GateState, host: str, peer: str):
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    server.address, server.peername = (host, 443), (peer, 443)
    req = make_request(host, 443, peername=("192.0.2.9", 40000), mode="regular", flow_id=client.id)
    d = state.decide(req, [ipaddress.ip_address(peer)])
    assert not d.blocked
    open_now.opened(client, server, d)
    return client, server, d


def test_connections_the_new_state_blocks_are_found_by_their_pinned_address(tmp_path: Path) -> None:
    before, after = states(tmp_path)
    open_now = OpenConnections()
    # a name pinned to 127.0.1.1, and one pinned to 127.0.1.2: the rule names the address
    cut_client, cut_server, old = opened(open_now, before, "cut.example", "127.0.1.1")
    opened(open_now, before, "kept.example", "127.0.1.2")
    assert len(open_now) == 2
    assert revocations(before, open_now) == []  # the same policy blocks nothing
    ((conn, d),) = revocations(after, open_now)
    assert conn.server is cut_server and d.rule == "cut" and d.request.host == "cut.example"
    assert d.request.client_ip == old.request.client_ip and d.request.flow_id == cut_client.id
    rec = revoked_record(old, d)
    check_record(rec)
    assert rec["event"] == "revoked" and rec["address"] == "127.0.1.1" and rec["policy"]["name"] == "b"
    assert rec["revoked"] == {"old_rule": "default", "new_rule": "cut", "old_policy_sha256": before.policy.ref.sha256,
                              "new_policy_sha256": after.policy.ref.sha256}
    open_now.closed(cut_client, cut_server)
    assert revocations(after, open_now) == [] and len(open_now) == 1


def test_a_connection_without_a_known_address_is_not_judged_and_clients_are_forgotten(tmp_path: Path) -> None:
    before, after = states(tmp_path)
    open_now = OpenConnections()
    client, server, _d = opened(open_now, before, "cut.example", "127.0.1.1")
    server.peername = None
    assert judge_again(after, next(iter(open_now))) is None  # address is the name: nothing to judge
    open_now.forget(client.id)
    assert len(open_now) == 0


def test_each_revocation_is_counted_by_the_decision_that_closed_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mitmproxy.test import taddons

    from geogate.metrics.families import Metrics
    from geogate.proxy.addon import GeoGate

    before, after = states(tmp_path)
    open_now = OpenConnections()
    opened(open_now, before, "cut.example", "127.0.1.1")
    opened(open_now, before, "kept.example", "127.0.1.2")
    ((conn, d),) = revocations(after, open_now)
    country = revoked_record(conn.decision, d)["country"]  # the test database's country for 127.0.1.1
    gate = SimpleNamespace(open=open_now, revoked=0, log=None, metrics=Metrics())
    with taddons.context():
        GeoGate._revoke(gate, after)  # type: ignore[arg-type]
    assert gate.revoked == 1
    samples = [s for f in gate.metrics.registry.collect() if f.name == "geogate_revocations" for s in f.samples
               if s.name == "geogate_revocations_total"]
    assert [(s.labels, s.value) for s in samples] == [({"rule": "cut", "country": country}, 1.0)]
