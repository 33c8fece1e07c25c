"""The resolver's DNS cache: bounded in entries and bytes, expiring by TTL (negative answers too),
and still the one answer a decision checks and pins. No network: DNS is faked in-process."""

from __future__ import annotations

import ipaddress
import itertools
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.name
import dns.rcode
import dns.resolver
import dns.rrset
import pytest
from mitmproxy import connection
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from geogate.core.resolve import DEFAULT_CACHE_BYTES
from geogate.core.resolve import DEFAULT_CACHE_ENTRIES
from geogate.core.resolve import Resolution
from geogate.core.resolve import ResolveError
from geogate.core.resolve import Resolver
from geogate.proxy.addon import GeoGate
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import write_db
from proxy_support import write_policy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(tmp_path: Path, clock: Clock | None = None, **kw) -> Resolver:
    (tmp_path / "hosts").write_text("")
    return Resolver(1.0, hosts_path=str(tmp_path / "hosts"), resolv_conf=str(tmp_path / "none"),
                    clock=clock or time.monotonic, **kw)


def nxdomain(name: str, soa_ttl: int, soa_minimum: int) -> dns.resolver.NXDOMAIN:
    qname = dns.name.from_text(name)
    response = dns.message.make_response(dns.message.make_query(qname, "A"))
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(dns.rrset.from_text(
        "test.", soa_ttl, "IN", "SOA", f"ns.test. host.test. 1 7200 900 1209600 {soa_minimum}"))
    return dns.resolver.NXDOMAIN(qnames=[qname], responses={qname: response})


class FakeDNS:
    """dns.asyncresolver.Resolver as _query uses it: a real NXDOMAIN with an SOA, or an A answer."""

    def __init__(self, soa_ttl: int = 3600, soa_minimum: int = 40) -> None:
        self.soa = (soa_ttl, soa_minimum)
        self.calls = 0

    async def resolve(self, name, rdtype, lifetime=None, search=None):
        self.calls += 1
        if name.startswith("nx"):
            raise nxdomain(name, *self.soa)
        if rdtype == "AAAA":
            raise dns.resolver.NoAnswer(response=dns.message.make_response(dns.message.make_query(name, "AAAA")))
        return _Answer(120, "192.0.2.1")


class _Answer:
    def __init__(self, ttl: int, address: str) -> None:
        self.rrset = SimpleNamespace(ttl=ttl)
        self._rrs = [SimpleNamespace(address=address)]

    def __iter__(self):
        return iter(self._rrs)


@pytest.mark.parametrize("soa_ttl, soa_minimum, expected", [
    (3600, 40, 40.0),  # the SOA MINIMUM
    (20, 3600, 20.0),  # or the SOA record's own TTL, whichever is smaller (RFC 2308)
    (3600, 86400, 60.0),  # capped
    (3600, 0, 5.0),  # floored
])
async def test_nxdomain_is_cached_for_the_soa_negative_ttl_within_bounds(tmp_path, soa_ttl, soa_minimum, expected):
    clock = Clock()
    r = resolver(tmp_path, clock)
    r._dns = FakeDNS(soa_ttl, soa_minimum)
    with pytest.raises(ResolveError, match="NXDOMAIN"):
        await r.resolve("nx1.test")
    assert r._cache["nx1.test"][0] == clock.now + expected
    calls = r._dns.calls
    clock.now += expected - 0.01
    with pytest.raises(ResolveError, match="NXDOMAIN"):  # still the cached failure: still a block
        await r.resolve("nx1.test")
    assert r._dns.calls == calls
    clock.now += 0.02
    with pytest.raises(ResolveError, match="NXDOMAIN"):
        await r.resolve("nx1.test")
    assert r._dns.calls == calls + 2  # asked again (A and AAAA)


async def test_nxdomain_without_soa_uses_the_default_negative_ttl(tmp_path):
    clock = Clock()
    r = resolver(tmp_path, clock)

    class NoSoa:
        async def resolve(self, name, rdtype, lifetime=None, search=None):
            raise dns.resolver.NXDOMAIN(qnames=[dns.name.from_text(name)], responses={})

    r._dns = NoSoa()
    with pytest.raises(ResolveError):
        await r.resolve("gone.test")
    assert r._cache["gone.test"][0] == clock.now + r.nx_default_ttl and 30 <= r.nx_default_ttl <= 60


async def test_a_thousand_nxdomain_names_leave_after_their_ttl(tmp_path):
    clock = Clock()
    r = resolver(tmp_path, clock)
    r._dns = FakeDNS(soa_minimum=40)
    for i in range(1000):
        with pytest.raises(ResolveError):
            await r.resolve(f"nx{i}.test")
    assert len(r._cache) == 1000
    clock.now += 41
    await r.resolve("www.test")  # nobody asks for the old names again: the insert sweeps them
    assert len(r._cache) == 1


async def test_memory_stays_flat_over_100000_distinct_names(tmp_path):
    clock = Clock()
    r = resolver(tmp_path, clock)
    counter = itertools.count(1)

    async def fake_query(name: str) -> Resolution:  # a fast stand-in for DNS: half the names do not exist
        n = next(counter)
        clock.now += 0.001
        if n % 2:
            raise ResolveError(f"{name}: no such host (NXDOMAIN)", 40.0)
        return Resolution(name, (ipaddress.ip_address(0x0A000000 + n),), "dns", 120.0)

    r._query = fake_query
    total, start_tracing, first_look = 100_000, 80_000, 90_000
    traced: list[int] = []
    started = time.perf_counter()
    try:
        for i in range(total):
            if i == start_tracing:
                tracemalloc.start()
            try:
                await r.resolve(f"client-chosen-{i}.example.test")
            except ResolveError:
                pass
            if i % 1000 == 999:
                assert len(r._cache) <= DEFAULT_CACHE_ENTRIES and r._cache.bytes <= DEFAULT_CACHE_BYTES
                if i >= first_look:
                    traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    took = time.perf_counter() - started
    assert len(r._cache) == DEFAULT_CACHE_ENTRIES
    # Everything the cache holds from 90k on was allocated after tracing began (10,000 names
    # before): from then on the traced memory is the whole cache, and it must not grow. It saws
    # by a few per cent (replaced expiry-heap items are dropped in batches), so growth is judged
    # against that saw, and the level against the cache's own byte estimate.
    first, last = max(traced[:5]), max(traced[5:])
    assert last <= first * 1.05, traced
    assert max(traced) < 1.3 * r._cache.bytes, (traced, r._cache.bytes)  # the byte estimate is honest
    print(f"100,000 names: {len(r._cache)} entries, ~{r._cache.bytes / 1e6:.1f} MB estimated, "
          f"traced {min(traced) / 1e6:.1f}-{max(traced) / 1e6:.1f} MB from 90k to 100k; {took:.1f}s")


async def test_a_cached_answer_is_the_one_returned_and_dns_is_asked_once(tmp_path):
    clock = Clock()
    r = resolver(tmp_path, clock)
    r._dns = FakeDNS()
    first = await r.resolve("www.test")
    second = await r.resolve("www.test")
    assert (first.source, second.source) == ("dns", "cache")
    assert second.addresses is first.addresses and r._dns.calls == 2  # one A and one AAAA query


# -- the proxy: one resolution per decision, and the cached answer is checked and pinned ----------

@pytest.fixture
async def gate(tmp_path, monkeypatch):
    (tmp_path / "hosts").write_text("")
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    monkeypatch.setenv("GEOGATE_HOSTS_FILE", str(tmp_path / "hosts"))
    monkeypatch.setenv("GEOGATE_RESOLV_CONF", str(tmp_path / "resolv.conf"))
    gg = GeoGate()
    with taddons.context(gg) as tctx:
        tctx.configure(gg, geogate_policy=str(write_policy(tmp_path / "policy.yaml")),
                       geogate_db=[str(write_db(tmp_path / "geo.mmdb"))])
        yield gg
        gg.done()


async def hook(fn, arg) -> None:
    pending = fn(arg)
    if pending is not None:
        await pending


def proxy_request(host: str, port: int) -> tflow.http.HTTPFlow:
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = "http", host, port
    f.request.host_header = f"{host}:{port}"
    f.server_conn = connection.Server(address=None)
    return f


async def test_the_cached_answer_is_the_one_checked_and_pinned(gate):
    clock = Clock()
    gate.resolver._cache.clock = clock
    answers = iter([ALLOWED_IP, BLOCKED_IP])
    asked: list[str] = []

    async def rotating(name: str) -> Resolution:  # DNS that answers differently every time
        ip = next(answers)
        asked.append(ip)
        return Resolution(name, (ipaddress.ip_address(ip),), "dns", 60.0)

    gate.resolver._query = rotating
    flows = [proxy_request("rotating.test", port) for port in (8001, 8002, 8003)]
    await hook(gate.requestheaders, flows[0])
    await hook(gate.requestheaders, flows[1])  # answered from the cache
    assert asked == [ALLOWED_IP]
    for f in flows[:2]:  # checked and dialled: the cached address, nothing looked up again
        assert f.response is None and f.request.host == ALLOWED_IP
        assert f.metadata["geogate"]["address"] == ALLOWED_IP
    clock.now += 61  # the answer expired: one new resolution, and that answer is what is judged
    await hook(gate.requestheaders, flows[2])
    assert asked == [ALLOWED_IP, BLOCKED_IP]
    assert flows[2].response.status_code == 403 and flows[2].metadata["geogate"]["address"] == BLOCKED_IP
