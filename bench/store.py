"""The results store: Parquet tables under results/<name>/, one documented schema, atomic writes.

The schema below is the contract the report and later tools read; README.md documents it. Columns
named `param_<name>` (Optuna's flattened trial parameters) follow the fixed ones and vary by study.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

TRIAL_COLUMNS = {
    "family": "the study's family (a value of its scientific parameter); one Optuna sub-study "
              "each",
    "replicate": "which run of the whole study (0, 1, ...): study seed SEED + replicate, its own "
                 "split, samplers and trial seeds; one Optuna sub-study per (replicate, family)",
    "number": "trial number within the (replicate, family) sub-study",
    "state": "COMPLETE, PRUNED, FAIL or RUNNING",
    "arch": "registered model name",
    "value": "objective: validation accuracy after the last epoch run",
    "best_val_acc": "best validation accuracy over the epochs run",
    "final_val_acc": "validation accuracy after the last epoch run",
    "final_val_loss": "validation loss after the last epoch run",
    "epochs_planned": "epochs the trial sampled",
    "epochs_run": "epochs actually trained",
    "pruned_at": "epoch after which it stopped early (pruned or out of budget), else NA",
    "stop_reason": "pruned, budget, nonfinite, oom, error, interrupted, killed or empty",
    "error": "for stop_reason oom or error: the exception, `Type: message`, else empty",
    "wall_seconds": "trial wall time, model build to last evaluation",
    "params_count": "trainable parameters",
    "seed": "the trial's torch seed",
    "device": "device name the trial ran on",
    "threads": "torch intra-op threads",
    "git_sha": "code version (-dirty when tracked files were modified)",
    "versions": "python and package versions",
    "data_md5": "uncompressed MD5 of each MNIST file read (JSON)",
    "split_hash": "sha256 prefix of the validation indices (one split per replicate)",
    "space_hash": "sha256 prefix of every family's search space and the split size",
    "datetime_start": "when the trial started",
    "recipe": "the full training recipe (JSON of train.Recipe): what finalists retrain",
    "normalization": "input normalisation the trial trained on (data.NORMALIZATIONS)",
}
EPOCH_COLUMNS = {
    "family": "as in trials.parquet",
    "replicate": "as in trials.parquet",
    "number": "as in trials.parquet",
    "epoch": "epochs completed (1-based), the step reported to the pruner",
    "train_loss": "mean training loss over the epoch",
    "val_loss": "validation loss after the epoch",
    "val_acc": "validation accuracy after the epoch",
    "lr": "learning rate at the start of the epoch",
    "seconds": "epoch wall time including validation",
}
IMPORTANCE_COLUMNS = {
    "family": "as in trials.parquet",
    "replicate": "as in trials.parquet",
    "param": "Optuna parameter name",
    "importance": "Optuna's default importance evaluator on the validation objective",
}


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then rename over `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _conform(df: pd.DataFrame, columns: dict[str, str], extra_prefix: str | None) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"store frame lacks columns {missing}")
    extra = sorted(c for c in df.columns if extra_prefix and c.startswith(extra_prefix))
    return df[list(columns) + extra].reset_index(drop=True)


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def write_study(out: Path, trials: pd.DataFrame, epochs: pd.DataFrame,
                importances: pd.DataFrame | None = None) -> None:
    write_parquet(out / "trials.parquet", _conform(trials, TRIAL_COLUMNS, "param_"))
    write_parquet(out / "epochs.parquet", _conform(epochs, EPOCH_COLUMNS, None))
    if importances is not None:
        write_parquet(out / "importances.parquet",
                      _conform(importances, IMPORTANCE_COLUMNS, None))


def log_test_access(out: Path, code: str, why: str, config: dict | None = None,
                    seed: int | None = None) -> None:
    """Append one line to `out`/test_access.jsonl *before* the test split is read or scored.

    The line is flushed to disk first, so even a crash right after the read leaves its trace.
    """
    out.mkdir(parents=True, exist_ok=True)
    line = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code,
            "why": why, "config": config, "seed": seed, "pid": os.getpid()}
    with (out / "test_access.jsonl").open("a") as fh:
        fh.write(json.dumps(line, default=str, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSON-lines log (runs.jsonl, test_access.jsonl); none when it is absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_study_run(out: Path) -> dict:
    """The study's most recent invocation record in runs.jsonl (workers add lines of their own):
    its config (split seed, smoke flag), search space, question and provenance; {} when none."""
    return next((r for r in reversed(read_jsonl(out / "runs.jsonl"))
                 if r.get("role") != "worker"), {})


def with_replicate(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with an int replicate column: stores from before replicates hold replicate 0 only."""
    if "replicate" in df:
        return df.assign(replicate=df["replicate"].fillna(0).astype(int))
    return df.assign(replicate=0)


def read_verdicts(out: Path, finalists: pd.DataFrame) -> pd.DataFrame:
    """verdicts.parquet; for folders finalized before it existed, computed from the stored
    predictions (the same deterministic function finalize writes it with)."""
    path = out / "verdicts.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    from bench import stats  # pure numbers; imported here so the store stays a leaf module

    return stats.verdicts(finalists, pd.read_parquet(out / "test_predictions.parquet"))


def read(out: Path, table: str) -> pd.DataFrame:
    """Read `trials`, `epochs` or `importances` of the study stored in `out`."""
    path = out / f"{table}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no {table} table at {path}; run the study first")
    return pd.read_parquet(path)
