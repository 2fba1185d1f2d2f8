"""Shared fixtures: tiny learnable IDX files written by the tests, and real MNIST if present."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cli, data, train

ROOT = Path(__file__).resolve().parents[1]
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


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip with a reason where torch sees no CUDA device, so `make test-gpu` on a
    CPU machine reports them skipped instead of failing in CUDA initialisation."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch sees no CUDA device (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


TINY_STUDY = """
import optuna
from bench.space import Space
from bench.study import Study

STUDY = Study(
    question="tiny test study", families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}},
    space=Space(batch_size=(64,), lr=(1e-3, 1e-2), epochs=EPOCHS, optimizers=("adam",),
                schedules=("constant",),
                arch_ranges={"mlp": {"depth": (1, 1), "width": (16, 32)},
                             "cnn": {"blocks": (1, 1), "channels": (4, 4), "convs": (1, 1),
                                     "hidden": (16, 16)}}),
    trials={"cpu": 8, "cuda": 8}, val_size=200, replicates={"cpu": 1, "cuda": 1},
    sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed),
    pruner=lambda max_epochs: optuna.pruners.NopPruner(),
)
"""


# Opt-in hooks for the processes a test starts (tiny_cli's sitecustomize runs this in every one,
# study command and workers alike), each switched on by an environment variable:
# - BENCH_TEST_LOG=<file>: a line `start <pid>` when the process starts, and `open <pid> <path>`
#   for every file of the MNIST test split it opens (an audit hook sees every open).
# - BENCH_TEST_BARRIER=<folder>:<n>: each process's first trial waits (up to 2 minutes) until n
#   processes have started one, so every one of them runs a trial, however slowly they start.
# - BENCH_TEST_KILL=<marker>:<k>: the process SIGKILLs itself right after the first epoch of its
#   k-th trial is reported (the trial is then RUNNING with one epoch in storage), writing its pid
#   to <marker> first; never where <marker> exists, so a rerun is not killed again.
CLI_HOOKS = """
import os
import sys
import time
from pathlib import Path

from bench import train

_log = os.environ.get("BENCH_TEST_LOG")
if _log:
    def _write(line, _log=_log):
        with open(_log, "a") as fh:
            fh.write(line + "\\n")

    def _audit(event, args, _write=_write):
        if event == "open" and args and "t10k" in str(args[0]):
            _write(f"open {os.getpid()} {args[0]}")

    _write(f"start {os.getpid()}")
    sys.addaudithook(_audit)

_barrier, _kill = os.environ.get("BENCH_TEST_BARRIER"), os.environ.get("BENCH_TEST_KILL")
if _barrier or _kill:
    _real_fit, _trials = train.fit, []

    def _fit(model, opt, sched, split, batch_size, epochs, seed, on_epoch=None, *args, **kwargs):
        _trials.append(os.getpid())
        if _barrier and len(_trials) == 1:
            folder, n = _barrier.rsplit(":", 1)
            Path(folder, str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(os.listdir(folder)) < int(n) and time.monotonic() < deadline:
                time.sleep(0.05)
        if _kill and len(_trials) == int(_kill.rsplit(":", 1)[1]):
            marker, inner = Path(_kill.rsplit(":", 1)[0]), on_epoch
            if not marker.exists():
                def on_epoch(epoch, metrics):
                    inner(epoch, metrics)  # the epoch is reported to storage first
                    marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), 9)
        return _real_fit(model, opt, sched, split, batch_size, epochs, seed, on_epoch, *args,
                         **kwargs)

    train.fit = _fit
"""


@dataclass(frozen=True)
class TinyCli:
    """`python -m bench` in real subprocesses, on tiny synthetic MNIST and a study named `tiny`
    (`site`: the folder on their PYTHONPATH, with the data, the study and sitecustomize.py)."""

    env: dict[str, str]
    results: Path
    site: Path

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bench", *args, f"RESULTS_DIR={self.results}"]


@pytest.fixture
def tiny_cli(tmp_path) -> TinyCli:
    """A sitecustomize.py on PYTHONPATH points every Python process the test starts, workers
    included, at the tiny files' checksums, at a studies folder holding only `tiny` (3 epochs a
    trial), and at a 1 s heartbeat with an 8 s grace period, so crash tests take seconds; it
    installs the CLI_HOOKS a test switches on in `env`."""
    site = tmp_path / "site"
    md5 = write_mnist(site / "mnist", n_train=1000)
    (site / "studies").mkdir()
    (site / "studies" / "tiny.py").write_text(TINY_STUDY.replace("EPOCHS", "(3, 3)"))
    (site / "sitecustomize.py").write_text(
        "from pathlib import Path\n"
        "from bench import cli, data, storage\n"
        f"data.MNIST_MD5 = {md5!r}\n"
        f"cli.STUDIES_DIR = Path({str(site / 'studies')!r})\n"
        "storage.HEARTBEAT_S, storage.GRACE_S = 1, 8\n"  # 8: a loaded CI box stays alive
        + CLI_HOOKS)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
           "MNIST_DIR": str(site / "mnist"), "OMP_NUM_THREADS": "1"}
    for key in ("BENCH_TEST_LOG", "BENCH_TEST_BARRIER", "BENCH_TEST_KILL"):
        env.pop(key, None)  # only where the test asks
    return TinyCli(env, tmp_path / "results", site)


@pytest.fixture
def study_file(tmp_path, monkeypatch):
    """write(name, (old, new), ...): the tiny study, edited, as studies/<name>.py for the CLI."""
    folder = tmp_path / "studies"
    folder.mkdir()
    monkeypatch.setattr(cli, "STUDIES_DIR", folder)

    def write(name: str, *edits: tuple[str, str]) -> None:
        text = TINY_STUDY.replace("EPOCHS", "(1, 1)")
        for old, new in edits:
            assert old in text
            text = text.replace(old, new)
        (folder / f"{name}.py").write_text(text)

    return write


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and on a busy machine far faster; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cuda_tiny_split(tiny_split) -> data.Split:
    """`tiny_split` moved to the GPU (for `gpu`-marked tests)."""
    cuda = train.resolve_device("cuda")
    return replace(tiny_split, **{k: getattr(tiny_split, k).to(cuda)
                                  for k in ("x_train", "y_train", "x_val", "y_val")})
