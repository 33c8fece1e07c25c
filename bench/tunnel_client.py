"""CONNECT tunnel load generator (loopback only).

    python bench/tunnel_client.py --proxy-port P --host 127.0.0.1 --port 9443 --cafile origin-cert.pem \
        --concurrency 4 --seconds 4 --max 100000 [--rate 30]

Each worker loops: TCP to the proxy -> `CONNECT host:port` -> expects 200 -> TLS handshake through
the tunnel (verifying the origin's self-signed certificate; SNI = host when it is a name) ->
`GET /` -> reads the 13-byte body -> closes. Stops at --seconds or --max tunnels, whichever comes
first; every step has a timeout. With --rate, the workers together start at most that many
tunnels per second (a paced, open-loop load instead of as-fast-as-possible). Prints one JSON line:
tunnels completed, errors by kind, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import ssl
import time

BODY = b"hello geogate"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def one(proxy_port: int, host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy_port), timeout)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            raise ConnectionError("connect-" + head.split(b"\r\n", 1)[0].decode(errors="replace")[9:12])
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname=None if _is_ip(host) else host), timeout)
        writer.write(f"GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        resp = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not resp.startswith(b"HTTP/1.1 200"):
            raise ConnectionError("get-status")
        body = await asyncio.wait_for(reader.readexactly(len(BODY)), timeout)
        if body != BODY:
            raise ConnectionError("get-body")
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except Exception:
            pass


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--max", type=int, default=100_000)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=0.0, help="target tunnels per second over all workers (0: as fast as possible)")
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.cafile)
    done = 0
    errors: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    deadline = t0 + a.seconds

    interval = a.concurrency / a.rate if a.rate > 0 else 0.0

    async def worker(k: int) -> None:
        nonlocal done
        next_t = t0 + interval * k / a.concurrency  # workers start staggered
        while time.perf_counter() < deadline and done + sum(errors.values()) < a.max:
            if interval:
                now = time.perf_counter()
                if next_t > now:
                    await asyncio.sleep(next_t - now)
                next_t = max(next_t, now) + interval  # no bursts to catch up after a slow tunnel
                if time.perf_counter() >= deadline:
                    break
            try:
                await one(a.proxy_port, a.host, a.port, ctx, a.timeout)
                done += 1
            except Exception as e:  # counted, never fatal: the caller judges the error rate
                errors[type(e).__name__ + (f":{e}" if isinstance(e, ConnectionError) else "")] += 1
                if sum(errors.values()) > 50 and done == 0:
                    return

    await asyncio.gather(*(worker(k) for k in range(a.concurrency)))
    print(json.dumps({"tunnels": done, "errors": dict(errors), "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    asyncio.run(main())
