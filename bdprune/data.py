"""Read image data sets (``.npz``, ImageFolder directories, CIFAR-10 python batches) safely.

Every reader returns an :class:`ImageSet`: float32 images N x C x H x W in [0, 1] (not
normalized; normalization happens on the device, see :mod:`bdprune.normalize`) and int64 labels,
or ``None`` where the source has none.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import BdpruneError

IMAGE_KEYS = ("images", "x", "data", "X")
LABEL_KEYS = ("labels", "y", "targets", "Y")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (the second: an empty one)
NPY_MAGIC = b"\x93NUMPY"
NPZ_HINT = "pass an .npz with arrays 'images' and 'labels' (or 'x' and 'y'), e.g. np.savez(FILE, images=..., labels=...)"


@dataclass
class ImageSet:
    """Images (N x C x H x W float32 in [0, 1]) with optional labels, and where they came from.

    ``notes`` are things the user should hear about the data (e.g. fewer samples than asked for).
    ``resized`` is the ``(H, W)`` the images were brought to on request (``--image-size``), None
    when they are the source's own size. ``from_image_files``: decoded from picture files (an
    ImageFolder), so their channel count is a Pillow mode that may be converted for the model
    (:func:`fit_channels`).
    """

    images: Tensor
    labels: Tensor | None
    source: Path
    extra: dict[str, Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    resized: tuple[int, int] | None = None
    from_image_files: bool = False

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None, seed: int) -> "ImageSet":
        """``n`` samples drawn without replacement by a generator seeded with ``seed`` (all if None).

        Asking for more samples than there are uses all of them and adds a note saying so.
        """
        if n is not None and n > len(self):
            return replace(self, notes=[*self.notes, fewer_note(self.source, len(self), n)])
        idx = sample_indices(len(self), n, seed)
        if idx is None:
            return self
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        extra = None if self.extra is None else {k: v[idx] for k, v in self.extra.items()}
        return replace(self, images=self.images[idx], labels=pick(self.labels), extra=extra, notes=list(self.notes))


def sample_indices(total: int, n: int | None, seed: int) -> Tensor | None:
    """The sorted indices :meth:`ImageSet.subset` keeps of ``total`` items, or None for all of them."""
    if n is None or n >= total:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:n].sort().values


def fewer_note(source: Path, total: int, n: int) -> str:
    """The note for a source holding fewer samples than ``--samples`` asks for."""
    return f"{source} holds {total} samples, fewer than --samples {n}: using all {total}"


def load_images(
    path: str | Path, *, image_size: object = None, samples: int | None = None, seed: int = 0
) -> ImageSet:
    """Read ``path``: an ``.npz`` file, an ImageFolder directory or a CIFAR-10 batch file/directory.

    ``samples``: draw that many (all when None) exactly as ``load_images(path).subset(samples,
    seed)`` would, but an ImageFolder decodes only the files drawn, so a folder of 100,000
    pictures costs what the samples cost. ``image_size`` (``S``, ``"H,W"`` or a pair, see
    :func:`bdprune.imaging.parse_image_size`) resizes every image to cover it and cuts out the
    centre (bdprune.imaging); without it the images of a folder must all have one size.
    """
    from .imaging import parse_image_size

    path = Path(path)
    size = parse_image_size(image_size)
    try:
        if not path.exists():
            raise BdpruneError("no such data file or directory", path=path, hint="check --data")
        if path.is_dir():
            if any(path.glob("data_batch_*")) or (path / "test_batch").exists():
                data = _load_cifar_dir(path)
            else:
                data = _load_image_folder(path, size=size, samples=samples, seed=seed)
        elif path.name.startswith(("data_batch", "test_batch")):
            data = _cifar_batches([path], path)
        else:
            data = _load_npz(path)
    except OSError as exc:  # a name too long, an unreadable folder, an I/O error
        raise BdpruneError(f"cannot be read ({exc.strerror or exc})", path=path, hint="check --data") from None
    if not data.from_image_files:  # arrays: draw first, then resize only the samples
        data = resized(data.subset(samples, seed), size)
    _check_images(data)
    return data


def _load_npz(path: Path) -> ImageSet:
    try:
        with path.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
        # Only a zip archive goes to np.load: anything else would reach its .npy or pickle readers.
        if head.startswith(NPY_MAGIC):
            raise BdpruneError("is a single .npy array, not an .npz archive", path=path, hint=NPZ_HINT)
        if not head.startswith(ZIP_MAGIC):
            raise BdpruneError("is empty" if not head else "is not an .npz file (no zip signature)", path=path, hint=NPZ_HINT)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except BdpruneError:
        raise
    except PermissionError:
        raise BdpruneError("permission denied", path=path, hint="make the file readable") from None
    except Exception as exc:  # zipfile, numpy's header parser, zlib, MemoryError: all mean a damaged file
        text = str(exc).strip().splitlines()
        detail = text[0][:120] if text and text[0].strip() else type(exc).__name__
        raise BdpruneError(f"cannot be read as .npz data ({detail})", path=path, hint=NPZ_HINT) from None
    image_key = next((k for k in IMAGE_KEYS if k in arrays), None)
    if image_key is None:
        keys = sorted(arrays)
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        raise BdpruneError(
            f"has no image array (found keys: {shown or 'none'})",
            path=path,
            hint="name the arrays 'images' and 'labels' (or 'x' and 'y')",
        )
    images = _to_nchw_float(arrays[image_key], path)
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = _labels(arrays[label_key], len(images), path) if label_key else None
    extra = {}
    if "true_labels" in arrays:
        extra["true_labels"] = _labels(arrays["true_labels"], len(images), path)
    return ImageSet(images, labels, path, extra or None)


def _labels(array: np.ndarray, n: int, path: Path) -> Tensor:
    if array.ndim != 1 or len(array) != n:
        raise BdpruneError(f"has {array.shape} labels for {n} images", path=path, hint="give one integer label per image")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise BdpruneError("labels are not integers", path=path, hint="store class indices as integers")
    if n and np.abs(array.astype(np.float64)).max() >= 2**62:
        raise BdpruneError("has labels too large to be class indices", path=path, hint="labels are class indices 0..K-1")
    labels = torch.from_numpy(np.asarray(array).astype(np.int64))
    if n and labels.min() < 0:
        raise BdpruneError("has negative labels", path=path, hint="labels are class indices 0..K-1")
    return labels


def _to_nchw_float(array: np.ndarray, path: Path) -> Tensor:
    real = (np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)) or array.dtype == bool
    if array.dtype == object or not real:
        raise BdpruneError(f"images have dtype {array.dtype}", path=path, hint="store images as uint8 0-255 or float 0-1")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
            array = array.transpose(0, 3, 1, 2)
    else:
        raise BdpruneError(
            f"images have shape {array.shape}", path=path, hint="store images as N x H x W, N x H x W x C or N x C x H x W"
        )
    if array.shape[0] == 0:
        raise BdpruneError("holds no images", path=path, hint="pass a data file with at least one image")
    if array.dtype == np.uint8:
        images = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
    else:
        images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return images


def _load_image_folder(path: Path, *, size: tuple[int, int] | None, samples: int | None, seed: int) -> ImageSet:
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(classes):
        files += [(f, label) for f in sorted(class_dir.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise BdpruneError(
            "holds no images", path=path, hint="use one sub-folder per class with image files inside (ImageFolder layout)"
        )
    notes = [fewer_note(path, len(files), samples)] if samples is not None and samples > len(files) else []
    idx = sample_indices(len(files), samples, seed)
    if idx is not None:  # decode only the files drawn
        files = [files[i] for i in idx.tolist()]
    arrays = [_decode(file, size) for file, _ in files]
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        counts = {s: sum(a.shape[:2] == s for a in arrays) for s in shapes}
        shown = ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(counts.items(), key=lambda kv: -kv[1])[:4])
        more = f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
        raise BdpruneError(
            f"holds images of {len(shapes)} different sizes: {shown}{more}",
            path=path,
            hint="pass --image-size H[,W] to resize them (shorter side, then a centre crop), e.g. the model's input size",
        )
    if any(a.ndim == 3 for a in arrays):  # a greyscale picture among RGB ones becomes RGB, as convert("RGB") does
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    stacked = np.stack(arrays)  # N x H x W or N x H x W x 3 by construction: no guessing from the shape
    images = _to_nchw_float(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2), path)
    labels = torch.tensor([lab for _, lab in files]) if classes else None
    return ImageSet(images, labels, path, notes=notes, resized=size, from_image_files=True)


def _decode(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One picture as an H x W (greyscale) or H x W x 3 uint8 array, resized to ``size`` if given."""
    from PIL import Image

    from .imaging import resize_picture

    try:
        with Image.open(file) as img:
            picture = img.convert("RGB" if img.mode not in ("L", "1", "I;16") else "L")
            if size is not None:
                picture = resize_picture(picture, size)
            return np.asarray(picture)
    except Exception as exc:  # PIL raises many types (and DecompressionBombError) for bad files
        raise BdpruneError(f"cannot read image ({exc.__class__.__name__})", path=file, hint="remove or fix the file") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches: builtin containers and numpy arrays, nothing callable else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_dir(path: Path) -> ImageSet:
    batches = sorted(path.glob("data_batch_*")) or [path / "test_batch"]
    return _cifar_batches(batches, path)


def _cifar_batches(files: list[Path], source: Path) -> ImageSet:
    images, labels = [], []
    for file in files:
        try:
            with file.open("rb") as f:
                batch = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            images.append(data)
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except Exception as exc:
            raise BdpruneError(
                f"is not a CIFAR-10 python batch ({str(exc)[:100] or type(exc).__name__})",
                path=file,
                hint="pass the cifar-10-batches-py directory or one of its batch files",
            ) from None
    return ImageSet(torch.from_numpy(np.concatenate(images)).float().div_(255.0), torch.from_numpy(np.concatenate(labels)), source)


def _check_images(data: ImageSet) -> None:
    if not torch.isfinite(data.images).all():
        raise BdpruneError("images contain NaN or infinite values", path=data.source, hint="clean the data file")


def check_fits(data: ImageSet, in_channels: int | None, num_classes: int | None = None) -> None:
    """Raise when the images' channel count or labels cannot fit a model."""
    c = int(data.images.shape[1])
    if in_channels is not None and c != in_channels:
        raise BdpruneError(
            f"images have {c} channel(s) but the model takes {in_channels}",
            path=data.source,
            hint="pass data of the model's input size, or the right --arch",
        )
    if num_classes is not None and data.labels is not None and len(data.labels) and int(data.labels.max()) >= num_classes:
        raise BdpruneError(
            f"has label {int(data.labels.max())} but the model has {num_classes} classes",
            path=data.source,
            hint="check the labels or --num-classes",
        )


def resized(data: ImageSet, size: tuple[int, int] | None) -> ImageSet:
    """``data`` (arrays, not picture files) resized to ``size`` and marked as resized on request."""
    from .imaging import resize_images

    if size is None:
        return data
    return replace(data, images=resize_images(data.images, size), resized=size)


def fit_channels(data: ImageSet, channels: int | None) -> ImageSet:
    """``data`` with the channel count ``channels`` a model takes, where the images were decoded
    from picture files: RGB becomes L and L becomes RGB exactly as Pillow's ``convert`` does
    (a note says so). Arrays are returned unchanged: their channels are the data's own, and a
    mismatch stays an error (:func:`bdprune.data.check_fits`)."""
    have = int(data.images.shape[1])
    if channels is None or have == channels or not data.from_image_files or {have, channels} != {1, 3}:
        return data
    from .imaging import convert_mode

    mode = "L" if channels == 1 else "RGB"
    images = torch.stack([convert_mode(image, mode) for image in data.images])
    note = f"{data.source}: converted the {have}-channel images to {mode} ({channels} channel(s)) for the model, as PIL's convert({mode!r}) does"
    return replace(data, images=images, notes=[*data.notes, note])
