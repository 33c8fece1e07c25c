"""`make system-deps` says what it installs and why, SKIP_SYSTEM_DEPS=1 installs nothing, and a
test that needs a missing package skips naming it, counted at the end of the run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import system_deps

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "install-system-deps"


def table() -> dict[str, str]:
    """program -> package, as the installer lists them."""
    text = SCRIPT.read_text()
    block = text.split("<<'EOF_NEED'\n", 1)[1].split("\nEOF_NEED", 1)[0]
    return {line.split(":")[0]: line.split(":")[1] for line in block.splitlines()}


def test_the_installer_and_the_tests_know_the_same_packages():
    assert table() == {program: package for program, (package, _others) in system_deps.PROGRAMS.items()}


def run_installer(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The installer on a machine with none of the programs, as root (a fake `id`), with an
    `apt-get` that only records how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"$*\" >> '{log}'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    proc = subprocess.run(["/bin/sh", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bin_dir), **env})
    return proc, log.read_text().splitlines() if log.exists() else []


def expected_packages() -> list[str]:
    # /usr/bin/chromium is found by its path, whatever PATH says
    return [pkg for program, pkg in table().items() if not (program == "chromium" and Path("/usr/bin/chromium").exists())]


def test_it_says_what_it_installs_and_which_tests_need_each_package(tmp_path):
    proc, apt = run_installer(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("installing system packages with apt-get, as root (SKIP_SYSTEM_DEPS=1 skips this):")
    assert lines[0].split(":", 1)[1].split() == expected_packages()
    for pkg in expected_packages():
        (line,) = [ln for ln in lines[1:] if ln.startswith(f"  {pkg} (")]
        assert re.search(r"tests/test_\w+\.py", line), line
    assert apt == ["update -qq", "install -y -qq --no-install-recommends " + " ".join(expected_packages())]


def test_skip_system_deps_installs_nothing_and_says_what_will_skip(tmp_path):
    proc, apt = run_installer(tmp_path, SKIP_SYSTEM_DEPS="1")
    assert proc.returncode == 0 and apt == []
    assert proc.stdout.startswith("SKIP_SYSTEM_DEPS=1: not installing system packages:")
    for pkg in expected_packages():
        assert f"\n  {pkg} (" in proc.stdout


def test_a_missing_program_skips_naming_its_package(monkeypatch):
    monkeypatch.setitem(system_deps.PROGRAMS, "curl", ("curl", ()))
    monkeypatch.setattr(system_deps.shutil, "which", lambda name: None)
    reason = system_deps.missing_reason("curl", "wrk")
    assert reason == ("missing system package: curl wrk (for curl, wrk); `make system-deps` installs it as root")
    with pytest.raises(pytest.skip.Exception, match="missing system package: curl"):
        system_deps.skip_unless("curl")


def test_the_run_ends_with_how_many_tests_skipped_for_which_packages():
    reasons = ["missing system package: curl (for curl); `make system-deps` installs it as root"] * 2 + [
        "missing system package: iproute2 curl (for ip, curl); `make system-deps` installs it as root",
        "no inotify here"]
    assert system_deps.summary(reasons) == ("3 tests skipped for missing system packages: curl (3), iproute2 (1); "
                                            "`make system-deps` (as root) installs them")
    assert system_deps.summary(["no inotify here"]) is None
