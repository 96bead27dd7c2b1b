"""bdprune.inputs: what a Python caller holds becomes the same ImageSet a data file gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bdprune.errors import BdpruneError
from bdprune.inputs import as_image_set


def test_tensor_array_pair_dataset_and_file_draw_the_same_samples(tmp_path):
    images = torch.rand(12, 1, 5, 5)
    labels = torch.arange(12) % 3
    np.savez(tmp_path / "d.npz", images=images.numpy(), labels=labels.numpy())
    forms = [
        as_image_set(images, labels, samples=5, seed=3),
        as_image_set(images.numpy(), labels.numpy(), samples=5, seed=3),
        as_image_set((images, labels), samples=5, seed=3),
        as_image_set(TensorDataset(images, labels), samples=5, seed=3),
        as_image_set(tmp_path / "d.npz", samples=5, seed=3),
    ]
    for data in forms:
        assert torch.equal(data.images, forms[0].images) and torch.equal(data.labels, forms[0].labels)


def test_a_loader_is_read_in_its_own_order_and_channel_last_arrays_are_turned():
    images = torch.rand(10, 1, 3, 3)
    loader = DataLoader(TensorDataset(images, torch.arange(10)), batch_size=4, shuffle=False)
    data = as_image_set(loader, samples=6, seed=0)
    assert torch.equal(data.images, images[:6]) and data.labels.tolist() == list(range(6))
    rgb = torch.rand(4, 3, 5, 6)
    nhwc = as_image_set(rgb.permute(0, 2, 3, 1).numpy(), samples=None, seed=0)  # the .npz rule: a last axis of 1, 3 or 4 is channels
    assert torch.equal(nhwc.images, rgb)


def test_refusals():
    with pytest.raises(BdpruneError, match="labels= goes with a tensor"):
        as_image_set(TensorDataset(torch.rand(2, 1, 2, 2)), torch.zeros(2), samples=None, seed=0)
    with pytest.raises(BdpruneError, match="samples must be at least 1"):
        as_image_set(torch.rand(2, 1, 2, 2), samples=0, seed=0)
    with pytest.raises(BdpruneError, match="cannot read images from a dict"):
        as_image_set({"images": 1}, samples=None, seed=0)
    with pytest.raises(BdpruneError, match="different shapes"):
        as_image_set([(torch.rand(1, 2, 2), 0), (torch.rand(1, 3, 3), 1)], samples=None, seed=0)
