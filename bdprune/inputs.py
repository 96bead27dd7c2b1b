"""Turn what a Python caller holds into an :class:`~bdprune.data.ImageSet`: a tensor or array
(optionally with labels), an ``(images, labels)`` pair, a torch ``Dataset``, a ``DataLoader``, an
``ImageSet`` or a path (read exactly as ``--data`` reads it).

Images follow the ``.npz`` rules: N x C x H x W (or N x H x W x C, or N x H x W), uint8 0-255 or
float, so a tensor and the same array saved with ``np.savez`` give the same samples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from torch import Tensor

from .data import ImageSet, _check_images, _labels, _to_nchw_float, load_images, resized, sample_indices
from .errors import BdpruneError
from .imaging import parse_image_size

DATA_HINT = "pass a tensor N x C x H x W, an (images, labels) pair, a Dataset, a DataLoader or a data file"


def as_image_set(data: Any, labels: Any = None, *, samples: int | None, seed: int, image_size: object = None) -> ImageSet:
    """``data`` as an ImageSet of at most ``samples`` images (all when None).

    Tensors, arrays, Datasets and files are sampled as ``--samples``/``--seed`` sample a file (the
    same draw); a DataLoader or an iterable Dataset is read in its own order until ``samples``
    images are in hand, so shuffle it yourself for a random draw. ``image_size`` resizes the
    samples as ``--image-size`` does (:mod:`bdprune.imaging`)."""
    size = parse_image_size(image_size)
    if samples is not None and samples < 1:
        raise BdpruneError(f"samples must be at least 1, got {samples}")
    if labels is not None and not isinstance(data, (Tensor, np.ndarray)):
        raise BdpruneError("labels= goes with a tensor or array of images", hint="a Dataset or DataLoader carries its own labels")
    if isinstance(data, (str, os.PathLike)):
        return load_images(data, samples=samples, seed=seed, image_size=size)
    return resized(_as_image_set(data, labels, samples=samples, seed=seed), size)


def _as_image_set(data: Any, labels: Any, *, samples: int | None, seed: int) -> ImageSet:
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, ImageSet):
        return data.subset(samples, seed)
    if isinstance(data, (Tensor, np.ndarray)):
        return _from_arrays(data, labels, Path("<tensor>")).subset(samples, seed)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (Tensor, np.ndarray)):
        return _from_arrays(data[0], data[1], Path("<tensor>")).subset(samples, seed)
    if isinstance(data, DataLoader):
        return _from_batches(iter(data), samples, Path("<DataLoader>"))
    if isinstance(data, IterableDataset):
        return _from_items(iter(data), samples, Path("<IterableDataset>"))
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (Mapping, str, bytes))):
        return _from_dataset(data, samples, seed, Path(f"<{type(data).__name__}>"))
    raise BdpruneError(f"cannot read images from a {type(data).__name__}", hint=DATA_HINT)


def _numpy(value: Any, source: Path, what: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().to("cpu").numpy()
    if isinstance(value, (int, np.integer)) and what == "labels":
        return np.asarray(value)
    if isinstance(value, np.ndarray) or (what == "labels" and isinstance(value, (list, tuple))):
        return np.asarray(value)
    if what == "images" and type(value).__module__.startswith("PIL."):
        array = np.asarray(value)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    raise BdpruneError(f"{what} of type {type(value).__name__} are not supported", path=source, hint=DATA_HINT)


def _from_arrays(images: Any, labels: Any, source: Path) -> ImageSet:
    array = _numpy(images, source, "images")
    tensor = _to_nchw_float(array, source)
    label_tensor = None if labels is None else _labels(_numpy(labels, source, "labels"), len(tensor), source)
    data = ImageSet(tensor, label_tensor, source)
    _check_images(data)
    return data


def _split(item: Any) -> tuple[Any, Any]:
    """(image(s), label(s) or None) from a Dataset item or a DataLoader batch."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise BdpruneError("an item of the data is empty", hint=DATA_HINT)
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _from_dataset(dataset: Any, samples: int | None, seed: int, source: Path) -> ImageSet:
    """Fetch only the items ImageSet.subset would keep, so a large Dataset is never read whole."""
    n = len(dataset)
    if n == 0:
        raise BdpruneError("holds no images", path=source, hint=DATA_HINT)
    drawn = sample_indices(n, samples, seed)
    idx = list(range(n)) if drawn is None else drawn.tolist()
    data = _from_items((dataset[i] for i in idx), None, source)
    if samples is not None and samples > n:
        data.notes.append(f"{source} holds {n} samples, fewer than samples={samples}: using all {n}")
    return data


def _from_items(items: Iterable[Any], samples: int | None, source: Path) -> ImageSet:
    """Single items (image, label) or images, as a batch of one each."""
    batches = ((image, None if label is None else _numpy(label, source, "labels").reshape(1)) for image, label in map(_split, items))
    return _from_batches(((_numpy(image, source, "images")[None], label) for image, label in batches), samples, source)


def _from_batches(batches: Iterable[Any], samples: int | None, source: Path) -> ImageSet:
    """Batches (images, labels) or images, concatenated until ``samples`` images are in hand."""
    images, labels, have = [], [], 0
    for batch in batches:
        if samples is not None and have >= samples:
            break
        image, label = _split(batch)
        array = _numpy(image, source, "images")
        take = len(array) if samples is None else min(len(array), samples - have)
        images.append(array[:take])
        labels.append(None if label is None else _numpy(label, source, "labels").reshape(-1)[:take])
        have += take
    if not images:
        raise BdpruneError("holds no images", path=source, hint=DATA_HINT)
    if any(lab is None for lab in labels) and not all(lab is None for lab in labels):
        raise BdpruneError("some items carry labels and some do not", path=source, hint=DATA_HINT)
    shapes = {a.shape[1:] for a in images}
    if len(shapes) > 1:
        raise BdpruneError(f"holds images of {len(shapes)} different shapes", path=source, hint="resize them to the model's input size")
    return _from_arrays(np.concatenate(images), None if labels[0] is None else np.concatenate(labels), source)
