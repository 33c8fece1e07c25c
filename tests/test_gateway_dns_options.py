"""`gateway run --dns` without a gateway: the options, the name servers from resolv.conf, and the
rules that send LAN DNS to the DNS mode (the text, and that nft takes it)."""

from __future__ import annotations

import os
import subprocess

import pytest

from geogate.core.errors import GeogateError
from geogate.gateway import ruleset
from geogate.gateway import sets
from geogate.gateway.dns_options import dns_options
from geogate.gateway.dns_options import resolv_conf_name_servers
from geogate.policy.state import GateState
from proxy_support import write_db
from proxy_support import write_policy

RESOLV = ("# generated\nsearch lan\nnameserver 192.0.2.53\nnameserver fe80::1%eth0  # link-local\n"
          "options ndots:2\n;nameserver 192.0.2.99\nnameserver 192.0.2.53\nnameserver\n")


def options(**given):
    args = dict(enabled=True, port=None, servers=None, blocked=None, tcp_ports=(80, 443), proxy_port=8080,
                resolv_conf=("/etc/resolv.conf", RESOLV))
    args.update(given)
    return dns_options(**args)


def test_resolv_conf_name_servers_in_order_without_comments_zones_or_repeats():
    assert resolv_conf_name_servers(RESOLV) == ["192.0.2.53", "fe80::1"]
    assert resolv_conf_name_servers("") == []


def test_without_dns_nothing_and_its_options_are_refused():
    assert options(enabled=False) is None
    for flag, given in (("--dns-server", {"servers": ["192.0.2.1"]}), ("--dns-port", {"port": "53"}),
                        ("--dns-blocked", {"blocked": "refuse"})):
        with pytest.raises(GeogateError, match=f"^{flag} needs --dns"):
            options(enabled=False, **given)


def test_defaults_come_from_resolv_conf():
    opts = options()
    assert (opts.port, opts.name_servers, opts.blocked_answers, opts.source) == (
        8053, ("192.0.2.53", "fe80::1"), "remove", "/etc/resolv.conf")
    assert opts.mitmdump_args() == ["--set", "geogate_dns_blocked_answers=remove", "--set",
                                    "dns_name_servers=192.0.2.53", "--set", "dns_name_servers=fe80::1"]
    assert opts.state() == {"port": 8053, "name_servers": ["192.0.2.53", "fe80::1"], "source": "/etc/resolv.conf",
                            "blocked_answers": "remove"}


def test_given_servers_replace_resolv_conf_and_are_written_canonically():
    opts = options(servers=["2001:DB8::0053", "[2001:db8::53]", "127.0.0.53"], blocked="refuse", port="5300",
                   resolv_conf=("/nowhere", None))
    assert opts.name_servers == ("2001:db8::53", "127.0.0.53") and opts.source == "--dns-server"
    assert opts.blocked_answers == "refuse" and opts.port == 5300
    assert opts.local_name_servers() == ["127.0.0.53"]


@pytest.mark.parametrize("given, said", [
    ({"port": "0"}, "--dns-port '0': not a port number"),
    ({"port": "http"}, "--dns-port 'http': not a port number"),
    ({"port": "8080"}, "--dns-port 8080: the transparent proxy listens there"),
    ({"tcp_ports": (53, 80)}, "--tcp-ports holds 53"),
    ({"blocked": "drop"}, "--dns-blocked 'drop': write remove"),
    ({"servers": ["dns.google"]}, "--dns-server 'dns.google': not an IP address"),
    ({"servers": ["192.0.2.1:53"]}, "not an IP address"),
    ({"resolv_conf": ("/etc/resolv.conf", None)}, "cannot read /etc/resolv.conf"),
    ({"resolv_conf": ("/etc/resolv.conf", "search lan\n")}, "/etc/resolv.conf names no name server"),
    ({"resolv_conf": ("/etc/resolv.conf", "nameserver dns.lan\n")}, "nameserver 'dns.lan' is not an IP address"),
])
def test_bad_values_are_one_line(given, said):
    with pytest.raises(GeogateError) as e:
        options(**given)
    assert said in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def kernel_sets(tmp_path):
    return sets.build(GateState.load(write_policy(tmp_path / "policy.yaml"), [write_db(tmp_path / "geo.mmdb")]))


def test_ruleset_sends_lan_dns_to_the_dns_mode_only_with_dns(kernel_sets):
    plain = ruleset.render(kernel_sets, ruleset.GatewayConfig(lan=("lan0",)))
    assert "dport 53" not in plain and "dns_input" not in plain
    text = ruleset.render(kernel_sets, ruleset.GatewayConfig(lan=("lan0", "lan1"), dns_port=8053))
    pre = text[text.index("chain prerouting"):text.index("chain p0")]
    # before the profile chains: the resolver's address is not what is judged
    assert pre.index("meta l4proto { tcp, udp } th dport 53 return") < pre.index("goto p0")
    assert 'iifname { "lan0", "lan1" } meta l4proto { tcp, udp } th dport 53 redirect to :8053' in text
    assert 'iifname != { "lo", "lan0", "lan1" } meta l4proto { tcp, udp } th dport 8053 drop' in text
    assert "redirect to :8080" in text  # the proxied TCP ports as before
    dns_only = ruleset.render(kernel_sets, ruleset.GatewayConfig(lan=("lan0",), tcp_ports=(), dns_port=5300))
    assert "redirect to :5300" in dns_only and "redirect to :8080" not in dns_only


def test_ruleset_with_dns_loads_into_nft(kernel_sets):
    if os.geteuid() != 0 or subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode:
        pytest.skip("needs root and nft")
    ns = f"gv{os.getpid() % 100000}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace")
    try:
        for tcp_ports in ((80, 443), ()):
            text = ruleset.render(kernel_sets, ruleset.GatewayConfig(lan=("lan0",), tcp_ports=tcp_ports, dns_port=8053))
            r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "geogate"],
                                    capture_output=True, text=True).stdout
            assert "redirect to :8053" in listed and "chain dns_input" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_status_says_dns_is_on_only_for_a_running_gateway_with_dns():
    from geogate.cli.gateway import _dns_status
    from geogate.cli.gateway import _dns_text

    saved = {"dns": {"port": 8053, "name_servers": ["192.0.2.53"], "source": "--dns-server",
                     "blocked_answers": "refuse"}}
    assert _dns_status(saved, running=False) == {"on": False}
    assert _dns_status({}, running=True) == {"on": False}
    on = _dns_status(saved, running=True)
    assert on == {"on": True, **saved["dns"]}
    assert _dns_text(on) == ("answered by the proxy's DNS mode on :8053 (UDP and TCP 53 redirected), name servers "
                             "192.0.2.53, blocked answer addresses: refuse")
    assert _dns_text({"on": False}).startswith("judged by the kernel like any flow")
