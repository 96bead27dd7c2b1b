"""The learned-mask helper shared by ANP and RNP, against slow, obvious references: the masked
and perturbed BN against a BN whose gamma and beta were set by hand, mask gradients against
central finite differences in float64, ANP's noise bounds and its one signed step, clamping."""

from __future__ import annotations

import copy

import pytest
import torch
from _images import make_images
from torch import nn

from bdprune.data import ImageSet
from bdprune.errors import BdpruneError
from bdprune.methods.anp import perturb
from bdprune.methods.masks import ChannelMasks, cross_entropy, labelled_batches
from bdprune.stats import bn_layers

CPU = torch.device("cpu")


def _labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


def _random_masks(masked: ChannelMasks, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masked.mask_parameters():
            m.copy_(torch.rand(m.shape, generator=g))


def test_masked_model_is_a_copy_and_leaves_the_original_alone(bn_model):
    before = copy.deepcopy(bn_model.state_dict())
    masked = ChannelMasks(bn_model, device=CPU, noise=True)
    _random_masks(masked)
    masked.model(make_images(4))
    for key, value in bn_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.requires_grad for p in bn_model.parameters())  # the original's parameters stay trainable


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("perturbed", [False, True])
def test_masked_and_perturbed_bn_equal_hand_set_gamma_and_beta(bn_model, perturbed, mode):
    """BN(x; gamma * (m + d), beta * (1 + e)) with the noise on, BN(x; gamma * m, beta) with it off."""
    masked = ChannelMasks(bn_model, device=CPU, noise=True)
    _random_masks(masked)
    masked.reset_noise(0.4, torch.Generator().manual_seed(5))
    masked.perturbed = perturbed
    reference = copy.deepcopy(bn_model)
    with torch.no_grad():
        for name, bn in bn_layers(reference):
            m = masked.masks[name].detach()
            d, e = masked.weight_noise[name].detach(), masked.bias_noise[name].detach()
            bn.weight.copy_(bn.weight * (m + d if perturbed else m))
            bn.bias.copy_(bn.bias * (1 + e) if perturbed else bn.bias)
    getattr(masked.model, mode)(), getattr(reference, mode)()
    x = make_images(16)
    with torch.no_grad():
        torch.testing.assert_close(masked.model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_mask_gradient_matches_finite_differences(bn_model):
    model = bn_model.double()
    masked = ChannelMasks(model, device=CPU)
    _random_masks(masked)
    masked.model.train()
    x, y = make_images(12).double(), _labels(12)
    loss, _ = cross_entropy(masked.model, x, y)
    grads = torch.autograd.grad(loss, masked.mask_parameters())
    h = 1e-6
    for (name, mask), grad in zip(masked.masks.items(), grads):
        for k in (0, mask.numel() // 2, mask.numel() - 1):
            with torch.no_grad():
                mask[k] += h
                up = float(cross_entropy(masked.model, x, y)[0])
                mask[k] -= 2 * h
                down = float(cross_entropy(masked.model, x, y)[0])
                mask[k] += h
            assert float(grad[k]) == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-8), (name, k)


def test_noise_starts_inside_eps_and_one_signed_step_moves_each_value_by_eps(bn_model):
    eps = 0.4
    masked = ChannelMasks(bn_model, device=CPU, noise=True)
    masked.model.train()
    x, y = make_images(16), _labels(16)
    g = torch.Generator().manual_seed(0)
    masked.reset_noise(eps, torch.Generator().manual_seed(0))
    start = [t.detach().clone() for t in masked.noise_parameters()]
    assert all(float(t.abs().max()) <= eps for t in start)
    assert all(float(t.abs().max()) > 0.5 * eps for t in start if t.numel() >= 8)  # drawn, not zero
    perturb(masked, x, y, eps=eps, steps=1, generator=g)  # redraws from g: same stream as above
    for before, after in zip(start, masked.noise_parameters()):
        step = (after.detach() - before).abs()
        # sign(grad) is +-1 (0 where the gradient vanishes): a move of exactly eps or none, not clamped
        assert torch.all((step - eps).abs() < 1e-6) or torch.all((step < 1e-6) | ((step - eps).abs() < 1e-6))
        assert float(after.detach().abs().max()) <= 2 * eps + 1e-6
    assert masked.perturbed


def test_signed_step_raises_the_loss_on_average(bn_model):
    masked = ChannelMasks(bn_model, device=CPU, noise=True)
    masked.model.train()
    x, y = make_images(32), _labels(32)
    raised = 0
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        masked.reset_noise(0.1, torch.Generator().manual_seed(seed))
        masked.perturbed = True
        with torch.no_grad():
            random_start = float(cross_entropy(masked.model, x, y)[0])
        after = float(perturb(masked, x, y, eps=0.1, steps=1, generator=g).detach())
        raised += after > random_start
    assert raised >= 4


def test_clamp_projects_masks_onto_unit_interval(bn_model):
    masked = ChannelMasks(bn_model, device=CPU)
    with torch.no_grad():
        for m in masked.mask_parameters():
            m.copy_(torch.linspace(-2, 3, m.numel()))
    masked.clamp_masks()
    for m in (t.detach() for t in masked.mask_parameters()):
        assert float(m.min()) == 0.0 and float(m.max()) == 1.0
        inside = (torch.linspace(-2, 3, m.numel()) >= 0) & (torch.linspace(-2, 3, m.numel()) <= 1)
        torch.testing.assert_close(m[inside], torch.linspace(-2, 3, m.numel())[inside])


def test_bn_without_affine_is_skipped_and_a_model_with_none_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False))
    masked = ChannelMasks(model, device=CPU)
    assert list(masked.masks) == ["1"] and masked.skipped == ["3"]
    with pytest.raises(BdpruneError, match="no BatchNorm layer with affine"):
        ChannelMasks(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False)), device=CPU)


def test_labelled_batches_need_labels_and_apply_normalization(tmp_path):
    images = make_images(6)
    with pytest.raises(BdpruneError, match="no labels"):
        labelled_batches(ImageSet(images, None, tmp_path / "x.npz"), purpose="--method rnp", device=CPU, batch_size=4, normalize=None)
    data = labelled_batches(ImageSet(images, _labels(6), tmp_path / "x.npz"), purpose="--method rnp", device=CPU, batch_size=4,
                            normalize=((0.5,), (0.25,)))
    torch.testing.assert_close(data.images, (images - 0.5) / 0.25)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in data.shuffled_epoch(g)])
    assert sorted(seen.tolist()) == sorted(_labels(6).tolist())  # one epoch: every sample once (4 + 2)
