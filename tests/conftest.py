"""Shared fixtures: tiny learnable IDX files written by the tests, and real MNIST if present."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data

REAL_MNIST = os.environ.get("MNIST_DIR") or str(
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k is noise plus a bright 6x6 patch at a place of its own: learnable in an epoch."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        r, c = 2 + 8 * (k // 4), 2 + 6 * (k % 4)
        images[i, r:r + 6, c:c + 6] = 255
    return images, labels


def write_mnist(directory: Path, n_train: int = 1200, n_test: int = 200) -> dict[str, str]:
    """Write the four .gz files; returns their uncompressed MD5 table."""
    directory.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        for name, arr in ((f"{prefix}-images-idx3-ubyte", images),
                          (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            md5[name] = hashlib.md5(raw).hexdigest()
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
    return md5


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch) -> Path:
    """MNIST_DIR pointing at tiny synthetic files whose sums the loader accepts."""
    directory = tmp_path / "mnist"
    monkeypatch.setattr(data, "MNIST_MD5", write_mnist(directory))
    monkeypatch.setenv("MNIST_DIR", str(directory))
    return directory


@pytest.fixture
def real_mnist(monkeypatch) -> Path:
    path = Path(REAL_MNIST)
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST copy at {path}; set MNIST_DIR to the four original .gz files")
    monkeypatch.setenv("MNIST_DIR", str(path))
    return path


@pytest.fixture
def tiny_split() -> data.Split:
    images, labels = synthetic_digits(600, 0)
    raw = data.Raw(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), {})
    return data.train_val(raw, 200, 0, "mnist", torch.device("cpu"))


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and on a busy machine far faster; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
