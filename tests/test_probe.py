"""The trigger probe (bdprune.probe) against slow references and planted mixtures."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _images import make_images
from _slow_reference import bnp_reference
from torch import nn

from bdprune.probe import (BUDGETS, EVAL_IMAGES, PROBE_IMAGES, channel_moments, clip_pixels, composition_explained, divergence,
                           mixture_kl, project_l1, synthesize)
from bdprune.repair import reestimate_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def l1_projection_reference(v: np.ndarray, radius: float) -> np.ndarray:
    """Projection on the L1 ball by bisection on the soft threshold (one row)."""
    if np.abs(v).sum() <= radius:
        return v.copy()
    lo, hi = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(np.abs(v) - mid, 0).sum() > radius:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


def test_project_l1_matches_bisection():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 50))
    v[0] *= 0.001  # already inside the ball: unchanged
    for radius in (0.5, 3.0, 20.0):
        got = project_l1(torch.from_numpy(v), radius).numpy()
        for row, want in zip(got, (l1_projection_reference(r, radius) for r in v)):
            np.testing.assert_allclose(row, want, atol=1e-9)
            assert np.abs(row).sum() <= radius + 1e-9


def test_clip_pixels_passes_the_gradient_at_the_bounds_on_every_torch():
    """Forward: clamp to [0, 1]. Backward: 1 wherever 0 <= x <= 1 (bounds included), 0 outside,
    whatever torch's own clamp does at the bounds (its gradient there changed in 2.14)."""
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = clip_pixels(x)
    assert y.tolist() == [0.0, 0.0, pytest.approx(0.3), 1.0, 1.0]
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def _moved(moments):
    return {name: (m["mu_b"], m["var_b"]) for name, m in moments.items()}


def test_mixture_kl_equals_the_kl_of_the_pooled_images(bn_model):
    """A share p of perturbed images pooled with clean ones: the mixture's moments are exact (up
    to the unbiased-variance factor, here ~1/200)."""
    clean = make_images(160, seed=3)
    perturbation = 0.3 * (make_images(1, seed=4)[0] - 0.5)
    moved = (clean[:40] + perturbation).clamp(0, 1)
    got = float(mixture_kl(channel_moments(bn_model, clean), _moved(channel_moments(bn_model, moved)), 40 / 200))
    pooled = bnp_reference(bn_model, torch.cat([clean, moved]))
    assert got == pytest.approx(sum(float(v.sum()) for v in pooled.values()), rel=2e-2)
    base = sum(float(v.sum()) for v in bnp_reference(bn_model, clean).values())
    mom = channel_moments(bn_model, clean)
    assert float(mixture_kl(mom, _moved(channel_moments(bn_model, moved)), 0.0)) == pytest.approx(base, rel=1e-6)
    assert divergence(mom) == pytest.approx(base, rel=1e-6)


def _planted(bn_model, images: torch.Tensor, pattern: torch.Tensor, share: float) -> nn.Module:
    """``bn_model`` whose running statistics are those of training data of which ``share`` carried
    ``pattern`` (the cumulative statistics of the mixed set, as a long training run leaves them)."""
    model = copy.deepcopy(bn_model)
    n = int(share * len(images))
    mixed = torch.cat([images[n:], (images[:n] + pattern).clamp(0, 1)])
    reestimate_bn(model, mixed, batch_size=500)
    return model


def test_the_probe_recovers_a_planted_mixture_and_judges_on_other_images(bn_model):
    """Running statistics planted as 10% of 2,000 dim images carrying a bright corner patch (within
    both budgets: L1 2.8 of 3.2, L2 1.4 of 1.6; the patch itself explains 0.76): the synthesized
    perturbation explains most of the divergence (0.69 measured) and is within its budget; with the
    statistics of clean images alone it explains little (0.16). Deterministic."""
    pattern = torch.zeros(1, 8, 8)
    pattern[:, -2:, -2:] = 0.7
    train, clean = 0.3 * make_images(2000, seed=7), 0.3 * make_images(PROBE_IMAGES + EVAL_IMAGES + 32, seed=8)
    planted = _planted(bn_model, train, pattern, 0.10)
    control = _planted(bn_model, train, pattern, 0.0)
    found = synthesize(planted, clean, channel_moments(planted, clean))
    again = synthesize(planted, clean, channel_moments(planted, clean))
    plain = synthesize(control, clean, channel_moments(control, clean))
    assert [c.budget for c in found.candidates] == [f"{kind}={b:g}" for kind, b in BUDGETS]
    assert found.images == PROBE_IMAGES and found.judged == EVAL_IMAGES
    for a, b in zip(found.candidates, again.candidates):
        assert torch.equal(a.perturbation, b.perturbation) and a.share == b.share
    for cand, (kind, budget) in zip(found.candidates, BUDGETS):
        dim = cand.perturbation.numel()
        norm = cand.perturbation.norm() if kind == "l2" else cand.perturbation.abs().sum()
        assert float(norm) <= budget * (dim**0.5 if kind == "l2" else dim) * (1 + 1e-5)
        assert 0.0 <= cand.share <= cand.flip <= 1.0 and cand.explained <= 1.0
    assert max(c.explained for c in found.candidates) > 0.5
    assert max(c.explained for c in found.candidates) > 3 * max(c.explained for c in plain.candidates)


def test_shares_count_the_judged_images_sent_to_one_class(bn_model):
    """``share``: judged images whose prediction changed to the most frequent new class, over all
    judged images; ``flip``: those whose prediction changed at all. Checked by hand on the
    perturbation the probe returns."""
    clean = make_images(PROBE_IMAGES + EVAL_IMAGES, seed=9)
    found = synthesize(bn_model, clean, channel_moments(bn_model, clean))
    judged = clean[PROBE_IMAGES:]
    with torch.no_grad():
        before = bn_model(judged).argmax(1)
        for cand in found.candidates:
            after = bn_model((judged + cand.perturbation).clamp(0, 1)).argmax(1)
            changed = after != before
            counts = torch.bincount(after[changed], minlength=10)
            assert cand.flip == pytest.approx(float(changed.float().mean()))
            assert cand.share == pytest.approx(float(counts.max()) / len(judged)) and (cand.share == 0 or counts[cand.target] == counts.max())
            sent = (changed & (after == cand.target)).nonzero().flatten()
            assert torch.equal(cand.sample, judged[int(sent[0]) if len(sent) else 0])  # the picture shows an image it moved


def test_a_class_the_training_data_held_more_of_explains_the_statistics(bn_model):
    """Running statistics of a set holding three times as many images of one (predicted) class:
    the clean images of that class explain the divergence, those of another class do not."""
    images = make_images(600, seed=11)
    with torch.no_grad():
        pred = bn_model(images).argmax(1)
    rich = int(torch.bincount(pred).argmax())
    other = int(next(k for k in torch.bincount(pred).argsort(descending=True).tolist() if k != rich))
    train = torch.cat([images] + [images[pred == rich]] * 2)
    model = copy.deepcopy(bn_model)
    reestimate_bn(model, train, batch_size=len(train))
    with torch.no_grad():
        classes = model(images).argmax(1)
    mom = channel_moments(model, images)
    assert composition_explained(model, images, classes, rich, mom) > 0.5
    assert composition_explained(model, images, classes, other, mom) < 0.1
    assert composition_explained(model, images, classes, 99, mom) is None  # no such images


def test_the_gradient_is_exact_however_the_images_are_chunked(bn_model):
    """The two-pass chunked backward gives the one-batch gradient (to float64 rounding of float32
    sums), for the perturbation and the mixing share."""
    from bdprune.normalize import normalizer
    from bdprune.probe import _backward, clip_pixels

    images = make_images(PROBE_IMAGES, seed=12)
    mom = channel_moments(bn_model, make_images(200, seed=13))
    base = divergence(mom)
    for p in bn_model.parameters():
        p.requires_grad_(False)
    grads = []
    for chunk in (PROBE_IMAGES, 5, 1):
        delta = (0.05 * make_images(1, seed=14)[0].flatten()).requires_grad_(True)
        share = torch.tensor(-2.0, requires_grad=True)
        _backward(bn_model, lambda part: normalizer(None, "cpu")(clip_pixels(part + delta.view(1, 1, 8, 8))), images, share, mom, base, chunk)
        grads.append((delta.grad.clone(), share.grad.clone()))
    for d, s in grads[1:]:
        torch.testing.assert_close(d, grads[0][0], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s, grads[0][1], rtol=1e-4, atol=1e-7)
    assert grads[0][0].abs().max() > 0


def test_chunk_size_counts_the_saved_activations_not_the_weights():
    """A network whose weights dwarf its activations gets whole batches (the weights are held
    anyway); one whose activations are large gets chunks that shrink with ``batch_size``."""
    from bdprune.probe import BYTES_PER_BATCH_IMAGE, MIN_CHUNK, _bn_sums, chunk_size

    def net(channels: int, side: int, hidden: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                             nn.Flatten(), nn.Linear(channels * side * side, hidden)).eval()

    identity = lambda t: t  # noqa: E731
    heavy = net(4, 8, 4096)  # 4 MiB of weights in the linear layer, a few KiB of activations
    image = make_images(1, seed=15)[0]
    assert chunk_size(heavy, image, channel_moments(heavy, make_images(16, seed=16)), 1, identity) == PROBE_IMAGES

    wide = net(64, 64, 2)  # 1 MiB per activation tensor of one 64 x 64 image
    image = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(15))
    mom = channel_moments(wide, torch.rand(16, 1, 64, 64, generator=torch.Generator().manual_seed(16)))
    saved = []  # what one image's backward pass saves, outside the module's own tensors

    def pack(t):
        if all(t.untyped_storage().data_ptr() != p.untyped_storage().data_ptr() for p in wide.parameters()):
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _bn_sums(wide, image.unsqueeze(0).clone().requires_grad_(True), mom)
    per_image = sum(saved)
    got = {batch: chunk_size(wide, image, mom, batch, identity) for batch in (1, 24, 64)}
    assert got[24] == int(BYTES_PER_BATCH_IMAGE * 24 / per_image)
    assert MIN_CHUNK < got[24] < PROBE_IMAGES
    assert got[1] == MIN_CHUNK and got[64] == PROBE_IMAGES
