"""The proxied ports of the gateway for real: `geogate gateway run` in the gateway namespace of
three namespaces made by this test (see gateway_netns.py).

curl in the client namespace goes to the servers by address, as it would through any router;
the gateway's rules hand TCP 80 and 443 to the transparent proxy, which judges them with the names
the client claims (Host, SNI) checked against the address.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from gateway_netns import BAD4
from gateway_netns import BAD6
from gateway_netns import GEOGATE
from gateway_netns import OK4
from gateway_netns import OK6
from gateway_netns import GatewayProcess
from gateway_netns import built
from proxy_support import Origin
from proxy_support import close_all
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gg{os.getpid() % 100000}"
TRUSTED = "  - name: trusted\n    action: allow\n    hosts: [trusted.test]\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    with built(TAG) as (topo, stack):
        cert = make_cert(tmp / "cert", ["trusted.test"], [OK4, BAD4])
        origins: list[Origin] = []
        stack.callback(close_all, origins)
        with topo.inside("servers"):
            for ip in (OK4, BAD4, OK6, BAD6):
                origins.append(Origin(ip, 80))
            for ip in (OK4, BAD4):
                origins.append(Origin(ip, 443, tls=cert))
        proxy = GatewayProcess(topo, tmp, policy=write_policy(tmp / "policy.yaml", before=TRUSTED),
                               dbs=[write_db(tmp / "geo.mmdb")], log=tmp / "decisions.jsonl",
                               hosts=write_hosts(tmp / "hosts", {"trusted.test": OK4}))
        stack.callback(proxy.stop)
        proxy.wait_ready()
        yield {"proxy": proxy, "cert": cert[0], "origins": {(o.host, o.port): o for o in origins}, "topo": topo}


def test_transparent_gateway(gateway):
    proxy, origins, cert, topo = gateway["proxy"], gateway["origins"], str(gateway["cert"]), gateway["topo"]

    def curl(*args: str) -> subprocess.CompletedProcess:
        return topo.sh("curl", "-sS", "--max-time", "8", *args, ns="client", check=False)

    start = len(proxy.records())
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


def test_run_refuses_without_a_lan_interface():
    r = subprocess.run([str(GEOGATE), "gateway", "run"], capture_output=True, text=True)
    assert r.returncode == 2 and "--lan" in r.stderr
