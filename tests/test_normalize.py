"""bdprune.normalize: the --normalize presets and parser, and the one normalizer every forward pass uses."""

from __future__ import annotations

import pytest
import torch

from bdprune.errors import BdpruneError
from bdprune.normalize import NORMALIZATIONS, check_channels, normalizer, parse_normalize


def test_presets_and_custom_values():
    assert parse_normalize("none") is None and parse_normalize(" CIFAR10 ") == NORMALIZATIONS["cifar10"]
    assert parse_normalize("0.5,0.25") == ((0.5,), (0.25,))
    assert parse_normalize("0.1,0.2,0.3,1,2,3") == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    for bad in ("imagnet", "0.5", "0.5,0", "1,2,3,4", "nan,1", "0.5,-1"):
        with pytest.raises(BdpruneError, match="bad --normalize"):
            parse_normalize(bad)


def test_normalizer_is_x_minus_mean_over_std_per_channel():
    x = torch.rand(4, 3, 5, 6)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    got = normalizer((mean, std), "cpu")(x)
    for c in range(3):
        assert torch.equal(got[:, c], (x[:, c] - torch.tensor(mean[c])) / torch.tensor(std[c]))
    one = normalizer(((0.5,), (0.25,)), "cpu")(x)  # one value applies to every channel
    assert torch.equal(one, (x - 0.5) / 0.25)
    assert normalizer(None, "cpu")(x) is x


def test_channel_count_must_fit():
    check_channels(((0.5,), (0.2,)), 3)
    check_channels(NORMALIZATIONS["imagenet"], 3)
    with pytest.raises(BdpruneError, match="3 means for 1-channel images"):
        check_channels(NORMALIZATIONS["imagenet"], 1)
