"""tools/find-python and the Makefile: a Python >= 3.12 is found, and one asked for by name that is
older is refused with advice, never silently replaced and never handed to pip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIND = ROOT / "tools" / "find-python"


def old_python(tmp_path: Path) -> Path:
    """An interpreter that says it is 3.11, as Debian 12's python3 does."""
    stub = tmp_path / "python3.11"
    stub.write_text("#!/bin/sh\necho 3.11\n")
    stub.chmod(0o755)
    return stub


def find(env_python: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    if env_python is not None:
        env["PYTHON"] = env_python
    return subprocess.run([str(FIND)], capture_output=True, text=True, env=env, timeout=60)


def test_a_suitable_interpreter_is_found_without_help():
    r = find(None)
    assert r.returncode == 0, r.stderr
    version = subprocess.run([r.stdout.strip(), "-c", "import sys; print(sys.version_info >= (3, 12))"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "True"


@pytest.mark.parametrize("name", ["old", "missing"])
def test_an_interpreter_asked_for_by_name_is_never_replaced(tmp_path, name):
    asked = str(old_python(tmp_path)) if name == "old" else str(tmp_path / "no-such-python")
    r = find(asked)
    assert r.returncode == 1 and r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert asked in first and ("Python 3.11" in first if name == "old" else "cannot be run" in first)
    assert "Debian 13" in r.stderr and "Ubuntu 24.04" in r.stderr and "PYTHON=/path/to/python3.12" in r.stderr


def test_make_stops_before_pip_with_an_old_python(tmp_path):
    venv = tmp_path / "venv"
    r = subprocess.run(["make", "-s", "install", f"PYTHON={old_python(tmp_path)}", f"VENV={venv}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "needs Python >= 3.12" in r.stderr and "Python 3.11" in r.stderr
    assert not venv.exists() and "pip" not in r.stdout + r.stderr.split("needs Python")[0]
