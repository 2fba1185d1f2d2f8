"""Reproduce leaderboard entries: train each over seeds as its recipe does, store every run.

Writes results/leaderboard.parquet (one row per entry-seed, with provenance) and
results/leaderboard/epochs.parquet (one row per entry-seed-epoch); SAVE=1 adds state_dicts under
results/leaderboard/checkpoints/. The test split is read once, after a line in
results/leaderboard/test_access.jsonl, and each run that scores it logs another line first.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from torch import nn

from bench import data, leaderboard, models, provenance, store, train
from bench.leaderboard import Entry
from bench.tables import progress_bars


def inputs(entry: Entry, train_raw: data.Raw, test_raw: data.Raw | None,
           device: torch.device) -> tuple[data.Split, torch.Tensor, torch.Tensor]:
    """What `fit` trains on (in file order) and the tensors the recipe scores, on `device`.

    Only a stratified (study) split keeps validation images in the Split, so `fit` reports
    validation accuracy as a study's finalists did; other recipes are scored by `train_entry`.
    """
    if entry.split == "stratified":
        split = data.train_val(train_raw, entry.val_size, entry.split_seed, entry.normalization,
                               device)
        x_val, y_val = split.x_val, split.y_val
    else:
        x = data.to_inputs(train_raw.images, entry.normalization, device)
        y = train_raw.labels.to(device)
        cut = len(y) - entry.val_size  # the first `cut` images train, the rest validate
        x_val, y_val = x[cut:], y[cut:]
        split = data.Split(x[:cut], y[:cut], x[:0], y[:0], train_raw.md5,
                           data.index_hash(torch.arange(cut, len(y))))
    if entry.eval_on == "val":
        return split, x_val, y_val
    if test_raw is None:
        raise ValueError(f"entry {entry.id} is scored on test, but the test split was not read")
    x_test = data.to_inputs(test_raw.images, entry.normalization, device)
    return split, x_test, test_raw.labels.to(device)


def train_entry(entry: Entry, split: data.Split, x_eval: torch.Tensor, y_eval: torch.Tensor,
                seed: int, device: torch.device,
                on_epoch: train.OnEpoch | None = None) -> tuple[nn.Module, list[dict]]:
    """Train `entry` once with `seed`; each epoch's metrics gain `eval_acc` (NaN when unscored).

    The recipe's own evaluation runs after the epochs it scores, with its batch size and metric.
    """
    train.seed_everything(seed)
    model, opt, sched = train.build(entry.recipe, len(split.x_train), device)
    last, scores = entry.recipe.epochs, {}

    def score(epoch: int, metrics: dict[str, float]) -> bool:
        if entry.eval_every_epoch or epoch == last:
            scores[epoch] = train.evaluate(model, x_eval, y_eval, entry.eval_batch_size,
                                           batch_mean=entry.metric == "batch_mean")[1]
        return on_epoch(epoch, metrics) if on_epoch else False

    history = train.fit(model, opt, sched, split, entry.recipe.batch_size, last, seed, score,
                        shuffle=entry.shuffle, loss_fn=leaderboard.LOSSES[entry.loss],
                        precision=entry.recipe.precision)
    return model, [{**h, "eval_acc": scores.get(h["epoch"], math.nan)} for h in history]


def save_checkpoint(model: nn.Module, path: Path) -> None:
    store.atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))


def load_checkpoint(entry: Entry, path: Path, device: torch.device) -> nn.Module:
    """The entry's model with weights from `path`; `weights_only` refuses pickled code."""
    model = models.create_model(entry.recipe.arch, **entry.recipe.arch_kwargs).to(device)
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.eval()


ROW_COLUMNS = {
    "entry": "entry id",
    "seed": "torch seed of the run (init, shuffling, dropout)",
    "acc": "the recipe's score after the last epoch (eval_on split, metric)",
    "eval_on": "test or val",
    "metric": "accuracy, or batch_mean (mean of per-batch accuracies)",
    "best_acc": "best per-epoch score (information only: choosing it would select on test)",
    "best_epoch": "epoch of best_acc",
    "val_acc": "validation accuracy after the last epoch (stratified entries), else NaN",
    "train_loss": "mean training loss of the last epoch",
    "claim": "the claim as JSON: null, a number, or [low, high)",
    "claim_unit": "the claim's unit, as its source states it: accuracy or error",
    "epochs": "epochs trained",
    "wall_seconds": "training and scoring time of the run",
    "seconds_per_epoch": "wall_seconds / epochs",
    "params_count": "trainable parameters",
    "entry_hash": "sha256 prefix of the entry definition the run used",
    "checkpoint": "state_dict path when SAVE=1, else empty",
    "git_sha": "code version (-dirty when tracked files were modified)",
    "versions": "python and package versions",
    "device": "device name",
    "threads": "torch intra-op threads",
    "deterministic": "torch deterministic algorithms flag",
    "data_md5": "uncompressed MD5 of each MNIST file read (JSON)",
    "split_hash": "sha256 prefix of the held-out training indices",
    "datetime_start": "when the run started (UTC)",
}


def reproduce(entries: list[Entry], n_seeds: int, device: torch.device, results_dir: Path,
              save: bool, console: Console, threads: int | None = None) -> pd.DataFrame:
    """Run each entry for seeds 0..n_seeds-1; returns this call's rows.

    results/leaderboard.parquet keeps one row per entry-seed: an entry's old rows are replaced
    after its runs finish, so an interrupted call keeps every entry it completed. `threads` sets
    torch's intra-op threads (recorded with the provenance).
    """
    if threads:
        torch.set_num_threads(threads)
    out = results_dir / "leaderboard"
    train_raw = data.load_train()
    test_raw = None
    if tested := [e.id for e in entries if e.eval_on == "test"]:
        store.log_test_access(out, "bench.reproduce.reproduce", "read the test split to "
                              "score fixed leaderboard entries; nothing is selected from them",
                              {"entries": tested, "n_seeds": n_seeds})
        test_raw = data.load_test()
    prov = provenance.collect(device)
    rows = []
    with progress_bars(console, transient=False) as progress:
        runs = progress.add_task("runs (entries x seeds)", total=len(entries) * n_seeds)
        for entry in entries:
            split, x_eval, y_eval = inputs(entry, train_raw, test_raw, device)
            md5 = {**train_raw.md5, **(test_raw.md5 if entry.eval_on == "test" else {})}
            entry_rows, epochs = [], []
            for seed in range(n_seeds):
                if entry.eval_on == "test":
                    when = "after each epoch" if entry.eval_every_epoch else "after the last epoch"
                    store.log_test_access(out, "bench.reproduce.train_entry",
                                          f"score {entry.id} on test {when}, as its recipe does",
                                          entry.to_dict(), seed)
                task = progress.add_task(f"{entry.id} seed {seed}", total=entry.recipe.epochs)
                started, start = pd.Timestamp.now("UTC"), time.perf_counter()
                model, history = train_entry(entry, split, x_eval, y_eval, seed, device,
                                             lambda e, m, t=task: progress.advance(t) or False)
                wall = time.perf_counter() - start
                progress.remove_task(task)
                progress.advance(runs)
                ckpt = out / "checkpoints" / entry.id / f"seed{seed}.pt"
                if save:
                    save_checkpoint(model, ckpt)
                hist = pd.DataFrame(history)
                best = hist["eval_acc"].idxmax() if hist["eval_acc"].notna().any() else None
                row = {
                    "entry": entry.id, "seed": seed, "acc": history[-1]["eval_acc"],
                    "eval_on": entry.eval_on, "metric": entry.metric,
                    "best_acc": hist["eval_acc"].max(),
                    "best_epoch": int(hist["epoch"][best]) if best is not None else None,
                    "val_acc": history[-1]["val_acc"], "train_loss": history[-1]["train_loss"],
                    "claim": json.dumps(entry.claim), "claim_unit": entry.claim_unit,
                    "epochs": len(history),
                    "wall_seconds": wall, "seconds_per_epoch": wall / len(history),
                    "params_count": models.count_params(model), "entry_hash": entry.digest,
                    "checkpoint": str(ckpt) if save else "", **prov,
                    "data_md5": json.dumps(md5, sort_keys=True), "split_hash": split.split_hash,
                    "datetime_start": started,
                }
                entry_rows.append(row)
                epochs += [{"entry": entry.id, "seed": seed, **h} for h in history]
                console.print(f"{entry.id} seed {seed}: {row['acc']:.2%} {entry.eval_on} "
                              f"({entry.metric}), {row['seconds_per_epoch']:.2f} s/epoch")
            _merge(results_dir, entry.id, pd.DataFrame(entry_rows, columns=list(ROW_COLUMNS)),
                   pd.DataFrame(epochs))
            rows += entry_rows
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))


def _merge(results_dir: Path, entry_id: str, rows: pd.DataFrame, epochs: pd.DataFrame) -> None:
    """Replace `entry_id`'s rows in the leaderboard tables; other entries keep theirs."""
    for path, new in ((results_dir / "leaderboard.parquet", rows),
                      (results_dir / "leaderboard" / "epochs.parquet", epochs)):
        if path.is_file():
            old = pd.read_parquet(path)
            new = pd.concat([old[old["entry"] != entry_id], new], ignore_index=True)
        store.write_parquet(path, new)


def read_rows(results_dir: Path) -> pd.DataFrame:
    path = results_dir / "leaderboard.parquet"
    if not path.is_file():
        raise ValueError(f"no leaderboard results at {path}; run make reproduce first")
    return pd.read_parquet(path)
