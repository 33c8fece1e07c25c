"""The kernel's sets against the engine: for any address, the kernel blocks exactly what
GateState.decide blocks (a request with no host, the port class's port, the profile's client).

Addresses are drawn at random from the whole space and, more densely, where mistakes would hide:
at and around every boundary of the databases and the policy networks, and in every IPv6 range
that carries an IPv4 address (NAT64 in each RFC 6052 layout, 6to4, IPv4-mapped/-compatible).
"""

from __future__ import annotations

import ipaddress
import random
from datetime import datetime
from datetime import timezone

import pytest

from geogate.core.decide import Request
from geogate.gateway import partition
from geogate.gateway import sets
from geogate.policy.state import GateState
from mmdbs import maxmind_record
from mmdbs import write_flat
from mmdbs import write_maxmind
from proxy_support import write_db
from proxy_support import write_policy

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
TEREDO = ipaddress.IPv6Network("2001::/32")

FLAT = {"127.0.1.0/24": "DE", "127.0.2.0/24": "KP", "10.77.2.0/28": "DE", "10.77.2.16/28": "KP",
        "fd77:2::10/128": "DE", "fd77:2::20/128": "KP", "5.0.0.0/8": "RU", "5.1.0.0/16": "FR",
        "8.8.8.0/24": "US", "175.45.176.0/22": "KP", "2a00::/12": "FR", "2a02:2000::/20": "CN",
        "2400:cb00::/32": "US", "64:ff9b::5.2.0.0/112": "CN", "2002:808:800::/40": "IR",
        "2001:0:808:800::/64": "RU", "1.0.0.0/24": "AU", "1.0.1.0/24": "CN", "200.0.0.0/5": "BR"}
SECOND = {"5.0.0.0/9": "RU", "8.8.0.0/16": "US", "127.0.2.0/25": "DE", "100.0.0.0/6": "CN", "2a00::/16": "DE"}


def policy_text(**kw) -> str:
    head = kw.get("head", "default: allow\nspecial: lookup\ngeo:\n  unknown: block\n")
    return (f"version: 1\nname: kernel-test\nmode: {kw.get('mode', 'enforce')}\n{head}"
            f"{kw.get('settings', '')}rules:\n{kw.get('rules', '')}"
            "  - name: doj\n    action: block\n    countries: ['@us-doj-countries-of-concern']\n"
            f"{kw.get('after', '')}{kw.get('clients', '')}")


POLICIES = {
    "doj": {},
    "networks": {"rules": "  - name: carve\n    action: allow\n"
                          "    networks: [175.45.177.0/24, '2a02:2000:1::/48', '64:ff9b::5.2.1.0/120']\n"
                          "  - name: lan-block\n    action: block\n    networks: [10.77.2.8/29, '2a00:1::/32']\n"},
    "ports": {"rules": "  - name: mail\n    action: block\n    ports: [25, 465-587]\n"
                       "  - name: ssh-cn\n    action: allow\n    ports: [22]\n    countries: [CN]\n"},
    "nat64": {"settings": "nat64: ['2001:db8:100::/40', '2001:db8:200::/56', '2001:db9::/32', '2001:db8:322:344::/64', "
                          "'64:ff9b:1::/48', '2001:db8:400::/96']\n"},
    "allowlist": {"head": "default: block\nspecial: allow\ngeo:\n  unknown: block\n",
                  "rules": "  - name: eu\n    action: allow\n    countries: [DE, FR]\n"},
    "monitor": {"mode": "monitor"},
    "clients": {"clients": "clients:\n  - name: lab\n    sources: [10.77.1.0/28, 'fd77:1::/64']\n    rules:\n"
                           "      - name: lab-ru\n        action: allow\n        countries: [RU, CN]\n"
                           "  - name: guests\n    sources: [10.77.1.0/24]\n    rules:\n"
                           "      - name: guest-fr\n        action: block\n        countries: [FR]\n"
                           "  - name: admins\n    users: [root]\n    rules:\n"
                           "      - name: all\n        action: allow\n        networks: [0.0.0.0/0]\n"},
    "teredo-allowed": {"head": "default: allow\nspecial: allow\ngeo:\n  unknown: allow\n",
                       "rules": "  - name: teredo\n    action: allow\n    networks: ['2001::/32']\n"},
}


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernel-dbs")
    flat = write_flat(d / "flat.mmdb", FLAT)
    second = write_flat(d / "second.mmdb", SECOND)
    city = write_maxmind(d / "city.mmdb", {"5.2.0.0/16": maxmind_record("CN", continent="AS"),
                                           "2a00:1::/32": maxmind_record("FR", "DE", continent="EU")})
    return {"flat": [flat], "two": [flat, second], "city": [flat, city]}


def boundary_values(runs_by_family: dict[int, list], version: int) -> list[int]:
    out = []
    for first, last, _key in runs_by_family[version]:
        out += [first - 1, first, first + 1, last - 1, last, last + 1]
    top = partition.TOP[version]
    return [v for v in out if 0 <= v <= top]


def sample(state: GateState, n: int, rng: random.Random) -> list:
    values4 = [rng.getrandbits(32) for _ in range(n)]
    values6 = [rng.getrandbits(128) for _ in range(n)]
    runs = [partition.database_runs(db) for db in state.databases.databases]
    nets = [net for r in state.policy.all_rules() for net in r.networks or ()]
    for r in runs:
        values4 += boundary_values(r, 4)
        values6 += boundary_values(r, 6)
    for net in nets:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        (values4 if net.version == 4 else values6).extend(v for v in (lo - 1, lo, hi, hi + 1) if v >= 0)
    # every carrier range, with IPv4 values near the boundaries and at random
    v4_points = [v for v in values4 if 0 <= v < 1 << 32]
    for c in partition.carriers(state.policy):
        for v in rng.sample(v4_points, min(len(v4_points), 300)):
            x = c.encode(v)
            values6 += [x, x + rng.getrandbits(16), c.encode(max(v - 1, 0)) + rng.getrandbits(8)]
            if c.u_octet:
                values6.append(x | rng.randrange(1, 256) << 56)  # a u-octet that is not zero
        values6 += [c.first, c.last, c.first - 1, c.last + 1]
    for net in [*state.policy.nat64.networks, ipaddress.IPv6Network("64:ff9b:1::/48")]:
        values6 += [int(net.network_address) + rng.getrandbits(128 - net.prefixlen) for _ in range(50)]
    top6 = partition.TOP[6]
    ips = [ipaddress.IPv4Address(v) for v in values4 if 0 <= v < 1 << 32]
    ips += [ipaddress.IPv6Address(v) for v in values6 if 0 <= v <= top6]
    return ips


def engine_blocks(state: GateState, ks: sets.KernelSets, profile: int, cls: int, ip) -> bool:
    req = Request(None, ks.classes[cls].port, client_ip=ks.profiles[profile].client)
    return state.decide(req, [ip], now=NOW).action == "block"


@pytest.mark.parametrize("dbset", ["flat", "two", "city"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_kernel_sets_agree_with_the_engine(tmp_path, dbs, dbset, name):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(**POLICIES[name]))
    state = GateState.load(path, dbs[dbset])
    ks = sets.build(state, now=NOW)
    rng = random.Random(f"{name}-{dbset}")
    ips = sample(state, 400, rng)
    checked = 0
    for (profile, cls) in ks.blocked:
        for ip in ips:
            kernel, engine = ks.is_blocked(profile, cls, ip), engine_blocks(state, ks, profile, cls, ip)
            whole = next((w for w in partition.wholes() if ip.version == 6 and w.first <= int(ip) <= w.last), None)
            if whole is not None and ks.whole_blocked[whole.name][list(ks.blocked).index((profile, cls))]:
                assert kernel, f"{ip}: the kernel lets {whole.name} through although it said it blocks all of it"
                continue
            assert kernel == engine, (f"{ip} profile {ks.profiles[profile].name} ports {ks.classes[cls].ranges}: "
                                      f"kernel {'blocks' if kernel else 'allows'}, engine "
                                      f"{'blocks' if engine else 'allows'}")
            checked += 1
    assert checked > 1000


def test_what_the_sets_hold(tmp_path, dbs):
    """Spot checks that do not depend on the oracle: the test policy blocks KP and unknowns."""
    state = GateState.load(write_policy(tmp_path / "p.yaml"), [write_db(tmp_path / "geo.mmdb")])
    ks = sets.build(state, now=NOW)
    assert [p.name for p in ks.profiles] == [None]
    blocked = lambda ip: ks.is_blocked(0, 0, ipaddress.ip_address(ip))  # noqa: E731
    assert blocked("10.77.2.20") and not blocked("10.77.2.10")
    assert blocked("fd77:2::20") and not blocked("fd77:2::10")
    assert blocked("64:ff9b::10.77.2.20") and not blocked("64:ff9b::10.77.2.10")
    assert blocked("2002:a4d:214::1") and not blocked("2002:a4d:20a::1")
    assert blocked("2001::1")  # Teredo, as a whole
    assert ks.teredo_blocked_whole[(0, 0)] and any("Teredo" in n and "blocked" in n for n in ks.notes)


def test_teredo_allowed_when_the_policy_allows_all_of_it(tmp_path, dbs):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(**POLICIES["teredo-allowed"]))
    ks = sets.build(GateState.load(path, dbs["flat"]), now=NOW)
    assert not any(ks.teredo_blocked_whole.values())
    assert not ks.is_blocked(0, 0, ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert ks.is_blocked(0, 0, ipaddress.ip_address("175.45.176.1"))


def test_profiles_users_and_hosts_are_named_as_not_enforceable(tmp_path, dbs):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(rules="  - name: named\n    action: allow\n    hosts: [example.org]\n",
                                clients=POLICIES["clients"]["clients"]))
    ks = sets.build(GateState.load(path, dbs["flat"]), now=NOW)
    assert [p.name for p in ks.profiles] == [None, "lab", "guests"]
    assert ks.profiles[2].client == ipaddress.ip_address("10.77.1.16")  # the first guest not in lab
    assert any("admins" in n and "user" in n for n in ks.notes)
    assert any("rule named" in n and "proxied ports" in n for n in ks.notes)


def test_monitor_mode_blocks_nothing(tmp_path, dbs):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(mode="monitor"))
    ks = sets.build(GateState.load(path, dbs["flat"]), now=NOW)
    assert ks.element_counts() == {"ipv4": 0, "ipv6": 0}
