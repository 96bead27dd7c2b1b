"""Plots (bdprune.plot, ``scan --plot``, ``prune --plot``): what the figures hold, the files they
become, and the one-line error when the ``plot`` extra (matplotlib) is missing."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bdprune.cli import app
from bdprune.pruning import PruneOutcome
from bdprune.errors import BdpruneError
from bdprune.scoring import ScanResult, flag_absolute, flag_layer
from bdprune.tune import CurvePoint
from bdprune.verdict import assess
from helpers_report import make_result

pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
from bdprune.plot import curve_figure, save_figure, scan_figure  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def _by_label(ax) -> dict:
    return {c.get_label(): c for c in ax.collections}


def test_scan_figure_shows_every_channel_flags_thresholds_and_verdict():
    result = make_result("ckpt.pt", spike=1.0)
    assert result.verdict.suspicious and result.flagged_total
    fig = scan_figure(result)
    [ax] = fig.axes
    parts = _by_label(ax)
    flagged = parts[f"flagged ({result.flagged_total})"].get_offsets()
    assert len(flagged) == result.flagged_total
    assert len(parts["channel"].get_offsets()) == result.channels_total - result.flagged_total
    want = sorted(layer.scores[c] for layer in result.layers for c in layer.flagged)
    assert sorted(flagged[:, 1].tolist()) == pytest.approx(want)
    ringed = parts["behind the verdict"].get_offsets()
    assert len(ringed) == len(result.verdict.drivers) >= 1
    from matplotlib.collections import LineCollection

    thresholds = [c for c in ax.collections if isinstance(c, LineCollection)]
    ys = sorted(seg[0][1] for c in thresholds for seg in c.get_segments())
    assert ys == pytest.approx(sorted(layer.threshold for layer in result.layers))
    title = ax.get_title(loc="left")
    assert "SUSPICIOUS" in title and f"{result.verdict.statistic:.3g}" in title
    assert [t.get_text() for t in ax.get_xticklabels()] == [layer.name for layer in result.layers]


def test_log_axis_only_for_positive_scores_spanning_decades():
    assert scan_figure(make_result("ckpt.pt", spike=100.0)).axes[0].get_yscale() == "log"
    narrow = {"bn": torch.linspace(1.0, 2.0, 16, dtype=torch.float64), "bn2": torch.linspace(-1.0, 5.0, 16, dtype=torch.float64)}
    for name, scores in narrow.items():
        result = ScanResult(checkpoint="m.pt", arch="a", method="clp", method_reason="test", u=3.0, samples=0, device="cpu",
                            layers=[flag_layer(name, scores, 3.0, low_is_suspicious=False)], low_is_suspicious=False,
                            pruned_params=("weight", "bias"))
        assert scan_figure(result).axes[0].get_yscale() == "linear", name


def test_learned_masks_are_drawn_on_0_1_with_the_bound_u():
    masks = {"bn1": torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64), "bn2": torch.tensor([0.15, 0.95, 1.0])}
    result = ScanResult(checkpoint="m.pt", arch="smallcnn", method="anp", method_reason="test", u=0.2, samples=10, device="cpu",
                        layers=flag_absolute(masks, 0.2, low_is_suspicious=True), low_is_suspicious=True,
                        pruned_params=("weight",), ranking="absolute")
    result.verdict = assess(result)
    ax = scan_figure(result).axes[0]
    assert ax.get_ylim() == pytest.approx((-0.05, 1.05)) and "mask" in ax.get_ylabel()
    assert sorted(_by_label(ax)["flagged (3)"].get_offsets()[:, 1].tolist()) == pytest.approx([0.0, 0.1, 0.15])
    [bound] = [line for line in ax.get_lines() if line.get_label().startswith("mask bound")]
    assert bound.get_ydata()[0] == pytest.approx(0.2)


def _outcome(k=None, u=None) -> PruneOutcome:
    curve = [CurvePoint(None, 1, 90.0), CurvePoint(None, 2, 89.5), CurvePoint(None, 4, 85.0)] if k is not None else \
        [CurvePoint(4.0, 0, 90.0), CurvePoint(3.0, 2, 89.6), CurvePoint(2.0, 5, 80.0)]
    return PruneOutcome(output=None, method="bnp+" if k is not None else "bnp", u=u, channels={}, params=("weight",),
                        channels_total=40, curve=curve, base_acc=90.0, k=k)


@pytest.mark.parametrize("outcome, chosen", [(_outcome(k=2), (2, 89.5)), (_outcome(u=3.0), (2, 89.6)), (_outcome(u=None), (0, 90.0))])
def test_curve_figure_marks_the_chosen_point_and_the_budget(outcome, chosen):
    ax = curve_figure(outcome, max_acc_drop=1.0).axes[0]
    [star] = [c for c in ax.collections if c.get_label().startswith("chosen")]
    assert tuple(star.get_offsets()[0]) == pytest.approx(chosen)
    [line] = [line for line in ax.get_lines() if line.get_label().startswith("clean accuracy")]
    assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == 90.0 and len(line.get_xdata()) == 4
    [budget] = [line for line in ax.get_lines() if line.get_label().startswith("budget")]
    assert budget.get_ydata()[0] == pytest.approx(89.0)


def test_no_curve_is_an_error():
    with pytest.raises(BdpruneError, match="no accuracy curve"):
        curve_figure(PruneOutcome(output=None, method="bnp", u=3.0, channels={}, params=("weight",), channels_total=4))


def test_png_and_svg_files_written_whole(tmp_path):
    result = make_result("we$ird $name.pt", spike=1.0)  # "$" must not reach matplotlib's mathtext parser
    fig = scan_figure(result)
    save_figure(fig, tmp_path / "s.png")
    save_figure(fig, tmp_path / "s.SVG")
    with Image.open(tmp_path / "s.png") as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 300
    svg = ET.parse(tmp_path / "s.SVG").getroot()
    assert svg.tag.endswith("svg")
    with pytest.raises(BdpruneError, match="PNG or SVG"):
        save_figure(fig, tmp_path / "s.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "s.SVG", "s.png"]  # no temporary file left


def test_scan_plot_option(bn_checkpoint, images_npz, tmp_path):
    out = tmp_path / "scan.png"
    args = ["scan", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "-f", "json", "--exit-zero"]
    with_plot = runner.invoke(app, [*args, "--plot", str(out)])
    assert with_plot.exit_code == 0, with_plot.output
    assert with_plot.stdout.startswith("{") and f"plot written to {out}" in with_plot.stderr
    with Image.open(out) as img:
        assert img.format == "PNG"


def test_prune_plot_draws_the_budget_curve(bn_checkpoint, images_npz, tmp_path):
    out, pruned = tmp_path / "curve.svg", tmp_path / "p.safetensors"
    args = ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "--max-acc-drop", "100",
            "--val", str(images_npz), "-o", str(pruned), "--plot", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "chosen: u=1" in text and "budget: 100 point(s)" in text and pruned.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--plot", "p.pdf"], "p.pdf: --plot writes PNG or SVG"),
        (["--plot", "p.png"], "--plot draws the clean-accuracy curve of a --max-acc-drop search"),
    ],
)
def test_prune_plot_refused_before_any_work(bn_checkpoint, images_npz, tmp_path, extra, message):
    pruned = tmp_path / "p.safetensors"
    args = ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "-o", str(pruned), *extra]
    if extra[1].endswith(".pdf"):
        args += ["--max-acc-drop", "1", "--val", str(images_npz)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not pruned.exists() and not (tmp_path / "cwd" / extra[1]).exists()


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Every matplotlib module import fails, as on an install without the ``plot`` extra."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    "command",
    [
        ["scan", "--plot", "s.png"],
        ["scan", "--format", "html", "-o", "r.html"],
        ["prune", "--max-acc-drop", "100", "--plot", "c.png"],
    ],
)
def test_without_the_plot_extra_one_line_naming_it(no_matplotlib, bn_checkpoint, images_npz, command):
    cmd, *options = command
    args = [cmd, str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), *options]
    if cmd == "prune":
        args += ["--val", str(images_npz), "-o", "p.safetensors"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert "needs matplotlib, which is not installed" in line and "pip install 'bdprune[plot]'" in line
    assert list((bn_checkpoint.path.parent / "cwd").iterdir()) == []  # no report, plot or pruned file
