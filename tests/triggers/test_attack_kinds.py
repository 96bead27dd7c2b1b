"""The trigger kinds the detection zoo uses beyond the published four: a patch at a random
position per image, a low-frequency additive pattern, Adaptive-Blend's partial blend and an
input-dependent pattern, each checked against its formula written out by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bdprune.triggers import parse_trigger


def images(n: int = 6, c: int = 1, h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.25 + 0.5 * torch.rand((n, c, h, w), generator=g)


def test_random_patch_moves_per_image_and_is_reproducible():
    x = images(n=40)
    t = parse_trigger("patch:size=2,pos=random,seed=7,color=1")
    out = t.apply(x)
    places = set()
    for i in range(len(x)):
        changed = (out[i, 0] != x[i, 0]).nonzero()
        assert len(changed) == 4  # exactly one 2x2 white patch per image
        (r, c), (r2, c2) = changed.min(0).values.tolist(), changed.max(0).values.tolist()
        assert (r2 - r, c2 - c) == (1, 1) and torch.all(out[i, 0, r : r + 2, c : c + 2] == 1.0)
        places.add((r, c))
    assert len(places) > 10  # it really moves
    assert torch.equal(parse_trigger("patch:size=2,pos=random,seed=7").apply(x), out)
    assert not torch.equal(parse_trigger("patch:size=2,pos=random,seed=8").apply(x), out)


def test_lowfreq_is_the_upsampled_grid_scaled_to_amp():
    x = images(c=3)
    t = parse_trigger("lowfreq:k=3,amp=0.2,seed=4")
    grid = torch.rand((1, 3, 3, 3), generator=torch.Generator().manual_seed(4)) * 2 - 1
    smooth = F.interpolate(grid, size=(9, 11), mode="bicubic", align_corners=True)[0]
    pattern = 0.2 * smooth / smooth.abs().max()
    assert torch.allclose(t.apply(x), (x + pattern).clamp(0, 1), atol=1e-7)
    assert abs(float(pattern.abs().max()) - 0.2) < 1e-7


def test_adaptive_blends_each_image_with_its_own_share_of_the_cells():
    x = images(n=5, h=8, w=8)
    t = parse_trigger("adaptive:pieces=2,keep=0.5,alpha=0.4,seed=3")
    pattern = torch.rand((1, 8, 8), generator=torch.Generator().manual_seed(3))  # blend:noise,seed=3
    g = torch.Generator().manual_seed(3)
    expected = x.clone()
    for i in range(len(x)):
        for cell in torch.randperm(4, generator=g)[:2].tolist():
            r, c = divmod(cell, 2)
            rows, cols = slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4)
            expected[i, :, rows, cols] = 0.6 * x[i, :, rows, cols] + 0.4 * pattern[:, rows, cols]
    got = t.apply(x)
    assert torch.allclose(got, expected, atol=1e-7)
    whole = parse_trigger("adaptive:pieces=2,keep=1,alpha=0.4,seed=3").apply(x)
    assert torch.allclose(whole, parse_trigger("blend:noise,seed=3,alpha=0.4").apply(x), atol=1e-7)


def test_dynamic_pattern_depends_on_the_image_and_follows_the_formula():
    x = images(n=3, c=3)
    t = parse_trigger("dynamic:alpha=0.25,seed=2")
    g = torch.Generator().manual_seed(2)
    w1 = torch.randn((8, 3, 3, 3), generator=g) / (3 * 3**0.5)
    w2 = torch.randn((3, 8, 3, 3), generator=g) / (3 * 8**0.5)
    pattern = torch.sigmoid(4 * F.conv2d(torch.tanh(4 * F.conv2d(2 * x - 1, w1, padding=1)), w2, padding=1))
    assert torch.allclose(t.apply(x), (0.75 * x + 0.25 * pattern).clamp(0, 1), atol=1e-6)
    moved = t.apply(x) - 0.75 * x
    assert not torch.allclose(moved[0], moved[1], atol=1e-3)  # no pattern shared by the images
