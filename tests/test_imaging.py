"""Tests for bdprune.imaging: --image-size parsing, resize-and-crop (Pillow for picture files,
torch for arrays) and channel conversion as Pillow's convert does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bdprune.data import ImageSet
from bdprune.errors import BdpruneError
from bdprune.data import fit_channels
from bdprune.imaging import cover_size, crop_origin, parse_image_size, resize_images, resize_picture


@pytest.mark.parametrize(
    "value, expected",
    [("32", (32, 32)), ("224,192", (224, 192)), ("64x48", (64, 48)), (" 28 , 28 ", (28, 28)), (96, (96, 96)), ((8, 12), (8, 12)), (None, None)],
)
def test_parse_image_size(value, expected):
    assert parse_image_size(value) == expected


@pytest.mark.parametrize("value", ["0", "-3", "32,0", "1,2,3", "big", "", "99999", True, 2.5, [1.5, 2]])
def test_parse_image_size_refuses_what_is_not_one_or_two_sides(value):
    with pytest.raises(BdpruneError, match="--image-size"):
        parse_image_size(value)


@pytest.mark.parametrize(
    "shape, size, scaled",
    [((100, 150), (64, 64), (64, 96)), ((150, 100), (64, 64), (96, 64)), ((32, 32), (64, 64), (64, 64)),
     ((100, 150), (50, 100), (67, 100)), ((480, 640), (224, 224), (224, 299))],
)
def test_cover_size_makes_the_shorter_side_fit(shape, size, scaled):
    assert cover_size(*shape, size) == scaled
    assert scaled[0] >= size[0] and scaled[1] >= size[1]


def test_crop_origin_is_the_centre():
    assert crop_origin(64, 96, (64, 64)) == (0, 16)
    assert crop_origin(67, 100, (50, 100)) == (8, 0)


def test_resize_picture_is_pillow_bilinear_then_centre_crop():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8))
    got = np.asarray(resize_picture(picture, (20, 20)))
    by_hand = np.asarray(picture.resize((30, 20), Image.BILINEAR))[:, 5:25]
    assert got.shape == (20, 20, 3) and np.array_equal(got, by_hand)
    assert resize_picture(picture, (30, 45)) is picture  # already that size: untouched


def test_resize_images_is_antialiased_bilinear_interpolation_then_crop():
    images = torch.rand(5, 3, 40, 60, generator=torch.Generator().manual_seed(0))
    got = resize_images(images, (16, 16), chunk=2)
    by_hand = torch.nn.functional.interpolate(images, size=(16, 24), mode="bilinear", antialias=True, align_corners=False)[..., :, 4:20]
    assert got.shape == (5, 3, 16, 16)
    torch.testing.assert_close(got, by_hand, rtol=0, atol=0)
    assert resize_images(images, (40, 60)) is images


def _set(images: torch.Tensor, from_files: bool) -> ImageSet:
    return ImageSet(images, None, Path("pictures"), from_image_files=from_files)


def test_fit_channels_converts_pictures_exactly_as_pillow():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    data = _set(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255, True)
    grey = fit_channels(data, 1)
    expected = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb])
    assert grey.images.shape == (4, 1, 9, 7)
    assert torch.equal(grey.images[:, 0], torch.from_numpy(expected).float() / 255)
    assert "converted the 3-channel images to L" in grey.notes[-1]
    back = fit_channels(grey, 3)
    assert back.images.shape == (4, 3, 9, 7) and all(torch.equal(back.images[:, c], grey.images[:, 0]) for c in range(3))


def test_fit_channels_leaves_arrays_and_matching_sets_alone():
    arrays = _set(torch.rand(2, 3, 4, 4), False)
    assert fit_channels(arrays, 1) is arrays
    pictures = _set(torch.rand(2, 3, 4, 4), True)
    assert fit_channels(pictures, 3) is pictures and fit_channels(pictures, None) is pictures
    assert fit_channels(pictures, 4) is pictures  # no Pillow conversion to 4 channels: check_fits decides
