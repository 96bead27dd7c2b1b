"""Tests for bdprune.triggers: placement, colors, blend/SIG formulas, bad specs, fuzzing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bdprune.errors import BdpruneError
from bdprune.triggers import Trigger, parse_trigger


def images(n: int = 2, c: int = 3, h: int = 8, w: int = 10, seed: int = 1) -> torch.Tensor:
    """Random images kept away from 0 and 1 so a pasted patch always changes the pixel."""
    g = torch.Generator().manual_seed(seed)
    return 0.25 + 0.5 * torch.rand((n, c, h, w), generator=g)


def expect_patch(x: torch.Tensor, col: int, row: int, patch: torch.Tensor) -> torch.Tensor:
    """Pixel-by-pixel expectation: copy x, overwrite the patch area one value at a time."""
    out = x.clone()
    ph, pw = patch.shape[-2:]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(ph):
                for j in range(pw):
                    out[n, c, row + i, col + j] = patch[c, i, j]
    return out


# --- patch placement -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pos", "col", "row"),
    [("tl", 1, 1), ("tr", 10 - 1 - 3, 1), ("bl", 1, 8 - 1 - 3), ("br", 10 - 1 - 3, 8 - 1 - 3)],
)
def test_patch_corners_default_margin(pos, col, row):
    x = images()
    got = parse_trigger(f"patch:size=3,pos={pos}").apply(x)
    assert torch.equal(got, expect_patch(x, col, row, torch.ones(3, 3, 3)))


@pytest.mark.parametrize(
    ("pos", "col", "row"), [("tl", 0, 0), ("tr", 8, 0), ("bl", 0, 6), ("br", 8, 6)]
)
def test_patch_corners_margin_zero(pos, col, row):
    x = images()
    got = parse_trigger(f"patch:size=2,pos={pos},margin=0,color=0").apply(x)
    assert torch.equal(got, expect_patch(x, col, row, torch.zeros(3, 2, 2)))


def test_patch_default_is_bottom_right_white_3x3_margin_1():
    x = images()
    got = parse_trigger("patch").apply(x)
    assert torch.equal(got, expect_patch(x, 6, 4, torch.ones(3, 3, 3)))


@pytest.mark.parametrize(("col", "row"), [(0, 0), (2, 5), (7, 0), (0, 4), (3, 3)])
def test_patch_explicit_pos_is_column_then_row(col, row):
    x = images()
    got = parse_trigger(f"patch:size=3,pos={col}:{row},color=0.5").apply(x)
    want = expect_patch(x, col, row, torch.full((3, 3, 3), 0.5))
    assert torch.equal(got, want)
    changed = (got != x).any(dim=(0, 1)).nonzero().tolist()
    assert changed == [[r, c] for r in range(row, row + 3) for c in range(col, col + 3)]


def test_patch_checkerboard():
    x = images(c=1)
    got = parse_trigger("patch:size=4,pos=tl,margin=0,checker").apply(x)
    board = torch.tensor([[1.0 if (i + j) % 2 == 0 else 0.0 for j in range(4)] for i in range(4)])
    assert torch.equal(got, expect_patch(x, 0, 0, board[None]))


def test_patch_from_image_file(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [128, 64, 32]]], dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "p.png")
    x = images()
    got = parse_trigger("patch:image=p.png,pos=br,margin=0", base_dir=tmp_path).apply(x)
    patch = torch.from_numpy(rgb.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)
    assert torch.equal(got, expect_patch(x, 8, 6, patch))


def test_patch_from_gray_image_on_rgb_images(tmp_path):
    gray = np.array([[0, 255, 51]], dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    x = images()
    got = parse_trigger("patch:image=g.png,pos=0:2", base_dir=tmp_path).apply(x)
    patch = torch.from_numpy(gray.astype(np.float32) / np.float32(255.0))[None].expand(3, 1, 3)
    assert torch.equal(got, expect_patch(x, 0, 2, patch))


# --- colors --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("color", "rgb"),
    [("1", (1.0, 1.0, 1.0)), ("0.25", (0.25, 0.25, 0.25)), ("#ff8000", (1.0, 128 / 255, 0.0)),
     ("0.1:0.2:0.3", (0.1, 0.2, 0.3))],
)
def test_color_on_three_channels(color, rgb):
    x = images(c=3)
    got = parse_trigger(f"patch:size=2,pos=tl,color={color}").apply(x)
    patch = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 2, 2)
    assert torch.equal(got, expect_patch(x, 1, 1, patch))


@pytest.mark.parametrize(
    ("color", "gray"),
    [("1", 1.0), ("0.25", 0.25), ("#ff8000", 0.299 + 0.587 * 128 / 255),
     ("0.1:0.2:0.3", 0.299 * 0.1 + 0.587 * 0.2 + 0.114 * 0.3)],
)
def test_color_on_one_channel_uses_luminance(color, gray):
    x = images(c=1)
    got = parse_trigger(f"patch:size=2,pos=tl,color={color}").apply(x)
    want = expect_patch(x, 1, 1, torch.full((1, 2, 2), gray))
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.equal(got[..., 3:, :], x[..., 3:, :])


def test_rgb_color_on_four_channel_images_is_an_error():
    with pytest.raises(BdpruneError, match="channel"):
        parse_trigger("patch:color=#ff0000").apply(images(c=4))


# --- blend ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("seed", "alpha"), [(0, 0.2), (7, 0.5), (123, 1.0), (3, 0.0)])
def test_blend_noise_formula(seed, alpha):
    x = images(c=3, h=6, w=5)
    spec = f"blend:noise,seed={seed},alpha={alpha}"
    got = parse_trigger(spec).apply(x)
    p = torch.rand((3, 6, 5), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(got, ((1 - alpha) * x + alpha * p).clamp(0, 1))


def test_blend_noise_default_seed_is_zero_and_pattern_is_cached():
    trig = parse_trigger("blend:noise")
    a = trig.apply(images(n=1, seed=1))
    b = parse_trigger("blend:noise,seed=0,alpha=0.2").apply(images(n=1, seed=1))
    assert torch.equal(a, b)
    assert trig.pattern(3, 8, 10) is trig.pattern(3, 8, 10)
    assert trig.pattern(1, 8, 10).shape == (1, 8, 10)


def test_blend_image_same_size(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(tmp_path / "b.png")
    x = images()
    got = parse_trigger("blend:image=b.png,alpha=0.3", base_dir=tmp_path).apply(x)
    p = torch.from_numpy(arr.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)
    assert torch.equal(got, ((1 - 0.3) * x + 0.3 * p).clamp(0, 1))


def test_blend_image_resized_and_to_gray(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(tmp_path / "small.png")
    x = images(c=1, h=8, w=10)
    got = parse_trigger("blend:image=small.png,alpha=0.5", base_dir=tmp_path).apply(x)
    rgb = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)
    gray = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None, None]
    p = F.interpolate(gray, size=(8, 10), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(got, (0.5 * x + 0.5 * p).clamp(0, 1), atol=1e-6, rtol=0)


# --- SIG -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("delta", "freq"), [(0.08, 6), (0.5, 2.5), (1.0, 1)])
def test_sig_formula_against_hand_loop(delta, freq):
    x = images(n=2, c=2, h=3, w=7)
    x[0, 0, 0, :] = 1.0  # something to clip
    got = parse_trigger(f"sig:delta={delta},freq={freq}").apply(x)
    want = x.clone()
    n_, c_, h_, w_ = x.shape
    for n in range(n_):
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    v = float(x[n, c, i, j]) + delta * math.sin(2 * math.pi * j * freq / w_)
                    want[n, c, i, j] = min(max(v, 0.0), 1.0)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_sig_defaults():
    assert parse_trigger("sig").describe() == "sig:delta=0.08,freq=6"


# --- general properties --------------------------------------------------------------------

ALL_SPECS = [
    "patch:size=3,pos=br,color=1", "patch:pos=2:3,color=#102030", "patch:checker,pos=tr",
    "blend:noise,seed=5,alpha=0.2", "sig:delta=0.08,freq=6", "sig:delta=1",
    "patch:size=2,pos=random,seed=4", "lowfreq:k=3,amp=0.2,seed=1", "adaptive:pieces=2,keep=0.5,alpha=0.3,seed=2",
    "dynamic:alpha=0.3,seed=5",
]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_input_not_modified_and_output_in_range(spec):
    x = images()
    x[0, 0, 0, 0] = 1.0
    x[0, 0, 0, 1] = 0.0
    before = x.clone()
    trig = parse_trigger(spec)
    assert isinstance(trig, Trigger)
    got = trig.apply(x)
    assert torch.equal(x, before)
    assert got.data_ptr() != x.data_ptr()
    assert got.shape == x.shape and got.dtype == x.dtype
    assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_describe_round_trips(spec):
    trig = parse_trigger(spec)
    again = parse_trigger(trig.describe())
    assert again.describe() == trig.describe()
    x = images()
    assert torch.equal(again.apply(x), trig.apply(x))


def test_image_trigger_input_not_modified(tmp_path):
    Image.fromarray(np.full((3, 3), 200, np.uint8), "L").save(tmp_path / "q.png")
    for spec in ("patch:image=q.png", "blend:image=q.png,alpha=0.7"):
        x = images()
        before = x.clone()
        parse_trigger(spec, base_dir=tmp_path).apply(x)
        assert torch.equal(x, before)


BAD_SPECS = [
    "", "bogus", "bogus:size=3", "Patch:size=3", "patch:size=0", "patch:size=-2", "patch:size=abc",
    "patch:size=2.5", "patch:size", "patch:foo=1", "patch:size=3,size=4", "patch:size=3,,pos=br",
    "patch:pos=middle", "patch:pos=1:x", "patch:pos=-1:0", "patch:pos=1:2:3",
    "patch:pos=1:1,margin=2",
    "patch:margin=-1", "patch:color=2", "patch:color=-0.1", "patch:color=#12345",
    "patch:color=#gg0000", "patch:color=0.1:0.2", "patch:color=red", "patch:color=nan",
    "patch:checker=1", "patch:checker,color=0", "patch:image=missing.png",
    "patch:image=x.png,size=3", "blend:alpha=0.2", "blend:noise,alpha=1.5",
    "blend:noise,alpha=-0.1", "blend:noise,alpha=abc", "blend:noise,alpha=nan",
    "blend:noise,alpha=inf", "blend:noise,seed=-1",
    "blend:noise,seed=1.5", "blend:noise=1", "blend:image=missing.png,alpha=0.2",
    "blend:image=notimage.png", "blend:image=sub,alpha=0.2", "blend:image=a.png,noise",
    "blend:image=,alpha=0.1", "sig:delta=x", "sig:delta=2", "sig:freq=0", "sig:freq=-1",
    "sig:amp=0.1", "sig:noise", "patch:pos=random,margin=1", "patch:seed=3", "patch:pos=random,seed=-1",
    "lowfreq:k=1", "lowfreq:amp=2", "lowfreq:seed=x", "adaptive:keep=0", "adaptive:pieces=0", "adaptive:alpha=1.5",
    "dynamic:alpha=-0.1", "dynamic:k=3",
]


@pytest.fixture
def bad_dir(tmp_path):
    (tmp_path / "notimage.png").write_text("this is not a png")
    (tmp_path / "sub").mkdir()
    return tmp_path


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_malformed_spec_raises(spec, bad_dir):
    with pytest.raises(BdpruneError) as info:
        parse_trigger(spec, base_dir=bad_dir)
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(spec) in msg
    assert "expected" in msg


@pytest.mark.parametrize(
    "spec", ["patch:size=9", "patch:size=8,pos=br", "patch:pos=8:0", "patch:pos=0:7,size=2"]
)
def test_patch_not_fitting_raises_at_apply(spec):
    trig = parse_trigger(spec)
    with pytest.raises(BdpruneError, match="does not fit") as info:
        trig.apply(images(h=8, w=10))
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
def test_bad_image_tensor_raises(bad):
    with pytest.raises(BdpruneError):
        parse_trigger("sig").apply(bad)


# --- fuzzing -------------------------------------------------------------------------------

WORDS = ["patch", "blend", "sig", "warp", "lowfreq", "adaptive", "dynamic", "random", "amp", "pieces", "keep", "k", "s", "size", "pos", "margin", "color", "checker", "image", "alpha",
         "noise", "seed", "delta", "freq", "tl", "br", "1", "0", "0.5", "-1", "3", "#ff00ff",
         "1:2", "0.1:0.2:0.3", "nan", "inf", "1e400", "x.png", "", " "]
SEPS = [":", ",", "=", "#", ".", "-"]
structured = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(SEPS), st.text(max_size=3)),
                      max_size=12).map("".join)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.one_of(st.text(max_size=40), structured))
def test_random_specs_parse_or_raise_bdprune_error(spec, bad_dir):
    try:
        trig = parse_trigger(spec, base_dir=bad_dir)
    except BdpruneError as err:
        assert "\n" not in str(err)
        return
    try:
        out = trig.apply(images(n=1, c=3, h=6, w=6))
    except BdpruneError:
        return
    assert out.shape == (1, 3, 6, 6)
    assert isinstance(trig.describe(), str)


def test_blend_image_shrunk_with_antialiased_bilinear(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(tmp_path / "big.png")
    x = images(c=3, h=8, w=10)
    got = parse_trigger("blend:image=big.png,alpha=0.4", base_dir=tmp_path).apply(x)
    rgb = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    p = F.interpolate(rgb, size=(8, 10), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.allclose(got, ((1 - 0.4) * x + 0.4 * p).clamp(0, 1), atol=1e-6, rtol=0)


# --- warp (WaNet) --------------------------------------------------------------------------

def test_warp_is_deterministic_from_its_seed_and_keeps_shape_and_input():
    x = images(n=3, c=3, h=16, w=12)
    before = x.clone()
    a = parse_trigger("warp:k=4,s=1,seed=3").apply(x)
    b = parse_trigger("warp:k=4,s=1,seed=3").apply(x)
    c = parse_trigger("warp:k=4,s=1,seed=4").apply(x)
    assert torch.equal(x, before)  # input untouched
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_warp_defaults_and_describe_round_trip():
    t = parse_trigger("warp")
    assert (t.k, t.s, t.seed) == (4, 0.5, 0)
    assert t.describe() == "warp:k=4,s=0.5,seed=0"
    assert parse_trigger(t.describe()).describe() == t.describe()


def test_warp_moves_pixels_by_less_than_about_s_and_s0_is_identity():
    h = w = 28
    x = images(n=2, c=1, h=h, w=w)
    assert torch.allclose(parse_trigger("warp:s=0").apply(x), x, atol=1e-5)
    t = parse_trigger("warp:k=4,s=0.5,seed=0")
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = t.grid(h, w)[0]
    dx, dy = (grid[..., 0] - xs) * (w - 1) / 2, (grid[..., 1] - ys) * (h - 1) / 2  # in pixels
    shift = torch.sqrt(dx**2 + dy**2)
    assert 0.05 < float(shift.mean()) < 0.5 and float(shift.max()) < 1.0
    out = t.apply(x)
    assert 0 < float((out - x).abs().mean()) < 0.2  # a small, visible change


def test_warp_is_bilinear_resampling_along_the_grid():
    """A horizontal ramp image: bilinear sampling returns the sampled x coordinate itself."""
    h, w = 10, 13
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(2, 1, h, w).contiguous()
    t = parse_trigger("warp:k=3,s=2,seed=1")
    want = (t.grid(h, w)[0, ..., 0] + 1) / 2
    assert torch.allclose(t.apply(ramp)[0, 0], want, atol=1e-5)
    field = t.field()
    assert field.shape == (1, 2, 3, 3) and float(field.abs().mean()) == pytest.approx(1.0)


def test_warp_clamps_values_and_grid():
    x = images(n=1, c=3, h=8, w=8)
    t = parse_trigger("warp:k=2,s=50,seed=0")  # a huge warp: the grid is clamped to the image
    g = t.grid(8, 8)
    assert float(g.abs().max()) <= 1.0
    out = t.apply(x)
    assert out.shape == x.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("spec", ["warp:k=1", "warp:s=-1", "warp:s=nan", "warp:seed=-2", "warp:alpha=0.2", "warp:k"])
def test_warp_bad_specs(spec):
    with pytest.raises(BdpruneError, match="warp"):
        parse_trigger(spec)
