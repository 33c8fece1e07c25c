"""A small, fast HTTP/1.1 origin for the benchmarks (loopback only).

    python bench/origin.py --http PORT [--https PORT --certdir DIR [--san NAME]] [--host 127.0.0.1] [--v6]

Answers every GET with `200 OK` and a 13-byte body, keep-alive unless the request says
`Connection: close`. A raw asyncio Protocol (no streams, no parsing beyond finding the end of the
headers), so that it costs a small fraction of what the proxy in front of it costs. The HTTPS
listener uses a self-signed certificate for `localhost` and 127.0.0.1 made at start-up with
`cryptography` (written to --certdir, so the client can trust it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import sys
from pathlib import Path

BODY = b"hello geogate"
KEEP = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % len(BODY)) + BODY
CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
         % len(BODY)) + BODY
MAX_HEADER = 64 * 1024


def make_cert(directory: Path, names: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Self-signed certificate and key for localhost / 127.0.0.1 / ::1 (and `names`), created now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            *(x509.DNSName(n) for n in names),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "origin-cert.pem", directory / "origin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Http(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER:
                    self.transport.close()
                self.buf = buf
                return
            head = buf[:end].lower()
            buf = buf[end + 4 :]
            if b"\r\nconnection: close" in head:
                self.transport.write(CLOSE)
                self.transport.close()
                self.buf = b""
                return
            self.transport.write(KEEP)

    def eof_received(self) -> bool:
        return False


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--v6", action="store_true", help="also listen on ::1")
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--https", type=int)
    p.add_argument("--certdir", type=Path)
    p.add_argument("--san", action="append", default=[], help="another DNS name for the certificate")
    a = p.parse_args()
    loop = asyncio.get_running_loop()
    hosts = [a.host] + (["::1"] if a.v6 else [])
    servers = [await loop.create_server(Http, hosts, a.http, backlog=1024, reuse_address=True)]
    if a.https:
        cert, key = make_cert(a.certdir, tuple(a.san))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        servers.append(await loop.create_server(Http, hosts, a.https, ssl=ctx, backlog=1024, reuse_address=True))
    print(f"origin listening http={a.http} https={a.https} pid={os.getpid()}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
