"""The installed package stands alone: a wheel built from the checkout, installed into a fresh venv
and run from an empty directory, has its default policy, presets, groups, bundled databases and
mitmproxy script, and every command works with them.

Slow (a wheel build and a pip install with dependencies, from pip's cache when warm), so one
module-scoped installation serves every test here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy_support import Origin
from proxy_support import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
KP = "175.45.176.1"  # Pyongyang: in every bundled database; decided without dialling it


class Installed:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.venv = base / "venv"
        self.work = base / "empty"  # the current directory: nothing of the checkout in it
        self.work.mkdir()
        self.bin = self.venv / "bin"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOGATE_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "cache"),
                   PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}")
        env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
        self.env = env

    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("geogate-*.whl")
    inst = Installed(base)
    subprocess.run([sys.executable, "-m", "venv", str(inst.venv)], check=True, timeout=120)
    inst.run(str(inst.bin / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel),
             timeout=900)
    return inst


def test_the_package_comes_from_the_venv_not_the_checkout(installed):
    out = installed.run("python", "-c", "import geogate, sys; print(geogate.__file__)").stdout.strip()
    assert Path(out).is_relative_to(installed.venv) and not Path(out).is_relative_to(ROOT)
    path = Path(installed.run("geogate", "addon-path").stdout.strip())
    assert path.is_relative_to(installed.venv) and path.name == "addon.py" and path.is_file()


def test_the_wheel_carries_every_policy_and_both_databases(installed):
    code = ("from geogate.core import packaged; import json; "
            "print(json.dumps(sorted(p.name for p in packaged.policies_dir().rglob('*.yaml'))))")
    shipped = json.loads(installed.run("python", "-c", code).stdout)
    in_checkout = sorted(p.name for p in (ROOT / "policies").rglob("*.yaml"))
    assert shipped == in_checkout and "default.yaml" in shipped
    code = "from geogate.core import bundled; print('\\n'.join(map(str, bundled.default_database_paths())))"
    paths = [Path(p) for p in installed.run("python", "-c", code).stdout.split()]
    assert [p.name for p in paths] == ["dbip-country.mmdb", "geo-whois-asn-country.mmdb"]
    assert all(p.is_relative_to(installed.base / "cache") and p.stat().st_size > 1_000_000 for p in paths)


def test_explain_uses_the_packaged_policy_and_databases(installed):
    blocked = json.loads(installed.run("geogate", "explain", KP, "--json", check=False).stdout)
    assert blocked["action"] == "block" and blocked["rule"] == "doj"
    assert blocked["policy"]["name"] == "default"
    assert Path(blocked["policy"]["path"]).is_relative_to(installed.venv)
    assert {a["country"] for a in blocked["addresses"]} == {"KP"}
    allowed = installed.run("geogate", "explain", "8.8.8.8")
    assert re.search(r"decision\s+ALLOW", allowed.stdout)


def test_check_validates_the_packaged_presets(installed):
    code = "from geogate.core import packaged; print('\\n'.join(map(str, sorted(packaged.policies_dir().glob('*.yaml')))))"
    presets = installed.run("python", "-c", code).stdout.split()
    assert len(presets) >= 5
    out = installed.run("geogate", "check", *presets).stdout
    assert out.count(": ok (policy ") == len(presets)
    assert installed.run("geogate", "check").stdout.startswith(str(Path(presets[0]).parent / "default.yaml"))


def test_audit_reads_a_recording_outside_the_checkout(installed):
    shutil.copy(ROOT / "examples" / "sample.har", installed.work / "sample.har")
    proc = installed.run("geogate", "audit", "sample.har", "--format", "json")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert any(r.get("action") == "block" for r in lines) and any(r.get("action") == "allow" for r in lines)


def _serve(installed: Installed, argv: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(argv, cwd=installed.work, env=installed.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=2) as c:
                c.get("http://127.0.0.1:1/")  # refused upstream, but the proxy answered
            break
        except httpx.ProxyError:
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=5)
    return out


@pytest.mark.parametrize("how", ["geogate run", "mitmdump -s addon-path"])
def test_the_proxy_runs_from_the_installed_package(installed, how):
    port = free_port()
    if how == "geogate run":
        argv = ["geogate", "run", "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    else:
        script = installed.run("geogate", "addon-path").stdout.strip()
        argv = ["mitmdump", "-s", script, "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    origin = Origin("127.0.0.1")
    proc = _serve(installed, argv, port)
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as client:
            ok = client.get(f"http://127.0.0.1:{origin.port}/hello")
            blocked = client.get(f"http://{KP}/")
        assert ok.status_code == 200 and ok.text.startswith("hello from 127.0.0.1")
        assert blocked.status_code == 403 and "KP" in blocked.text
    finally:
        out = _stop(proc)
        origin.close()
    assert "default" in out and "Traceback" not in out
