"""The transparent gateway for real: three network namespaces made by this test.

    client ns                     gateway ns (geogate --mode transparent,         servers ns
    10.77.1.2, fd77:1::2  <-veth->  gateway/{nftables,iptables}-setup.sh)  <-veth->  10.77.2.10 / fd77:2::10 (DE)
                                   10.77.1.1 | 10.77.2.1                             10.77.2.20 / fd77:2::20 (KP)

curl in the client namespace goes to the servers by address, as it would through any router;
the gateway's firewall rules (the shipped scripts) hand the connections to geogate.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager

import pytest

import system_deps
from proxy_support import ROOT
from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gg{os.getpid() % 100000}"
NS = {"client": f"{TAG}c", "gw": f"{TAG}g", "servers": f"{TAG}s"}
IF = {"client": f"{TAG}a", "gw_lan": f"{TAG}b", "gw_wan": f"{TAG}d", "servers": f"{TAG}e"}
OK4, BAD4, OK6, BAD6 = "10.77.2.10", "10.77.2.20", "fd77:2::10", "fd77:2::20"
TRUSTED = "  - name: trusted\n    action: allow\n    hosts: [trusted.test]\n"


def sh(*cmd: str, ns: str | None = None, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", NS[ns], *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=60, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@contextmanager
def in_netns(ns: str):
    """Run the body in namespace `ns` (this thread only): sockets made there stay there."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{NS[ns]}", os.O_RDONLY)
    try:
        os.setns(there, os.CLONE_NEWNET)
        yield
    finally:
        os.setns(here, os.CLONE_NEWNET)
        os.close(here)
        os.close(there)


def build_topology() -> None:
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", IF["client"], "type", "veth", "peer", "name", IF["gw_lan"])
    sh("ip", "link", "add", IF["gw_wan"], "type", "veth", "peer", "name", IF["servers"])
    for ifname, ns in ((IF["client"], "client"), (IF["gw_lan"], "gw"), (IF["gw_wan"], "gw"), (IF["servers"], "servers")):
        sh("ip", "link", "set", ifname, "netns", NS[ns])
    addrs = {("client", IF["client"]): ["10.77.1.2/24", "fd77:1::2/64"],
             ("gw", IF["gw_lan"]): ["10.77.1.1/24", "fd77:1::1/64"],
             ("gw", IF["gw_wan"]): ["10.77.2.1/24", "fd77:2::1/64"],
             ("servers", IF["servers"]): [f"{OK4}/24", f"{BAD4}/24", f"{OK6}/64", f"{BAD6}/64"]}
    for (ns, ifname), nets in addrs.items():
        for net in nets:
            sh("ip", "addr", "add", net, "dev", ifname, *(["nodad"] if ":" in net else []), ns=ns)
        sh("ip", "link", "set", ifname, "up", ns=ns)
    for ns in NS:
        sh("ip", "link", "set", "lo", "up", ns=ns)
    for ns, via4, via6 in (("client", "10.77.1.1", "fd77:1::1"), ("servers", "10.77.2.1", "fd77:2::1")):
        sh("ip", "route", "add", "default", "via", via4, ns=ns)
        sh("ip", "-6", "route", "add", "default", "via", via6, ns=ns)


def tear_down() -> None:
    for ns in NS.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # the veths go with them


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    system_deps.skip_unless("ip", "curl")
    probe = subprocess.run(["ip", "netns", "add", NS["client"]], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here (`ip netns add` said: {probe.stderr.strip()}); "
                    "this test needs root and CAP_SYS_ADMIN")
    subprocess.run(["ip", "netns", "del", NS["client"]], capture_output=True)
    tmp = tmp_path_factory.mktemp("gateway")
    origins: list[Origin] = []
    proxy = None
    try:
        build_topology()
        cert = make_cert(tmp / "cert", ["trusted.test"], [OK4, BAD4])
        with in_netns("servers"):
            for ip in (OK4, BAD4, OK6, BAD6):
                origins.append(Origin(ip, 80))
            for ip in (OK4, BAD4):
                origins.append(Origin(ip, 443, tls=cert))
        proxy = Mitmdump(tmp, policy=write_policy(tmp / "policy.yaml", before=TRUSTED), dbs=[write_db(tmp / "geo.mmdb")],
                         log=tmp / "decisions.jsonl", hosts=write_hosts(tmp / "hosts", {"trusted.test": OK4}),
                         prefix=["ip", "netns", "exec", NS["gw"]], listen_host="", port=8080,
                         args=["--mode", "transparent", "--set", "connection_strategy=lazy"])
        yield {"proxy": proxy, "cert": cert[0], "origins": {(o.host, o.port): o for o in origins}}
    finally:
        if proxy is not None:
            proxy.stop()
        for o in origins:
            o.close()
        tear_down()


def curl(*args: str) -> subprocess.CompletedProcess:
    return sh("curl", "-sS", "--max-time", "8", *args, ns="client", check=False)


@pytest.mark.parametrize("kit", ["nftables", "iptables"])
def test_transparent_gateway(gateway, kit):
    system_deps.skip_unless({"nftables": "nft", "iptables": "iptables"}[kit])
    proxy, origins, cert = gateway["proxy"], gateway["origins"], str(gateway["cert"])
    for o in origins.values():
        o.connections.clear()
    script = str(ROOT / "gateway" / f"{kit}-setup.sh")
    # PROXY_USER adds the rules for the gateway's own traffic; geogate runs as root here, so its
    # upstream connections must be the ones left alone (else they would loop back into it)
    env = dict(os.environ, LAN_IF=IF["gw_lan"], PROXY_PORT="8080", PROXY_USER="root")
    up = sh(script, "up", ns="gw", env=env)
    assert "rules installed" in up.stdout
    start = len(proxy.records())
    try:
        ok = curl(f"http://{OK4}/four")
        assert ok.stdout == f"hello from {OK4}:80 /four\n", ok.stderr + proxy.output
        blocked = curl(f"http://{BAD4}/four", "-D", "-")
        assert blocked.stdout.startswith("HTTP/1.1 403")
        assert 'Proxy-Status: geogate; error=destination_ip_prohibited; details="country=KP; rule=doj"' in blocked.stdout

        ok6 = curl("-g", f"http://[{OK6}]/six")
        assert ok6.stdout == f"hello from {OK6}:80 /six\n", ok6.stderr + proxy.output
        blocked6 = curl("-g", f"http://[{BAD6}]/six", "-D", "-")
        assert blocked6.stdout.startswith("HTTP/1.1 403")

        # TLS passes through untouched: the client trusts only the origin's own certificate
        tls_ok = curl("--cacert", cert, f"https://{OK4}/tls")
        assert tls_ok.stdout == f"hello from {OK4}:443 /tls\n", tls_ok.stderr + proxy.output
        tls_blocked = curl("--cacert", cert, f"https://{BAD4}/tls")
        assert tls_blocked.returncode != 0 and tls_blocked.stdout == ""

        # a name the policy trusts, claimed (Host/SNI) for a KP address: the address decides
        lie = curl("--resolve", f"trusted.test:80:{BAD4}", "http://trusted.test/lie", "-D", "-")
        assert lie.stdout.startswith("HTTP/1.1 403")
        lie_tls = curl("--cacert", cert, "--resolve", f"trusted.test:443:{BAD4}", "https://trusted.test/lie")
        assert lie_tls.returncode != 0
        honest = curl("--cacert", cert, "--resolve", f"trusted.test:443:{OK4}", "https://trusted.test/ok")
        assert honest.stdout == f"hello from {OK4}:443 /ok\n", honest.stderr
    finally:
        down = sh(script, "down", ns="gw", env=env)
    assert "rules removed" in down.stdout

    for key in ((BAD4, 80), (BAD6, 80), (BAD4, 443)):
        assert origins[key].connections == [], f"blocked origin {key} was reached"
    recs = proxy.records()[start:]
    assert all(r["mode"] == "transparent" and r["event"] == "decision" for r in recs)
    by_address = {}
    for r in recs:
        by_address.setdefault(r["address"], []).append(r)
    assert {r["action"] for r in by_address[BAD4]} == {"block"} and {r["action"] for r in by_address[BAD6]} == {"block"}
    assert {r["action"] for r in by_address[OK4]} == {"allow"} and by_address[OK6][0]["country"] == "DE"
    lies = [r for r in recs if r["host"] == "trusted.test" and r["address"] == BAD4]
    assert len(lies) == 2 and all(r["host_mismatch"] and r["rule"] == "doj" for r in lies)
    assert any(r["host"] == "trusted.test" and r["rule"] == "trusted" and not r["host_mismatch"] for r in recs)
    assert any(r["sni"] == "trusted.test" for r in lies)  # the TLS claim came from the ClientHello


def test_firewall_scripts_refuse_without_lan_if():
    for kit in ("nftables", "iptables"):
        r = subprocess.run([str(ROOT / "gateway" / f"{kit}-setup.sh"), "up"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "LAN_IF"})
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "LAN_IF" in r.stderr
