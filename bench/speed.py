"""`make bench`: seconds per epoch of the tutorial pipeline and of the harness, side by side.

The tutorial pipeline is the one the PyTorch MNIST example and the Optuna PyTorch example teach:
torchvision's MNIST dataset with ToTensor + Normalize run per image, a shuffled DataLoader (on
CUDA with one worker and pinned memory, as the PyTorch example sets them), an eager step per
batch, and validation in batches of 1000 with a `.item()` per batch. The harness's path is
`train.fit`: the images sit on the device as one tensor, batches are index slices of a seeded
permutation, the host syncs once per epoch, and on CUDA each step is a captured CUDA graph.
All pipelines train the same registered model from the same seed, with the same optimizer, batch
size, epochs and train/validation split, so their validation accuracies are comparable.

Each row runs in a fresh Python process (`python -m bench.speed`, a job on stdin, the result on
stdout), so one row's threads, allocator settings and caches cannot help or hurt another; the rows
of a model run back to back, so they see the same machine load, recorded with each row.

Like with like: the default rows (tutorial, plain, fast) all run at the harness's thread count
(`host.default_threads`), and the table shows each row's threads and precision; a speed-up is
only computed against a row of the same model at the same thread count (the `fast-torch-threads`
ablation, at torch's default, gets none). On a 2-core machine `plain` once ran torch's 2 threads
against `fast`'s 1, which made the MLP's `fast` row look slower than `plain` (issue 21).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from bench import data, host, models, optim, provenance, store, train
from bench import fast as graphs

TUTORIAL_ROOT = Path(".data/tutorial")  # torchvision's layout: <root>/MNIST/raw/<files>
NORMALIZE = data.NORMALIZATIONS["mnist"]
VAL_BATCH = 1000  # the PyTorch MNIST example's test batch


@dataclass(frozen=True)
class Case:
    """A model with the optimizer and batch size of its leaderboard recipe."""

    arch: str
    optimizer: str
    lr: float
    batch_size: int = 64


CASES = {
    "mlp-400-200-100": Case("mlp-400-200-100", "sgd", 0.1),  # recipe mlp-400-200-100-sgd
    "cnn-conv32": Case("cnn-conv32", "adam", 1e-3),  # recipe cnn-conv32-adam (Adam defaults)
}


@dataclass(frozen=True)
class Pipeline:
    """One row's recipe: which data path, and which of the harness's speed settings are on."""

    doc: str
    tutorial: bool = False  # torchvision + DataLoader + eager loop instead of `train.fit`
    fast: bool = True  # train.build/fit fast paths: CUDA graphs; channels-last convs on a CPU
    threads: bool = True  # host.default_threads() instead of torch's default
    malloc: bool = True  # host.keep_freed_memory()
    precision: str = "auto"  # train.resolve_precision: bf16 autocast on a CPU that has it


PIPELINES = {
    "tutorial": Pipeline("torchvision MNIST, ToTensor+Normalize, DataLoader, eager loop; "
                         "the host settings of fast", tutorial=True),
    "plain": Pipeline("harness, eager, fp32, glibc's default allocator (before tuning), at the "
                      "same threads as the other rows", fast=False, malloc=False,
                      precision="fp32"),
    "fast": Pipeline("harness: CUDA graph per step on CUDA; on a CPU channels-last convs, bf16 "
                     "autocast where the CPU has bf16 and the model's kind gains from it "
                     "(train.resolve_precision), host threads and allocator settings"),
    # Ablations of fast, one setting off each (make bench ROWS=...):
    "fast-nchw": Pipeline("fast without its train.build/fit paths (no channels-last, no graphs)",
                          fast=False),
    "fast-torch-threads": Pipeline("fast with torch's default thread count", threads=False),
    "fast-glibc-malloc": Pipeline("fast with glibc's default malloc thresholds", malloc=False),
    "fast-fp32": Pipeline("fast in float32 throughout", precision="fp32"),
}
ROWS = ("tutorial", "plain", "fast")


@dataclass(frozen=True)
class Config:
    device: str
    epochs: int
    models: tuple[str, ...]
    rows: tuple[str, ...]
    seed: int
    results_dir: Path

    @property
    def out(self) -> Path:
        return self.results_dir / "bench"


def val_size(n: int) -> int:
    """MNIST's 10k of 60k: a sixth of the training images (tests run on a few hundred)."""
    return n // 6


# --- the tutorial pipeline ---------------------------------------------------------------------


def _idx_bytes(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def tutorial_root(raw: data.Raw, root: Path = TUTORIAL_ROOT) -> Path:
    """Write the training files, uncompressed, where torchvision's MNIST class looks for them.

    They are rebuilt from the verified images and must hash to what was read, so the tutorial
    trains on byte-identical files; the test files are never written.
    """
    for name, array in zip(data.TRAIN_FILES, (raw.images, raw.labels), strict=True):
        payload = _idx_bytes(array)
        if hashlib.md5(payload).hexdigest() != raw.md5[name]:
            raise data.DataError(f"rebuilt {name} does not match the file read")
        path = root / "MNIST" / "raw" / name
        if not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != raw.md5[name]:
            store.atomic_write(path, lambda tmp, payload=payload: tmp.write_bytes(payload))
    return root


def _train_only_mnist(root: Path, transform):
    from torchvision.datasets import MNIST

    class TrainOnlyMNIST(MNIST):
        """torchvision's MNIST, but its existence check asks only for the training files.

        The stock check also wants the test files, which a benchmark must not open (DESIGN.md);
        loading, `__getitem__` (a PIL image per sample) and the transforms are torchvision's own.
        """

        @property
        def raw_folder(self) -> str:
            return os.path.join(self.root, "MNIST", "raw")

        def _check_exists(self) -> bool:
            return all(os.path.isfile(os.path.join(self.raw_folder, f)) for f in data.TRAIN_FILES)

    return TrainOnlyMNIST(str(root), train=True, transform=transform)


def _tutorial(case: Case, device: torch.device, epochs: int, seed: int,
              root: Path) -> tuple[list[dict], str]:
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    dataset = _train_only_mnist(root, transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((NORMALIZE[0],), (NORMALIZE[1],))]))
    train_idx, val_idx = data.stratified_split(dataset.targets, val_size(len(dataset)), seed)
    extra = ({"num_workers": 1, "persistent_workers": True, "pin_memory": True}
             if device.type == "cuda" else {})
    train_loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=case.batch_size,
                              shuffle=True, generator=torch.Generator().manual_seed(seed), **extra)
    val_loader = DataLoader(Subset(dataset, val_idx.tolist()), batch_size=VAL_BATCH, **extra)
    torch.manual_seed(seed)
    model = models.create_model(case.arch).to(device)
    optimizer = optim.create_optimizer(case.optimizer, model.parameters(), case.lr)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        val_loss = correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device), y.to(device)
                out = model(x)
                val_loss += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
        history.append({"epoch": epoch, "val_loss": val_loss / len(val_idx),
                        "val_acc": correct / len(val_idx), "seconds": time.perf_counter() - start})
    return history, data.index_hash(val_idx)


# --- the harness -------------------------------------------------------------------------------


def _harness(case: Case, device: torch.device, epochs: int, seed: int, fast: bool,
             precision: str, md5: dict[str, str]) -> tuple[list[dict], str, bool]:
    """`train.fit` as a study runs it; also says whether the steps really were CUDA graphs."""
    raw = data.load_train(md5)  # the files the parent verified, byte for byte
    split = data.train_val(raw, val_size(len(raw.labels)), seed, "mnist", device)
    recipe = train.Recipe(arch=case.arch, lr=case.lr, batch_size=case.batch_size, epochs=epochs,
                          optimizer=case.optimizer, precision=precision)
    train.seed_everything(seed)
    model, opt, sched = train.build(recipe, len(split.x_train), device, fast=fast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", graphs.CaptureFailed)
        history = train.fit(model, opt, sched, split, case.batch_size, epochs, seed,
                            graph=None if fast else False, precision=precision)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    failed = any(issubclass(w.category, graphs.CaptureFailed) for w in caught)
    return history, split.split_hash, fast and device.type == "cuda" and not failed


def run_row(job: dict) -> dict:
    """One row of the table, in this process: the child side of `run`."""
    case, pipeline = CASES[job["model"]], PIPELINES[job["pipeline"]]
    device = torch.device(job["device"])
    settings = host.tune(threads=pipeline.threads, malloc=pipeline.malloc)
    load_before = os.getloadavg()[0]
    precision = "fp32" if pipeline.tutorial else train.resolve_precision(
        pipeline.precision, device, models.get_model(case.arch).kind)
    if pipeline.tutorial:
        history, split_hash = _tutorial(case, device, job["epochs"], job["seed"],
                                        Path(job["root"]))
        graphed = False
    else:
        history, split_hash, graphed = _harness(case, device, job["epochs"], job["seed"],
                                                pipeline.fast, precision, job["md5"])
    seconds = [h["seconds"] for h in history]
    return {
        "model": job["model"], "pipeline": job["pipeline"], "description": pipeline.doc,
        "batch_size": case.batch_size, "optimizer": case.optimizer, "lr": case.lr,
        "epochs": job["epochs"], "seconds_per_epoch": sum(seconds) / len(seconds),
        "epoch_seconds": json.dumps([round(s, 4) for s in seconds]),
        "final_val_acc": history[-1]["val_acc"], "final_val_loss": history[-1]["val_loss"],
        "cuda_graph": graphed, "precision": precision, "malloc_keep": settings["malloc_keep"],
        "channels_last": pipeline.fast and not pipeline.tutorial
        and train.wants_channels_last(models.create_model(case.arch), device),
        "seed": job["seed"], "split_hash": split_hash, "data_md5": json.dumps(job["md5"]),
        "load_before": load_before, "load_after": os.getloadavg()[0],
        **provenance.collect(device),
    }


# --- the parent: one process per row, then the table and the store ------------------------------


def _spawn(job: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.speed"], input=json.dumps(job),
                          capture_output=True, text=True, check=False, env=host.child_env())
    for line in proc.stderr.splitlines():
        if line.startswith("warning: "):
            print(line, file=sys.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"bench row {job['model']}/{job['pipeline']} failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> one table with each row's speed-up over its model's first row (the tutorial's),
    like with like only: a row at another thread count than that first row gets none (NaN)."""
    df = pd.DataFrame(rows)
    first = df.groupby("model", sort=False)[["seconds_per_epoch", "threads"]].first()
    same = df["threads"] == df["model"].map(first["threads"])
    df["speedup"] = (df["model"].map(first["seconds_per_epoch"])
                     / df["seconds_per_epoch"]).where(same)
    return df


def table(df: pd.DataFrame) -> Table:
    first = df.iloc[0]
    out = Table(title=f"seconds per epoch on {first['device']}, {first['epochs']} epochs, "
                      f"batch {first['batch_size']}",
                caption=f"vs {first['pipeline']}: rows of one model at the same threads only")
    for col in ("model", "pipeline", "threads", "precision", "s/epoch", "val acc",
                f"vs {first['pipeline']}"):
        out.add_column(col, justify="left" if col in ("model", "pipeline") else "right")
    for r in df.itertuples():
        out.add_row(r.model, r.pipeline + (" (graph)" if r.cuda_graph else ""), str(r.threads),
                    r.precision, f"{r.seconds_per_epoch:.2f}", f"{r.final_val_acc:.4f}",
                    "—" if pd.isna(r.speedup) else f"{r.speedup:.1f}x")
    return out


def run(cfg: Config, console: Console) -> Path:
    """All rows, side by side; writes results/bench/<UTC time>-<device>.parquet atomically."""
    device = train.resolve_device(cfg.device)
    started = datetime.now(timezone.utc)
    raw = data.load_train()
    root = tutorial_root(raw).resolve()
    rows = []
    for model in cfg.models:
        for pipeline in cfg.rows:
            job = {"model": model, "pipeline": pipeline, "device": device.type,
                   "epochs": cfg.epochs, "seed": cfg.seed, "root": str(root), "md5": raw.md5}
            row = _spawn(job)
            console.print(f"{model:>16} {pipeline:>18}: {row['seconds_per_epoch']:.2f} s/epoch, "
                          f"val acc {row['final_val_acc']:.4f}, {row['threads']} thread(s), "
                          f"{row['precision']}, load {row['load_before']:.1f}")
            rows.append(row)
    df = frame(rows)
    df["started"] = started.isoformat(timespec="seconds")
    path = cfg.out / f"{started:%Y%m%dT%H%M%SZ}-{device.type}.parquet"
    store.write_parquet(path, df)
    console.print(table(df))
    for name in cfg.rows:
        console.print(f"{name}: {PIPELINES[name].doc}")
    return path


if __name__ == "__main__":
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    print(json.dumps(run_row(json.loads(sys.stdin.read()))))
