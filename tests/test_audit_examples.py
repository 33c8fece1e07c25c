"""The committed fixtures, example outputs and documentation are real: regenerating them gives
the same bytes, and docs/audit.md quotes what the command prints today."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import audit_fixtures as af
from geogate.cli.main import main

ROOT = af.ROOT
DOC = ROOT / "docs" / "audit.md"
SAMPLE_ARGS = ["examples/sample.mitm", "--policy", "policies/default.yaml",
               "--db", "tests/data/maxmind/GeoIP2-Country-Test.mmdb"]


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the outputs show paths as given: relative to the checkout


def audit_text(capsys, *argv: str) -> str:
    main(["audit", *argv])
    return capsys.readouterr().out


def test_committed_fixtures_are_what_the_generator_writes() -> None:
    for path, data in af.committed_files().items():
        assert path.read_bytes() == data, f"{path.relative_to(ROOT)}: run `python tests/audit_fixtures.py`"


def test_committed_text_output_is_current(capsys) -> None:
    assert audit_text(capsys, *SAMPLE_ARGS) == (ROOT / "examples" / "sample-audit.txt").read_text()


def test_committed_html_report_is_current(capsys, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    main(["audit", *SAMPLE_ARGS, "--format", "html", "-o", str(out)])
    stamp = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    committed = (ROOT / "examples" / "sample-audit.html").read_text()
    assert stamp.sub("generated …", out.read_text()) == stamp.sub("generated …", committed)


def test_audit_page_shows_the_real_output(capsys) -> None:
    doc = DOC.read_text()
    sample = audit_text(capsys, *SAMPLE_ARGS)
    assert f"$ geogate audit {' '.join(SAMPLE_ARGS)}\n{sample}```" in doc
    against = ["examples/sample.mitm", "--policy", "policies/default.yaml", "--against",
               "policies/eu-gdpr-adequacy.yaml", "--db", "tests/data/maxmind/GeoIP2-Country-Test.mmdb"]
    assert f"$ geogate audit {' '.join(against)}\n{audit_text(capsys, *against)}```" in doc
    assert "![HTML audit report of examples/sample.mitm](audit-report.png)" in doc  # relative to docs/


def test_screenshot_is_committed() -> None:
    png = (ROOT / "docs" / "audit-report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1280 and int.from_bytes(png[20:24], "big") == 1600
