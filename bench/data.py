"""MNIST as tensors on the device: verified load, seeded stratified split, normalisation.

The training and test files are loaded by separate functions so that a study, which only ever
calls `load_train`, cannot open the test files even by accident.  Every file's uncompressed MD5 is
checked when it is loaded, against the canonical sums below (or a table a caller passes in).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NORMALIZATIONS = {"none": None, "half": (0.5, 0.5), "mnist": (0.1307, 0.3081)}
DOWNLOAD_DIR = Path(".data/mnist")  # the Makefile also uses it as MNIST_DIR once it exists


class DataError(Exception):
    """A missing, corrupt or unreadable data file; the message is the one line users see."""


@dataclass(frozen=True)
class Raw:
    """Decoded images (N, 28, 28) uint8 and labels (N,) int64, with the MD5 of each file read."""

    images: torch.Tensor
    labels: torch.Tensor
    md5: dict[str, str]


@dataclass(frozen=True)
class Split:
    """Train/validation tensors on one device, ready for index-based batching."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    md5: dict[str, str]
    split_hash: str


def _source_dir(files: tuple[str, str]) -> Path:
    """`MNIST_DIR` when set (offline mirror); otherwise download just `files` into `.data/mnist`.

    torchvision's MNIST dataset class would fetch and unpack all four files, test included, so
    only its mirror list and compressed-file checksums are used, with its own download helper.
    """
    if env := os.environ.get("MNIST_DIR"):
        path = Path(env)
        if not path.is_dir():
            raise DataError(f"MNIST_DIR={env!r} is not a directory")
        return path
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    root = DOWNLOAD_DIR
    for filename, md5 in MNIST.resources:
        if filename.removesuffix(".gz") not in files or (root / filename).is_file():
            continue
        errors = []
        for mirror in MNIST.mirrors:
            try:
                download_url(f"{mirror}{filename}", root, filename, md5)
                break
            except Exception as exc:  # noqa: BLE001 - report every mirror's failure in one line
                errors.append(f"{mirror}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        else:
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()  # leave no empty cache that would look like a mirror later
            raise DataError(f"could not download {filename} ({'; '.join(errors)}); set MNIST_DIR "
                            "to a folder holding the original MNIST .gz files")
    return root


def _read(directory: Path, name: str, md5: dict[str, str]) -> tuple[bytes, str]:
    """The uncompressed bytes of `name` (or `name.gz`), verified against `md5[name]`."""
    plain, packed = directory / name, directory / f"{name}.gz"
    if packed.is_file():
        path, opener = packed, gzip.open
    elif plain.is_file():
        path, opener = plain, open
    else:
        raise DataError(f"missing MNIST file {packed} (expected {name}.gz or {name})")
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"unreadable MNIST file {path}: {exc}") from None
    digest = hashlib.md5(data).hexdigest()
    if digest != md5[name]:
        raise DataError(f"corrupt MNIST file {path}: md5 {digest}, expected {md5[name]}")
    return data, digest


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    """Big-endian IDX: magic (0, 0, dtype 0x08, ndim), ndim uint32 sizes, then uint8 payload."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{name} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load(files: tuple[str, str], md5: dict[str, str] | None) -> Raw:
    md5 = md5 or MNIST_MD5
    directory = _source_dir(files)
    (img_bytes, img_md5), (lbl_bytes, lbl_md5) = (_read(directory, f, md5) for f in files)
    images, labels = _parse_idx(img_bytes, files[0]), _parse_idx(lbl_bytes, files[1])
    if len(images) != len(labels):
        raise DataError(f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)}")
    return Raw(
        torch.from_numpy(images.copy()),
        torch.from_numpy(labels.astype(np.int64)),
        {files[0]: img_md5, files[1]: lbl_md5},
    )


def load_train(md5: dict[str, str] | None = None) -> Raw:
    """The 60k training images: the only MNIST files a study ever opens."""
    return _load(TRAIN_FILES, md5)


def load_test(md5: dict[str, str] | None = None) -> Raw:
    """The held-out test images. Only finalist scoring and fixed recipes may call this."""
    return _load(TEST_FILES, md5)


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Seeded split keeping each class's share: returns sorted (train_idx, val_idx)."""
    if not 0 < val_size < len(labels):
        raise ValueError(f"val_size={val_size} must lie in 1..{len(labels) - 1}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    # Sorting a random permutation by label (stable) groups each class in random order; taking
    # every k-th element of that sequence then samples each class in proportion.
    grouped = order[torch.argsort(labels[order], stable=True)]
    picks = torch.linspace(0, len(labels) - 1, val_size).round().long()
    val_mask = torch.zeros(len(labels), dtype=torch.bool)
    val_mask[grouped[picks]] = True
    idx = torch.arange(len(labels))
    return idx[~val_mask], idx[val_mask]


def check_normalization(name: str) -> None:
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; valid: {', '.join(NORMALIZATIONS)}")


def to_inputs(images: torch.Tensor, normalization: str, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], normalised, on `device`, once."""
    check_normalization(normalization)
    x = images.to(device).unsqueeze(1).float().div_(255)
    if (stats := NORMALIZATIONS[normalization]) is not None:
        x.sub_(stats[0]).div_(stats[1])
    return x


def index_hash(idx: torch.Tensor) -> str:
    return hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest()[:16]


def train_val(
    raw: Raw,
    val_size: int,
    seed: int,
    normalization: str,
    device: torch.device,
    subset: int | None = None,
) -> Split:
    """Split the training images into train/validation and put both on `device`.

    `subset` keeps a seeded stratified sample of that many images first (smoke runs).
    """
    images, labels = raw.images, raw.labels
    if subset is not None and subset < len(labels):
        _, keep = stratified_split(labels, subset, seed)
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = stratified_split(labels, val_size, seed)
    x = to_inputs(images, normalization, device)
    y = labels.to(device)
    return Split(x[train_idx.to(device)], y[train_idx.to(device)], x[val_idx.to(device)],
                 y[val_idx.to(device)], raw.md5, index_hash(val_idx))
