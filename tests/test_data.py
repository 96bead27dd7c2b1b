"""Tests for bdprune.data: ImageFolders decoded only where sampled, --image-size, mixed sizes and
modes; the draw is ImageSet.subset's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bdprune.data import ImageSet, check_fits, load_images, sample_indices
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


# --- the loaders and the scan step ------------------------------------------------------------

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
    tiny = tmp_path / "tiny" / "a"
    tiny.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny / "0.png")  # 4 rows: not to be taken for 4 channels
    assert load_images(tmp_path / "tiny").images.shape == (1, 3, 4, 4)
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
