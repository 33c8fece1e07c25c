"""Kernel flow counts without a kernel: attribution by the engine, the kernel's totals across
table swaps and flushes, what `lagging` means; and the ruleset lines that feed them."""

from __future__ import annotations

import ipaddress

from geogate.gateway import ruleset
from geogate.gateway import sets
from geogate.gateway.flowcount import FlowCounts
from geogate.gateway.flowcount import FlowVerdicts
from geogate.gateway.nflog import Refused
from geogate.policy.state import GateState
from proxy_support import write_db
from proxy_support import write_policy

CLIENT = ipaddress.ip_address("10.77.1.2")
DE, KP = ipaddress.ip_address("10.77.2.10"), ipaddress.ip_address("10.77.2.20")


def test_verdicts_come_from_the_engine_and_follow_a_new_state(tmp_path):
    db = write_db(tmp_path / "geo.mmdb")
    state = GateState.load(write_policy(tmp_path / "p.yaml"), [db])
    current = [state]
    verdicts = FlowVerdicts(lambda: current[0])
    assert verdicts(Refused("tcp", CLIENT, KP, 22)) == ("doj", "KP", True)
    assert verdicts(Refused("udp", CLIENT, DE, 53)) == ("default", "DE", False)
    # a new policy (DE blocked): the cache of the old one is not used
    current[0] = GateState.load(write_policy(tmp_path / "q.yaml", before="  - name: no-de\n    action: block\n"
                                                                             "    countries: [DE]\n"), [db])
    assert verdicts(Refused("udp", CLIENT, DE, 53)) == ("no-de", "DE", True)


def test_counts_per_rule_country_and_protocol_with_the_kernel_totals():
    counts = FlowCounts()
    assert counts.snapshot()["kernel"] is None  # not read yet: nothing claimed
    for _ in range(3):
        counts.add("allowed", "default", "DE", "tcp")
    counts.add("allowed", "default", None, "icmp")
    counts.add("blocked", "doj", "KP", "udp")
    counts.kernel({"allowed_new": 4, "blocked_new": 1})
    snap = counts.snapshot()
    assert snap["allowed"] == {"default": {"DE": 3, "none": 1}} and snap["blocked"] == {"doj": {"KP": 1}}
    assert snap["protocols"] == {"allowed": {"tcp": 3, "icmp": 1}, "blocked": {"udp": 1}}
    assert snap["kernel"] == {"allowed": 4, "blocked": 1} and snap["lagging"] is False

    # a swap: the old table's counters (read just before) are kept; the new table starts at 0
    counts.table_replaced({"allowed_new": 6, "blocked_new": 1})
    counts.kernel({"allowed_new": 2, "blocked_new": 0})
    snap = counts.snapshot()
    assert snap["kernel"] == {"allowed": 8, "blocked": 1}
    # 8 allowed in the kernel, 4 seen here: the NFLOG limit (or a lagging reader) kept 4 back
    assert snap["unattributed"] == {"allowed": 4, "blocked": 0} and snap["lagging"] is True

    # a flush: what was read last stays, what was counted since is gone, and that is said
    counts.table_replaced(None)
    snap = counts.snapshot()
    assert snap["kernel"] == {"allowed": 8, "blocked": 1} and snap["counts_lost_at_flush"] == 1
    counts.lost()
    assert counts.snapshot()["nflog_overruns"] == 1


def test_the_ruleset_counts_logs_and_stamps_allowed_flows(tmp_path):
    state = GateState.load(write_policy(tmp_path / "p.yaml"), [write_db(tmp_path / "geo.mmdb")])
    config = ruleset.GatewayConfig(lan=("lan0",))
    text = ruleset.render(sets.build(state), config, generation=1)
    assert "counter allowed_new { }" in text and "counter blocked_new { }" in text
    assert (f'ct state new ct mark and 0x7f000000 != 0x2000000 counter name "allowed_new" limit rate '
            f"{config.log_rate}/second burst {config.log_rate * 2} packets log group {config.flow_group}") in text
    assert "ct mark set ct mark and 0x80ffffff or 0x2000000" in text
    assert f'ct state new counter name "blocked_new" limit rate {config.log_rate}/second' in text
    # the stamp follows the generation, and is never 0 (a connection nobody stamped)
    tags = {line for g in range(1, 300) for line in ruleset.render(sets.build(state), config, g).splitlines()
            if "ct mark set" in line}
    assert len(tags) == 127 and not any(line.endswith(" or 0x0") for line in tags)
