"""A full disk under the decision log: a real mitmdump writing to a small tmpfs the test mounts.
Requests are refused (fail closed) while the log cannot be written, that is said in one line,
not per request; once space returns requests pass and are logged again, said in one line.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from proxy_support import ALLOWED_IP
from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    return filler


def _get(proxy: Mitmdump, origin: Origin, n: int) -> tuple[int, str]:
    proc = subprocess.run(["curl", "-s", "--max-time", "20", "--proxy", proxy.url, "--noproxy", "",
                           "-w", "\n%{http_code}", f"http://{ALLOWED_IP}:{origin.port}/req-{n}"],
                          capture_output=True, text=True, timeout=40)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def test_full_disk_refuses_once_said_and_recovers(tmp_path, small_fs):
    origin = Origin(ALLOWED_IP)
    log = small_fs / "decisions.jsonl"
    proxy = Mitmdump(tmp_path, policy=write_policy(tmp_path / "policy.yaml"), dbs=[write_db(tmp_path / "geo.mmdb")],
                     log=log)
    try:
        assert _get(proxy, origin, 0)[0] == 200
        filler = _fill(small_fs)
        # the log's last page may still hold a line or two; past that, every request is refused
        n, refused = 1, []
        while len(refused) < 5 and n < 60:
            code, body = _get(proxy, origin, n)
            if code != 200:
                refused.append((n, code, body))
            else:
                assert not refused, "a request passed after one was refused, with the disk still full"
            n += 1
        assert len(refused) == 5, refused
        assert all(code == 403 and "could not decide" in body for _n, code, body in refused), refused
        seen = {r["path"] for r in origin.requests}
        assert not any(f"/req-{i}" in seen for i, _c, _b in refused), "a refused request reached the origin"
        said = [line for line in proxy.lines if "cannot write the decision log" in line]
        assert len(said) == 1 and "No space left on device" in said[0], proxy.output
        assert not [line for line in proxy.lines if "failed, refusing" in line], "a line per refused request"

        filler.unlink()
        for i in range(n, n + 5):
            assert _get(proxy, origin, i)[0] == 200
        assert len([line for line in proxy.lines if "written again" in line]) == 1, proxy.output
    finally:
        proxy.stop()
        origin.close()
    data = log.read_bytes()
    assert data.endswith(b"\n") and b"\0" not in data
    records = [json.loads(line) for line in data.splitlines()]
    logged = {r["url"].rsplit("/", 1)[1] for r in records if r.get("url")}
    assert {f"req-{i}" for i in range(n, n + 5)} <= logged
    assert not logged & {f"req-{i}" for i, _c, _b in refused}
    assert os.path.ismount(small_fs)
