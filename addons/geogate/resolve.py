"""Resolve a host name once: every A and AAAA record, with a timeout and a TTL-respecting cache.

The answer is what gets checked and what the connection is pinned to, so nothing else may look
the name up again. Sources, in order: IP literals, RFC 6761 `localhost` names, the hosts file
(re-read when it changes), then DNS via the system's resolv.conf.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from .addresses import IPAddress
from .addresses import is_localhost_name
from .addresses import parse_ip

LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class ResolveError(Exception):
    """The name could not be resolved; the message says why (and is safe to show)."""


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
        timeout: float = 3.0,
        *,
        hosts_path: str = "/etc/hosts",
        resolv_conf: str = "/etc/resolv.conf",
        min_ttl: float = 5.0,
        max_ttl: float = 300.0,
        negative_ttl: float = 5.0,
    ) -> None:
        self.timeout = timeout
        self.hosts_path = hosts_path
        self.resolv_conf = resolv_conf
        self.min_ttl, self.max_ttl, self.negative_ttl = min_ttl, max_ttl, negative_ttl
        self._hosts: dict[str, tuple[IPAddress, ...]] = {}
        self._hosts_stamp: tuple[float, int] | None = None
        self._hosts_checked = 0.0
        self._cache: dict[str, tuple[float, Resolution | ResolveError]] = {}
        self._inflight: dict[str, asyncio.Future[Resolution]] = {}
        self._dns: dns.asyncresolver.Resolver | None = None

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
            self._dns = r
        return self._dns

    async def _query(self, name: str) -> Resolution:
        resolver = self._dns_resolver()

        async def one(rdtype: str):
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
            if isinstance(ans, Exception):
                continue
            ttls.append(ans.rrset.ttl)
            for rr in ans:
                ip = ipaddress.ip_address(rr.address)
                if ip not in addresses:
                    addresses.append(ip)
        if not addresses:
            if all(isinstance(a, dns.resolver.NXDOMAIN) for a in answers):
                raise ResolveError(f"{name}: no such host (NXDOMAIN)")
            raise ResolveError(f"{name} has no A or AAAA record")
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
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], ResolveError):
                raise cached[1]
            r = cached[1]
            return Resolution(r.name, r.addresses, "cache", cached[0] - now)
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
            self._cache[name] = (time.monotonic() + self.negative_ttl, e)
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(name, None)
        self._cache[name] = (time.monotonic() + result.ttl, result)
        fut.set_result(result)
        return result


def resolve_sync(name: str, timeout: float = 3.0) -> Resolution:
    return asyncio.run(Resolver(timeout).resolve(name))
