"""Tests for bdprune.data: ImageFolders decoded only where sampled, --image-size, mixed sizes and
modes; the draw is ImageSet.subset's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bdprune.data import ImageSet, load_images, sample_indices
from bdprune.errors import BdpruneError
from bdprune.scan import load_samples


def write_folder(root: Path, sizes, *, mode: str = "RGB", classes: int = 3, seed: int = 0) -> Path:
    """An ImageFolder: image i of ``sizes`` (H, W) in class folder i % classes, random pixels."""
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = (h, w) if mode == "L" else (h, w, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i:03d}.png")
    return root


def decode_all_then_subset(root: Path, n: int | None, seed: int) -> ImageSet:
    """The reference: every file decoded, then ImageSet.subset (what load_samples did before)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(f, label) for label, c in enumerate(classes) for f in sorted(c.rglob("*.png"))]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
    return ImageSet(images, torch.tensor([lab for _, lab in files]), root).subset(n, seed)


@pytest.mark.parametrize("n, seed", [(5, 0), (5, 3), (12, 1), (30, 0), (None, 0)])
def test_folder_sampling_matches_decoding_everything(tmp_path, n, seed):
    root = write_folder(tmp_path / "imgs", [(8, 8)] * 12)
    got, expected = load_samples(root, n, seed), decode_all_then_subset(root, n, seed)
    assert torch.equal(got.images, expected.images) and torch.equal(got.labels, expected.labels)
    assert got.notes == expected.notes


def test_only_the_files_drawn_are_decoded(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs", [(8, 8)] * 40)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(Path(path).name) or real_open(path, *a, **k))
    data = load_samples(root, 6, 0)
    assert len(data) == 6 and len(opened) == 6
    order = [f.name for c in sorted(root.iterdir()) for f in sorted(c.iterdir())]  # ImageFolder order
    assert opened == [order[i] for i in sample_indices(40, 6, 0).tolist()]


def test_a_broken_file_outside_the_sample_costs_nothing(tmp_path):
    root = write_folder(tmp_path / "imgs", [(8, 8)] * 20)
    drawn = set(sample_indices(20, 4, 0).tolist())
    order = [f for c in sorted(root.iterdir()) for f in sorted(c.iterdir())]  # ImageFolder order
    victim = next(f for i, f in enumerate(order) if i not in drawn)
    victim.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert len(load_samples(root, 4, 0)) == 4
    with pytest.raises(BdpruneError, match="cannot read image"):
        load_images(root)


def test_mixed_sizes_name_the_sizes_and_suggest_image_size(tmp_path):
    root = write_folder(tmp_path / "imgs", [(32, 32)] * 3 + [(28, 28)] * 2 + [(64, 48)])
    with pytest.raises(BdpruneError) as err:
        load_images(root)
    message = str(err.value)
    assert message.startswith(str(root))
    assert "3 different sizes: 32x32 (3), 28x28 (2), 64x48 (1)" in message and "--image-size" in message


def test_image_size_resizes_a_folder_with_pillow(tmp_path):
    root = write_folder(tmp_path / "imgs", [(32, 32), (28, 28), (64, 48)], classes=1)
    data = load_images(root, image_size="24")
    assert data.images.shape == (3, 3, 24, 24) and data.resized == (24, 24)
    big = Image.open(sorted((root / "class0").iterdir())[2]).convert("RGB")  # 64x48: scaled to 32x24, rows 4..27 kept
    expected = np.array(big.resize((24, 32), Image.BILINEAR))[4:28]
    assert torch.equal(data.images[2], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_a_greyscale_picture_among_rgb_ones_becomes_rgb(tmp_path):
    root = write_folder(tmp_path / "imgs", [(8, 8)] * 3, classes=1)
    grey = np.random.default_rng(5).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(grey, "L").save(root / "class0" / "img999.png")
    data = load_images(root)
    assert data.images.shape == (4, 3, 8, 8) and data.from_image_files
    expected = np.array(Image.fromarray(grey, "L").convert("RGB"))
    assert torch.equal(data.images[3], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_an_all_greyscale_folder_stays_one_channel(tmp_path):
    root = write_folder(tmp_path / "imgs", [(8, 8)] * 4, mode="L")
    assert load_images(root).images.shape == (4, 1, 8, 8)


def test_npz_is_sampled_then_resized_with_torch(tmp_path):
    images = np.random.default_rng(2).random((10, 3, 20, 30), dtype=np.float32)
    path = tmp_path / "x.npz"
    np.savez(path, images=images, labels=np.arange(10))
    data = load_samples(path, 4, 7, image_size=(10, 10))
    idx = sample_indices(10, 4, 7)
    expected = torch.nn.functional.interpolate(torch.from_numpy(images)[idx], size=(10, 15), mode="bilinear", antialias=True)[..., 2:12]
    torch.testing.assert_close(data.images, expected, rtol=0, atol=0)
    assert torch.equal(data.labels, idx) and data.resized == (10, 10) and not data.from_image_files


def test_without_image_size_nothing_is_resized(tmp_path):
    path = tmp_path / "x.npz"
    images = np.random.default_rng(3).random((6, 1, 8, 8), dtype=np.float32)
    np.savez(path, images=images)
    data = load_samples(path, None, 0)
    assert data.resized is None and torch.equal(data.images, torch.from_numpy(images))
