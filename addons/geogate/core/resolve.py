"""Resolve a host name once: every A and AAAA record, with a timeout and a TTL-respecting cache.

The answer is what gets checked and what the connection is pinned to, so nothing else may look
the name up again. Sources, in order: IP literals, RFC 6761 `localhost` names, the hosts file
(re-read when it changes), then DNS via the system's resolv.conf.

The DNS cache is bounded (cache.TtlLruCache), so clients asking for ever new names cannot grow
the proxy: at most `cache_entries` names and about `cache_bytes` bytes, least recently used
dropped first, every entry gone when its TTL ends (whether or not it is asked for again).
- an answer lives for its record TTL, kept within [min_ttl, max_ttl] (5-300 s);
- "no such name" / "no A or AAAA record" lives for the negative TTL of the zone's SOA (the
  smaller of its TTL and MINIMUM, RFC 2308) within [nx_min_ttl, nx_max_ttl] (5-60 s), and for
  nx_default_ttl (30 s) when the answer carried no SOA;
- any other failure (timeout, SERVFAIL, no server) lives for negative_ttl (5 s).
A failure is never an allow: a cached failure is raised again, and the caller blocks on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from dataclasses import dataclass
from typing import Callable

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from geogate.core.addresses import IPAddress
from geogate.core.addresses import is_localhost_name
from geogate.core.addresses import parse_ip
from geogate.core.cache import TtlLruCache
from geogate.core.resolve_defaults import DEFAULT_CACHE_BYTES
from geogate.core.resolve_defaults import DEFAULT_CACHE_ENTRIES
from geogate.core.resolve_defaults import DEFAULT_TIMEOUT

LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class ResolveError(Exception):
    """The name could not be resolved; the message says why (and is safe to show). `ttl`: how
    long the failure may be cached (None: the resolver's negative_ttl)."""

    def __init__(self, message: str, ttl: float | None = None) -> None:
        super().__init__(message)
        self.ttl = ttl

    @property
    def kind(self) -> str:
        """What failed, in one word (geogate_resolve_errors_total): read from the message, which
        is all a cached failure keeps."""
        text = str(self)
        for marker, kind in _KINDS:
            if marker in text:
                return kind
        return "failed"


# the markers of the messages raised below, most specific first
_KINDS = (
    ("timed out", "timeout"),
    ("(NXDOMAIN)", "nxdomain"),
    ("has no A or AAAA record", "no-address"),
    ("no name server answered", "no-answer"),
    ("no DNS resolver configured", "no-resolver"),
    ("is allowed by the policy", "no-name-server"),
)

# What an entry costs beyond its strings, roughly: the Resolution or exception, its tuple, the
# cache's OrderedDict slot, entry tuple and heap item (measured with tracemalloc: ~600 bytes).
ENTRY_OVERHEAD = 580
ADDRESS_BYTES = 72  # an IPv4Address/IPv6Address object in the answer tuple


def entry_size(name: str, value: "Resolution | str") -> int:
    """The approximate bytes a cache entry holds (an answer, or a failure's message)."""
    if isinstance(value, Resolution):
        return ENTRY_OVERHEAD + 2 * len(name) + ADDRESS_BYTES * len(value.addresses)
    return ENTRY_OVERHEAD + len(name) + len(value)


def negative_ttl_of(error: Exception) -> float | None:
    """RFC 2308: the negative TTL a NXDOMAIN/NoAnswer response gives (min of the SOA record's TTL
    and its MINIMUM field), None when the response has no SOA."""
    responses = []
    if isinstance(error, dns.resolver.NXDOMAIN):
        responses = [r for r in (error.kwargs.get("responses") or {}).values() if r is not None]
    elif isinstance(error, dns.resolver.NoAnswer):
        responses = [error.kwargs.get("response")]
    ttls = []
    for response in responses:
        for rrset in getattr(response, "authority", ()) or ():
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                ttls.append(min(rrset.ttl, rrset[0].minimum))
    return min(ttls) if ttls else None


@dataclass(frozen=True, slots=True)
class Resolution:
    name: str
    addresses: tuple[IPAddress, ...]
    source: str  # literal | localhost | hosts | dns | cache
    ttl: float


def _parse_hosts(text: str) -> dict[str, tuple[IPAddress, ...]]:
    table: dict[str, list[IPAddress]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        ip = parse_ip(fields[0])
        if ip is None:
            continue
        for name in fields[1:]:
            entry = table.setdefault(name.lower().rstrip("."), [])
            if ip not in entry:
                entry.append(ip)
    return {k: tuple(v) for k, v in table.items()}


class Resolver:
    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        hosts_path: str = "/etc/hosts",
        resolv_conf: str = "/etc/resolv.conf",
        min_ttl: float = 5.0,
        max_ttl: float = 300.0,
        negative_ttl: float = 5.0,
        nx_default_ttl: float = 30.0,
        nx_min_ttl: float = 5.0,
        nx_max_ttl: float = 60.0,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.hosts_path = hosts_path
        self.resolv_conf = resolv_conf
        self.min_ttl, self.max_ttl, self.negative_ttl = min_ttl, max_ttl, negative_ttl
        self.nx_default_ttl, self.nx_min_ttl, self.nx_max_ttl = nx_default_ttl, nx_min_ttl, nx_max_ttl
        self._hosts: dict[str, tuple[IPAddress, ...]] = {}
        self._hosts_stamp: tuple[float, int] | None = None
        self._hosts_checked = 0.0
        self._cache = TtlLruCache(cache_entries, cache_bytes, clock=clock)
        self._inflight: dict[str, asyncio.Future[Resolution]] = {}
        self._dns: dns.asyncresolver.Resolver | None = None
        # Which of the configured name servers may be asked (a name server is a destination too):
        # set by the proxy, which judges them with the policy. None asks every one.
        self.name_server_filter: Callable[[list[str]], list[str]] | None = None

    # hosts file ------------------------------------------------------------------------------
    def _hosts_lookup(self, name: str) -> tuple[IPAddress, ...] | None:
        now = time.monotonic()
        if now - self._hosts_checked > 1.0:
            self._hosts_checked = now
            try:
                st = os.stat(self.hosts_path)
                stamp = (st.st_mtime, st.st_size)
                if stamp != self._hosts_stamp:
                    with open(self.hosts_path, encoding="utf-8", errors="replace") as f:
                        self._hosts = _parse_hosts(f.read())
                    self._hosts_stamp = stamp
                    self._cache.clear()
            except OSError:
                self._hosts, self._hosts_stamp = {}, None
        return self._hosts.get(name)

    # DNS -------------------------------------------------------------------------------------
    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            try:
                r = dns.asyncresolver.Resolver(filename=self.resolv_conf)
            except (dns.resolver.NoResolverConfiguration, OSError) as e:
                raise ResolveError(f"no DNS resolver configured ({self.resolv_conf}: {e})") from None
            r.cache = None  # our own cache keeps the TTL; two caches would hide expiry
            if self.name_server_filter is not None:
                allowed = self.name_server_filter([str(ns) for ns in r.nameservers])
                if not allowed:
                    raise ResolveError(f"no name server of {self.resolv_conf} is allowed by the policy, "
                                       "so no name is resolved (fail closed)")
                r.nameservers = allowed
            self._dns = r
        return self._dns

    def forget_name_servers(self) -> None:
        """Read and judge the name servers again at the next query (the policy changed)."""
        self._dns = None

    async def _query(self, name: str) -> Resolution:
        resolver = self._dns_resolver()

        async def one(rdtype: str) -> dns.resolver.Answer | dns.resolver.NoAnswer | dns.resolver.NXDOMAIN:
            try:
                return await resolver.resolve(name, rdtype, lifetime=self.timeout, search=True)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as e:
                return e

        try:
            answers = await asyncio.wait_for(
                asyncio.gather(one("A"), one("AAAA")), timeout=self.timeout + 0.5
            )
        except (TimeoutError, dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise ResolveError(f"DNS lookup of {name} timed out after {self.timeout:g}s") from None
        except dns.resolver.NoNameservers as e:
            raise ResolveError(f"DNS lookup of {name} failed: no name server answered ({e})") from None
        except dns.exception.DNSException as e:
            raise ResolveError(f"DNS lookup of {name} failed: {e}") from None
        addresses: list[IPAddress] = []
        ttls: list[float] = []
        for ans in answers:
            # no records of this type: NoAnswer or NXDOMAIN (dnspython raises rather than answer
            # without an rrset, but an Answer's type allows one)
            if isinstance(ans, Exception) or ans.rrset is None:
                continue
            ttls.append(ans.rrset.ttl)
            for rr in ans:
                ip = ipaddress.ip_address(rr.address)
                if ip not in addresses:
                    addresses.append(ip)
        if not addresses:
            errors = [a for a in answers if isinstance(a, Exception)]
            soa = [t for t in map(negative_ttl_of, errors) if t is not None]
            nx_ttl = min(max(min(soa), self.nx_min_ttl), self.nx_max_ttl) if soa else self.nx_default_ttl
            if all(isinstance(a, dns.resolver.NXDOMAIN) for a in answers):
                raise ResolveError(f"{name}: no such host (NXDOMAIN)", nx_ttl)
            raise ResolveError(f"{name} has no A or AAAA record", nx_ttl)
        ttl = min(max(min(ttls), self.min_ttl), self.max_ttl)
        return Resolution(name, tuple(addresses), "dns", ttl)

    # public ----------------------------------------------------------------------------------
    def known(self, name: str) -> Resolution | None:
        """The answer for `name` if it needs no query (literal, localhost, hosts file, cache),
        else None. Raises the cached ResolveError of a recent failure."""
        ip = parse_ip(name)
        if ip is not None:
            return Resolution(name, (ip,), "literal", float("inf"))
        if is_localhost_name(name):
            return Resolution(name, LOOPBACK, "localhost", float("inf"))
        from_hosts = self._hosts_lookup(name)
        if from_hosts:
            return Resolution(name, from_hosts, "hosts", 0.0)
        now = self._cache.clock()
        cached = self._cache.get(name, now)
        if cached is not None:
            value, expires = cached
            if isinstance(value, str):  # a failure: only its message is kept (a traceback holds
                raise ResolveError(value)  # every frame and DNS response it passed through)
            return Resolution(value.name, value.addresses, "cache", expires - now)
        return None

    async def resolve(self, name: str) -> Resolution:
        """All addresses of `name` (canonical form, see addresses.canonical_host)."""
        return self.known(name) or await self.query(name)

    async def query(self, name: str) -> Resolution:
        """Ask DNS for a name that known() could not answer (one query in flight per name)."""
        if name in self._inflight:
            return await asyncio.shield(self._inflight[name])
        fut: asyncio.Future[Resolution] = asyncio.get_running_loop().create_future()
        self._inflight[name] = fut
        try:
            result = await self._query(name)
        except ResolveError as e:
            message = str(e)
            self._cache.put(name, message, self.negative_ttl if e.ttl is None else e.ttl, entry_size(name, message))
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(name, None)
        self._cache.put(name, result, result.ttl, entry_size(name, result))
        fut.set_result(result)
        return result

    def set_cache_limits(self, entries: int, size: int) -> None:
        """Change the cache bounds; entries beyond them leave at once."""
        self._cache.max_entries, self._cache.max_bytes = entries, size
        self._cache.shrink()


def resolve_sync(name: str, timeout: float = DEFAULT_TIMEOUT) -> Resolution:
    return asyncio.run(Resolver(timeout).resolve(name))
