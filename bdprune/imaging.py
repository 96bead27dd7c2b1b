"""Bring images to the size and channel count a model takes: ``--image-size H[,W]`` and the
channel conversion of decoded picture files.

Resizing covers the target and cuts out its centre: the image is scaled (bilinear, antialiased)
by the smallest factor that makes it at least H x W, so that with one size S its shorter side
becomes S (torchvision's ``Resize(S)`` then ``CenterCrop(S)``), and the centre H x W is kept.
Picture files are resized by Pillow on their 8-bit pixels (``Image.resize``, BILINEAR); arrays
(``.npz``, CIFAR batches, tensors) by ``torch.nn.functional.interpolate`` (bilinear,
``antialias=True``, ``align_corners=False``) on their float values. An image already H x W is
left untouched.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import BdpruneError

MAX_SIDE = 8192
SIZE_HINT = "use --image-size H or H,W in pixels, e.g. 32 or 224,224"


def parse_image_size(value: object) -> tuple[int, int] | None:
    """``--image-size`` as ``(H, W)``: ``"S"``, ``"H,W"`` (also ``HxW``), an int or a pair; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.replace("x", ",").replace("X", ",").split(",")
        try:
            sides = [int(p.strip()) for p in parts]
        except ValueError:
            raise BdpruneError(f"bad --image-size {value!r}", hint=SIZE_HINT) from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        sides = [int(value)]
    elif isinstance(value, Sequence) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        sides = [int(v) for v in value]
    else:
        raise BdpruneError(f"bad --image-size {value!r}", hint=SIZE_HINT)
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or not all(1 <= s <= MAX_SIDE for s in sides):
        raise BdpruneError(f"bad --image-size {value!r}: one or two sides of 1 to {MAX_SIDE} pixels", hint=SIZE_HINT)
    return sides[0], sides[1]


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) an image of ``height`` x ``width`` is scaled to before the centre
    crop: the smallest scaling that covers ``size``, rounded, never below it."""
    target_h, target_w = size
    scale = max(target_h / height, target_w / width)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def crop_origin(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the centre ``size`` window of a ``height`` x ``width`` image (torchvision's rounding)."""
    return round((height - size[0]) / 2.0), round((width - size[1]) / 2.0)


def resize_picture(image, size: tuple[int, int]):
    """A PIL image resized to cover ``size`` (bilinear) and centre-cropped to it."""
    from PIL import Image

    width, height = image.size
    if (height, width) == tuple(size):
        return image
    new_h, new_w = cover_size(height, width, size)
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    scaled = image.resize((new_w, new_h), bilinear)
    top, left = crop_origin(new_h, new_w, size)
    return scaled.crop((left, top, left + size[1], top + size[0]))


def resize_images(images: Tensor, size: tuple[int, int], *, chunk: int = 256) -> Tensor:
    """N x C x H x W float images resized to cover ``size`` (bilinear, antialiased) and centre-cropped."""
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if (height, width) == tuple(size):
        return images
    new_h, new_w = cover_size(height, width, size)
    top, left = crop_origin(new_h, new_w, size)
    out = []
    for start in range(0, len(images), chunk):  # bounded memory for large sets
        scaled = torch.nn.functional.interpolate(
            images[start : start + chunk].float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(scaled[..., top : top + size[0], left : left + size[1]].contiguous())
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], *size))


def convert_mode(image: Tensor, mode: str) -> Tensor:
    """One C x H x W image in [0, 1] converted to the Pillow ``mode`` (``L`` or ``RGB``) on its 8-bit pixels."""
    from PIL import Image

    pixels = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    out = np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert(mode))
    tensor = torch.from_numpy(np.array(out)).float().div_(255.0)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()
