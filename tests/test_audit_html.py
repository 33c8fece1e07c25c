"""The HTML report opened in headless Chromium: it renders its chart and tables, and a
screenshot of it is a real picture (not a blank page)."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import audit_fixtures as af
import system_deps
from geogate.cli.main import main

CHROMIUM = system_deps.path("chromium")
SAMPLE = af.EXAMPLES / "sample.mitm"
MAXMIND = af.ROOT / "tests" / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"
POLICY = af.ROOT / "policies" / "default.yaml"

pytestmark = [
    pytest.mark.e2e,
    system_deps.needs("chromium"),
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (enough to tell a blank page)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "sample-audit.html"
    assert main(["audit", str(SAMPLE), "--policy", str(POLICY), "--db", str(MAXMIND), "--format", "html",
                 "-o", str(out)]) == 0
    return out


def test_chromium_renders_chart_and_tables(report: Path, tmp_path: Path) -> None:
    proc = chromium(tmp_path / "profile", "--dump-dom", report.as_uri())
    dom = proc.stdout
    assert proc.returncode == 0 and "<html" in dom, proc.stderr[-1500:]
    chart = dom[dom.index('<svg class="chart"'):dom.index("</svg>")]
    bars = re.findall(r'<rect class="bar (sent|received) ?([a-z]*)" [^>]*width="([0-9.]+)"', chart)
    assert len(bars) == 2 * 9  # nine destination countries/kinds, a sent and a received bar each
    assert any(tone == "blocked" for _, tone, _ in bars)
    rows = [float(bars[i][2]) + float(bars[i + 1][2]) for i in range(0, len(bars), 2)]
    assert max(rows) == pytest.approx(560.0, abs=0.2)  # the biggest country's traffic fills the axis
    assert dom.count('<tr class="row-block">') >= 5 and dom.count('<tr class="row-allow">') >= 5
    assert dom.index("Blocked flows") < dom.index("Destinations") < dom.index("Per country")
    assert "sdk.analytics-partner.example" in dom and "28 CFR 202.601(a), 202.208" in dom


def test_chromium_screenshot_is_a_rendered_page(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars",
                    report.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-1500:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1280, 1600)
    assert len(set(pixels[: len(pixels) // 3])) > 64  # header, cards and chart: many colours, not a blank page
