"""``--format html``: one self-contained page (no script, no external asset, a CSP that forbids
any), with the verdict, the provenance, the plots as PNG data URIs and the ranked table, every
string escaped. The page as a browser renders it is checked in test_html_browser.py."""

from __future__ import annotations

import base64
import hashlib
import io
from html.parser import HTMLParser

import pytest
from PIL import Image
from typer.testing import CliRunner

from bdprune import __version__
from bdprune.cli import app
from helpers_report import make_result

pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
from bdprune.report.html_report import CSP, html_report  # noqa: E402

runner = CliRunner()


class _Page(HTMLParser):
    """Tags, attributes and visible text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def _assert_self_contained(page: _Page) -> None:
    assert not page.all("script") and not page.all("link") and not page.all("iframe") and not page.all("object")
    for _, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "poster"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:image/png;base64,"), (name, value[:60])
        assert not any(name.startswith("on") for name in attrs), attrs  # no event handlers
    [csp] = [a for a in page.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp["content"] == CSP and "default-src 'none'" in CSP


def _png_sizes(page: _Page) -> list[tuple[int, int]]:
    sizes = []
    for img in page.all("img"):
        data = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as png:
            png.verify()
        with Image.open(io.BytesIO(data)) as png:
            sizes.append(png.size)
        assert img["alt"]
    return sizes


def test_page_holds_verdict_table_plot_and_nothing_external():
    clean, suspicious = make_result("clean.pt"), make_result("bad.pt", spike=1.0)
    page = _Page(html_report([clean, suspicious], top=7))
    _assert_self_contained(page)
    verdicts = [a["data-verdict"] for a in page.all("div") if "data-verdict" in a]
    assert verdicts == ["clean", "suspicious"]
    text = " ".join(page.text)
    assert "1 of 2 checkpoints suspicious" in text and "SUSPICIOUS" in text and "CLEAN" in text
    assert len(page.all("section")) == 2
    assert all(w > 600 and h > 300 for w, h in _png_sizes(page)) and len(page.all("img")) == 2
    ranked = [a for a in page.all("table") if a.get("class") == "ranked"]
    assert len(ranked) == 2 and len([a for a in page.all("tr") if a.get("class") == "flagged"]) >= 1
    # the ranked table lists exactly the top 7 of each checkpoint: 7 rows + a header, twice
    rows_before_layers = html_report([suspicious], top=7).split('<table class="ranked">', 1)[1].split("</table>", 1)[0]
    assert rows_before_layers.count("<tr") == 8
    assert f"bdprune {__version__}" in text


def test_hostile_names_are_escaped():
    name = '<img src=x onerror="alert(1)">"&.pt'
    result = make_result(name, spike=1.0)
    result.layers[0].name = "<script>alert(2)</script>"
    result.notes = ["<b>note</b>"]
    text = html_report([result], top=40)
    page = _Page(text)
    _assert_self_contained(page)
    assert name in " ".join(page.text) and "<script>alert(2)</script>" in " ".join(page.text)
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_provenance_names_file_hash_method_data_and_version(bn_checkpoint, images_npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.html"
    args = ["scan", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "--samples", "40",
            "--format", "html", "-o", str(out), "--exit-zero"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"report written to {out}" in result.stderr
    page = _Page(out.read_text(encoding="utf-8"))
    _assert_self_contained(page)
    text = " ".join(page.text)
    digest = hashlib.sha256(bn_checkpoint.path.read_bytes()).hexdigest()
    assert digest in text and f"{images_npz} (40 samples)" in text
    assert "bnp (default: --data was given), u = 3" in text and f"bdprune {__version__}" in text
    evidence, plot = _png_sizes(page)  # the synthesized trigger beside a clean image it moves, then the scores
    assert evidence[0] > evidence[1] and plot[0] > 600
    assert "The trigger the probe synthesized" in text and "of other clean images to class" in text


def test_an_in_memory_model_has_no_file_hash():
    text = html_report([make_result("<SmallCNN>")], top=3)
    assert "none: not a file (an in-memory model)" in text and "&lt;SmallCNN&gt;" in text
