"""`geogate run`: every start-up input is checked before a port is opened, and the address it
prints is one a client can use (IPv6 in brackets)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from proxy_support import write_db
from proxy_support import write_policy

GEOGATE = Path(sys.executable).with_name("geogate")


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    return ["--policy", str(write_policy(tmp_path / "policy.yaml")), "--db", str(write_db(tmp_path / "geo.mmdb"))]


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GEOGATE), "run", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.parametrize("mistake, message", [
    (["--log", "/nonexistent/dir/x.log"], "geogate: cannot open decision log /nonexistent/dir/x.log: No such file or directory"),
    (["--log", "{tmp}"], "geogate: cannot open decision log {tmp}: Is a directory"),
    (["--mode", "bogus"], "geogate: --mode bogus: unknown mode"),
    (["--mode", "sock5"], "geogate: --mode sock5: unknown mode"),
    (["--", "--set", "geogate_resolve_timeout=soon"], "geogate: geogate_resolve_timeout: `soon` is not a number"),
    (["--", "--set", "geogate_log=/nonexistent/dir/y.log"], "geogate: cannot open decision log /nonexistent/dir/y.log"),
    (["--", "--set", "geogate_log_urls=all"], "geogate: geogate_log_urls: `all` is not one of path, full, none"),
])
def test_a_bad_start_up_input_ends_in_one_line_before_any_port_is_bound(inputs, tmp_path, mistake, message):
    # The port is held here, listening: a proxy that got as far as binding it would fail with
    # "address already in use" (and would have printed its start-up lines first); one that was
    # stopped in time prints the one line about the mistake and nothing else.
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        args = [a.replace("{tmp}", str(tmp_path)) for a in mistake]
        if "--" in args:
            at = args.index("--")
            args = [*inputs, "--listen-port", str(port), *args[:at], *args[at:]]
        else:
            args = [*inputs, "--listen-port", str(port), *args]
        proc = run(args)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0
    assert len(output) == 1 and output[0].startswith(message.replace("{tmp}", str(tmp_path))), output
    assert "Traceback" not in proc.stderr


def test_an_unusable_log_never_opens_the_port(inputs):
    """The same, watched from outside: nothing accepts a connection on the port while it starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(GEOGATE), "run", *inputs, "--listen-port", str(port), "--log", "/nonexistent/dir/x.log"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    accepted = []

    def knock() -> None:
        while proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                accepted.append(time.monotonic())
            except OSError:
                pass
            time.sleep(0.005)

    knocker = threading.Thread(target=knock)
    knocker.start()
    out, err = proc.communicate(timeout=60)
    knocker.join()
    assert proc.returncode != 0 and not accepted
    assert (out + err).strip() == "geogate: cannot open decision log /nonexistent/dir/x.log: No such file or directory"


@pytest.mark.parametrize("host, where, url", [
    ("::", "[::]:8080", "http://[::1]:8080"),
    ("::1", "[::1]:8080", "http://[::1]:8080"),
    ("2001:db8::5", "[2001:db8::5]:8080", "http://[2001:db8::5]:8080"),
    ("127.0.0.1", "127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("0.0.0.0", "0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("", "all addresses, port 8080", "http://127.0.0.1:8080"),
])
def test_listen_addresses_are_printed_as_usable_urls(host, where, url):
    from geogate.cli.run_proxy import host_port
    from geogate.cli.run_proxy import listen_lines

    assert listen_lines("regular", host, 8080) == (
        f"geogate: listening on {where} (regular mode); use HTTP_PROXY={url} HTTPS_PROXY={url}")
    assert listen_lines("socks5", host, 8080) == f"geogate: listening on {where} (socks5 mode)"
    assert host_port("::1", 1) == "[::1]:1"


def test_run_on_ipv6_loopback_prints_a_url_that_works(inputs, tmp_path):
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as s:
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(GEOGATE), "run", *inputs, "--listen-host", "::1", "--listen-port", str(port),
                             "--", "--set", f"confdir={tmp_path / 'confdir'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("geogate: listening on"):
                break
        text = "".join(lines)
        assert f"geogate: listening on [::1]:{port} (regular mode); use HTTP_PROXY=http://[::1]:{port}" in text, text
        with socket.create_connection(("::1", port), timeout=5) as c:  # the printed address is the real one
            c.sendall(b"GET http://[::1]:1/ HTTP/1.1\r\nHost: [::1]:1\r\n\r\n")
            assert c.recv(12).startswith(b"HTTP/1.1 ")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(GEOGATE), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_a_port_in_use_is_not_announced_and_the_advice_names_geogate_flags(inputs, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        proc = _start([*inputs, "--listen-port", str(port), "--", "--set", f"confdir={tmp_path / 'confdir'}"])
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    assert proc.returncode != 0
    assert "address already in use" in out, out
    assert "listening on" not in out  # never announced: the port was not bound
    assert f"Try another port: `geogate run ... --listen-port {port + 2}`." in out, out
    assert "--mode regular@" not in out
    assert "Traceback" not in out


def test_start_up_lines_are_said_once_and_listening_only_once_bound(inputs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start([*inputs, "--listen-port", str(port), "--", "--set", f"confdir={tmp_path / 'confdir'}"])
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("geogate: decisions go to"):
                break
        # mitmdump's own line is printed on its way to `running`; it is a little later, wait for it
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        os.killpg(proc.pid, 15)
        rest, _ = proc.communicate(timeout=10)
    lines += rest.splitlines()
    said = [line.split("] ", 1)[-1] for line in lines if "geogate: policy " in line or "geogate: database " in line]
    assert len(said) == 2 and len(set(said)) == 2, lines  # one policy, one database: each said once
    listening = [i for i, line in enumerate(lines) if line.startswith("geogate: listening on")]
    bound = [i for i, line in enumerate(lines) if "proxy listening at" in line]
    assert len(listening) == 1 and bound and bound[0] < listening[0], lines


@pytest.mark.parametrize("message, mode, translated", [
    ("HTTP(S) proxy failed to listen on 127.0.0.1:8083 with [Errno 98] in use\n"
     "Try specifying a different port by using `--mode regular@8085`.", "regular",
     "HTTP(S) proxy failed to listen on 127.0.0.1:8083 with [Errno 98] in use\n"
     "Try another port: `geogate run ... --listen-port 8085`."),
    ("SOCKS v5 proxy failed to listen on ::1:1080 with [Errno 98] in use\n"
     "Try specifying a different port by using `--mode socks5@1082`.", "regular",
     "SOCKS v5 proxy failed to listen on [::1]:1080 with [Errno 98] in use\n"
     "Try another port: `geogate run ... -- --mode socks5@1082`."),
    ("something else entirely", "regular", "something else entirely"),
])
def test_mitmproxy_port_advice_is_translated(message, mode, translated):
    from geogate.cli.run_proxy import translate_hint

    assert translate_hint(message, mode) == translated
