"""Real processes for the proxy tests: origin servers that record every connection they accept,
a self-signed certificate, test GeoIP data and policies, and a mitmdump running the addon.

Everything binds to loopback addresses (127.0.1.1 is mapped to DE, 127.0.2.1 to KP by the test
database) or lives in network namespaces the tests create themselves.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset

from mmdbs import write_flat
from record_schema import check_record

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "addons" / "geogate_addon.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")

ALLOWED_IP = "127.0.1.1"  # DE in the test database
BLOCKED_IP = "127.0.2.1"  # KP in the test database
# Nothing listens here: a name that reaches DNS fails fast instead of leaving the machine.
DEAD_RESOLVER = "127.0.3.53"

NETWORKS = {"127.0.1.0/24": "DE", "127.0.2.0/24": "KP",
            # the servers namespace of the gateway test
            "10.77.2.0/28": "DE", "10.77.2.16/28": "KP", "fd77:2::10/128": "DE", "fd77:2::20/128": "KP"}

POLICY = """\
version: 1
name: {name}
mode: {mode}
default: allow
special: lookup
{settings}geo:
  unknown: block
rules:
{before}  - name: doj
    action: block
    countries: ["@us-doj-countries-of-concern"]
    citation: 28 CFR 202.601
{extra}"""


def write_policy(path: Path, name: str = "test", mode: str = "enforce", *, before: str = "", extra: str = "",
                 settings: str = "") -> Path:
    """The test policy: `before`/`extra` are rule lines put before/after the doj rule."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(POLICY.format(name=name, mode=mode, before=before, extra=extra, settings=settings))
    tmp.replace(path)  # atomic, like a careful operator (the reload tests also try careless writes)
    return path


def write_db(path: Path, networks: dict[str, str] | None = None) -> Path:
    return write_flat(path, networks or NETWORKS)


def write_hosts(path: Path, entries: dict[str, str]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{ip} {name}\n" for name, ip in entries.items()))
    tmp.replace(path)
    return path


def make_cert(directory: Path, names: list[str], ips: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for the HTTPS origins (the clients trust exactly this file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "origin.pem", directory / "origin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Origin:
    """An HTTP/1.1 (keep-alive) or HTTPS origin on one address that records every connection."""

    def __init__(self, host: str, port: int = 0, *, tls: tuple[Path, Path] | None = None) -> None:
        self.connections: list[tuple[str, int]] = []
        self.requests: list[dict] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                origin.requests.append({"path": self.path, "host": self.headers.get("Host"),
                                        "peer": self.client_address})
                body = f"hello from {origin.host}:{origin.port} {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True
            allow_reuse_address = True

            def server_bind(self) -> None:
                # HTTPServer.server_bind looks the address up in DNS (getfqdn): never leave loopback
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

            def get_request(self):
                sock, addr = super().get_request()
                origin.connections.append(addr)  # recorded before any TLS or HTTP: every accept counts
                if tls is not None:
                    sock = origin.ssl_context.wrap_socket(sock, server_side=True)
                return sock, addr

            def handle_error(self, request, client_address) -> None:
                pass

        if tls is not None:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(str(tls[0]), str(tls[1]))
        self.server = Server((host, port), Handler)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def peers(self) -> set[int]:
        """Distinct client ports: one per upstream connection the proxy opened."""
        return {port for _host, port in self.connections}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


LISTEN_RE = re.compile(r"(\S+(?: v5)?) proxy(?: \(\w+ mode\))? listening at (?:\*|[\d.]+|\[[0-9a-f:]+\]):(\d+)", re.IGNORECASE)


def close_all(things) -> None:
    """close() each of them: the servers and connections a test opened."""
    for thing in things:
        thing.close()


def closed_within(s: socket.socket, seconds: float) -> bool:
    """True once the far end closes the connection (EOF, reset, or a TLS error on a TLS socket),
    waiting at most `seconds`."""
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # ssl.SSLError is one too
        return True


class UdpNameServer:
    """A UDP name server on a bound socket: answers each question with the addresses
    answers(name, type) gives (the name lower-case with its final dot, the type as "A", "AAAA", ...;
    none: an answer without records), and keeps every packet it receives."""

    def __init__(self, sock: socket.socket, answers: Callable[[str, str], list[str]]) -> None:
        self.sock, self.answers = sock, answers
        self.packets: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            self.packets.append(data)
            try:
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                q = query.question[0]
                rdtype = dns.rdatatype.to_text(q.rdtype)
                ips = self.answers(q.name.to_text().lower(), rdtype)
                if ips:
                    reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, *ips))
                self.sock.sendto(reply.to_wire(), peer)
            except Exception:  # a packet that is not a question: nothing to answer
                pass

    def close(self) -> None:
        self.sock.close()


class ReadsOutput:
    """A child process whose output (stdout and stderr, merged) is read into `lines` by a thread,
    for tests to wait on; `on_line` sees each line as it comes."""

    def _read_output_of(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.on_line(line)
        self.on_end()

    def on_line(self, line: str) -> None:
        pass

    def on_end(self) -> None:
        pass

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_output(self, pattern: str, timeout: float = 10, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if rx.search(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break  # it has said all it will
            time.sleep(0.05)
        raise AssertionError(f"no output matching {pattern!r}:\n{self.output}")

    def records(self) -> list[dict]:
        log_path = getattr(self, "log_path", None)
        if log_path is None or not log_path.exists():
            return []
        out = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        for rec in out:
            check_record(rec)  # what a real proxy wrote matches the documented schema
        return out


class Mitmdump(ReadsOutput):
    """A real mitmdump process with the geogate addon; stop() always ends it."""

    def __init__(self, tmp: Path, *, policy: Path, dbs: list[Path], log: Path | None = None,
                 hosts: Path | None = None, resolv_conf: Path | None = None, args: list[str] = (),
                 prefix: list[str] = (), listen_host: str = "127.0.0.1", env: dict | None = None,
                 wait: bool = True, listeners: int = 1, port: int = 0) -> None:
        self.log_path = log
        if resolv_conf is None:
            resolv_conf = tmp / "resolv.conf"
            resolv_conf.write_text(f"nameserver {DEAD_RESOLVER}\noptions timeout:1 attempts:1\n")
        if hosts is None:
            hosts = tmp / "hosts"
            if not hosts.exists():
                write_hosts(hosts, {})
        cmd = [*prefix, str(MITMDUMP), "--set", f"confdir={tmp / 'confdir'}", "--listen-host", listen_host,
               "-p", str(port), "-s", str(ADDON), "--set", f"geogate_policy={policy}"]
        cmd += [a for db in dbs for a in ("--set", f"geogate_db={db}")]
        if log is not None:
            cmd += ["--set", f"geogate_log={log}"]
        cmd += list(args)
        full_env = dict(os.environ, GEOGATE_HOSTS_FILE=str(hosts), GEOGATE_RESOLV_CONF=str(resolv_conf),
                        PYTHONUNBUFFERED="1", **(env or {}))
        self.port: int | None = None
        self.ports: dict[str, int] = {}  # "HTTP(S)" / "SOCKS v5" / "Transparent" -> port
        self._listeners = listeners
        self._listening = threading.Event()
        self._read_output_of(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env=full_env, start_new_session=True))
        if wait:
            self.wait_listening()

    def on_line(self, line: str) -> None:
        m = LISTEN_RE.search(line)
        if m:
            self.ports[m.group(1)] = int(m.group(2))
            self.port = self.port or int(m.group(2))
            if len(self.ports) >= self._listeners:
                self._listening.set()

    def on_end(self) -> None:
        self._listening.set()

    def wait_listening(self, timeout: float = 20) -> int:
        if not self._listening.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("mitmdump did not start:\n" + self.output)
        return self.port

    def wait_exit(self, timeout: float = 20) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: children go too
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
