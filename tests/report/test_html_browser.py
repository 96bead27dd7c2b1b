"""The HTML report as a person sees it: opened in a real headless Chromium, offline.

Skipped where no Chromium is installed (``apt-get install chromium`` on Debian). The page itself
carries no script; a test copy gets one small inline script that records, once the page has
loaded, whether every image decoded, the verdict's rendered colour and any script error, in
attributes that ``--dump-dom`` prints. The original page is rendered too, to a screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat
from typer.testing import CliRunner

from bdprune.cli import app

pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (Debian: apt-get install chromium)")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const b = document.body, v = document.querySelector("[data-verdict]");
  b.setAttribute("data-images", [...document.images].map(i => i.complete && i.naturalWidth > 0 ? i.naturalWidth + "x" + i.naturalHeight : "broken").join(" "));
  b.setAttribute("data-verdict-colour", getComputedStyle(v).backgroundColor);
  b.setAttribute("data-overflow", String(document.documentElement.scrollWidth > window.innerWidth));
  b.setAttribute("data-errors", JSON.stringify(window.__errors));
  b.setAttribute("data-probe", "done");
});
</script>"""


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir(exist_ok=True)
    return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


_REPORT: dict = {}


@pytest.fixture
def report(tmp_path_factory, make_bn_model) -> Path:
    """An HTML report of two real checkpoints, written by the CLI once for the module."""
    import torch

    from _images import make_images

    if "path" in _REPORT:
        return _REPORT["path"]
    work = tmp_path_factory.mktemp("browser")
    for seed in (0, 1):
        torch.save(make_bn_model(seed).state_dict(), work / f"model{seed}.pt")
    np.savez(work / "clean.npz", images=make_images(64).numpy(), labels=np.arange(64) % 10)
    out = work / "report.html"
    args = ["scan", str(work / "model0.pt"), str(work / "model1.pt"), "--arch", "smallcnn", "--arch-arg", "width=8",
            "--data", str(work / "clean.npz"), "--format", "html", "-o", str(out), "--exit-zero"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    _REPORT["path"] = out
    return out


def test_every_image_decodes_and_the_verdict_shows(report, tmp_path):
    page = report.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    # the report's CSP forbids every script; the copy allows only its own inline probe
    probe.write_text(page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
                     .replace("</body>", PROBE + "</body>"), encoding="utf-8")
    run = _chromium(tmp_path / "profile", "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", run.stdout).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert attrs.get("probe") == "done", body[:500]
    sizes = attrs["images"].split()
    # per checkpoint: the picture of the trigger its probe synthesized, then its channel plot
    assert len(sizes) == 4 and "broken" not in sizes, sizes
    for size in sizes:
        width, height = map(int, size.split("x"))
        assert width > 600 and height > 250
    alts = re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)"', page)
    assert [alt.startswith("The trigger the probe synthesized") for alt in alts] == [True, False] * 2, alts
    assert attrs["errors"] == "[]" and attrs["overflow"] == "false"
    verdict = re.search(r'<div class="verdict (\w+)" data-verdict="\w+"><strong>(\w+)</strong>', run.stdout)
    colours = {"clean": "rgb(234, 246, 236)", "suspicious": "rgb(253, 236, 234)"}
    assert verdict and verdict.group(2) == verdict.group(1).upper()
    assert attrs["verdict-colour"] == colours[verdict.group(1)], "the inline CSS was not applied"


def test_the_page_itself_renders_to_a_screenshot(report, tmp_path):
    shot = tmp_path / "report.png"
    run = _chromium(tmp_path / "profile", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,1600",
                    report.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    refused = [line for line in run.stderr.splitlines() if "Refused to" in line or "Uncaught" in line or "net::ERR" in line]
    assert refused == [], refused  # the page asks for nothing its CSP forbids, and loads nothing
    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        low, high = zip(*ImageStat.Stat(img.convert("L")).extrema)
        assert high[0] - low[0] > 200, "a blank screenshot"
        # the plot is drawn in colour: some pixels are far from grey
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
        assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 60).any()
    keep = os.environ.get("BDPRUNE_SCREENSHOT_DIR")
    if keep:  # for a person to look at after the run
        shutil.copy(shot, Path(keep) / "report.png")
