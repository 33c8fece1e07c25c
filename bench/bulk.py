"""Bulk transfer over TLS, straight or through a CONNECT tunnel (loopback only).

    python bench/bulk.py serve --port P --certdir DIR
    python bench/bulk.py fetch --port P --cafile F --mib 256 [--proxy-port Q]

The server answers each connection's `SEND <bytes>\\n` (inside TLS) with that many bytes of
zeros in 256 KiB writes, then closes. The client connects (with --proxy-port: `CONNECT
127.0.0.1:P` through the proxy first), does the TLS handshake, asks for --mib MiB, reads them
all, and prints one JSON line: bytes, seconds from the request to the last byte, MB/s.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import ssl
import sys
import time
from pathlib import Path

CHUNK = 256 * 1024


def serve(port: int, certdir: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from origin import make_cert

    cert, key = make_cert(certdir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    block = bytes(CHUNK)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with ctx.wrap_socket(self.request, server_side=True) as tls:
                line = b""
                while not line.endswith(b"\n") and len(line) < 100:
                    got = tls.recv(100)
                    if not got:
                        return
                    line += got
                left = int(line.split()[1])
                while left > 0:
                    n = min(left, CHUNK)
                    tls.sendall(block[:n] if n < CHUNK else block)
                    left -= n

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", port), Handler) as server:
        print(f"bulk listening {port}", flush=True)
        server.serve_forever()


def fetch(port: int, cafile: str, mib: int, proxy_port: int | None, timeout: float) -> dict:
    want = mib * 1024 * 1024
    sock = socket.create_connection(("127.0.0.1", proxy_port or port), timeout=timeout)
    if proxy_port:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv(4096)
            if not got:
                raise ConnectionError(f"proxy closed: {head!r}")
            head += got
        if not head.split(b"\r\n", 1)[0].split()[1:2] == [b"200"]:
            raise ConnectionError(f"CONNECT refused: {head[:100]!r}")
    ctx = ssl.create_default_context(cafile=cafile)
    with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        buf = bytearray(CHUNK)
        t0 = time.perf_counter()
        tls.sendall(f"SEND {want}\n".encode())
        got = 0
        while got < want:
            n = tls.recv_into(buf)
            if not n:
                break
            got += n
        seconds = time.perf_counter() - t0
    if got != want:
        raise ConnectionError(f"got {got} of {want} bytes")
    return {"bytes": got, "seconds": seconds, "mb_per_s": got / seconds / 1e6}


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--certdir", type=Path, required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--cafile", required=True)
    f.add_argument("--mib", type=int, default=256)
    f.add_argument("--proxy-port", type=int)
    f.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.port, a.certdir)
        return 0
    print(json.dumps(fetch(a.port, a.cafile, a.mib, a.proxy_port, a.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
