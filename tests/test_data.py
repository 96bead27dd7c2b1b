"""bdprune.data: .npz layouts and value ranges read as N x C x H x W float in [0, 1], ImageFolder
labels by sorted class folder, and the deterministic sample draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bdprune.data import ImageSet, check_fits, load_images
from bdprune.errors import BdpruneError


def test_npz_layouts_and_dtypes_give_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, size=(5, 3, 5, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nchw, labels=np.arange(5))
    np.savez(tmp_path / "b.npz", x=nchw.transpose(0, 2, 3, 1), y=np.arange(5))  # NHWC, x/y names
    np.savez(tmp_path / "c.npz", images=nchw.astype(np.float32) / 255.0)  # float 0-1, no labels
    a, b, c = (load_images(tmp_path / f"{n}.npz") for n in "abc")
    expected = torch.from_numpy(nchw).float() / 255.0
    assert torch.equal(a.images, expected) and torch.equal(b.images, expected) and torch.allclose(c.images, expected)
    assert a.labels.tolist() == [0, 1, 2, 3, 4] and c.labels is None
    gray = load_images(_save(tmp_path / "g.npz", images=rng.integers(0, 256, size=(2, 7, 7), dtype=np.uint8)))
    assert gray.images.shape == (2, 1, 7, 7)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_image_folder_labels_follow_the_sorted_class_folders(tmp_path):
    for label, name in enumerate(("cat", "dog")):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * (label * 2 + i), np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_images(tmp_path)
    assert data.labels.tolist() == [0, 0, 1, 1] and data.images.shape == (4, 3, 8, 8)
    assert [round(float(v) * 255) for v in data.images[:, 0, 0, 0]] == [0, 40, 80, 120]


def test_subset_is_a_sorted_seeded_draw_and_says_when_there_are_too_few():
    data = ImageSet(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10), "d.npz")
    picked = data.subset(4, seed=7)
    idx = torch.randperm(10, generator=torch.Generator().manual_seed(7))[:4].sort().values
    assert torch.equal(picked.labels, idx) and torch.equal(picked.images.flatten(), idx.float())
    assert data.subset(None, 0) is data and data.subset(10, 0) is data
    more = data.subset(20, 0)
    assert len(more) == 10 and more.notes == ["d.npz holds 10 samples, fewer than --samples 20: using all 10"]


def test_check_fits_channels_and_labels():
    data = ImageSet(torch.zeros(3, 3, 2, 2), torch.tensor([0, 1, 9]), "d.npz")
    check_fits(data, 3, 10)
    with pytest.raises(BdpruneError, match="d.npz: images have 3 channel"):
        check_fits(data, 1)
    with pytest.raises(BdpruneError, match="d.npz: has label 9 but the model has 5 classes"):
        check_fits(data, 3, 5)
