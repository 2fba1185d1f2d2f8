"""`make bench-study`: trials per minute of one study run with different numbers of workers.

Each setting runs the whole study command (`python -m bench study NAME=... TRIALS=n TIMEOUT=0
WORKERS=k`) in a fresh process, into a folder of its own, back to back; the wall time is that
command's, so start-up, data loading, starting workers and writing the store all count. The same
trial count makes the wall times comparable, though not equal work: workers' samplers draw other
configurations (bigger or smaller models, more or fewer epochs before pruning), so compare over a
few SEEDs; epochs per minute is shown beside trials per minute. Each family's best validation
accuracy (never test) shows whether more workers cost the search anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from bench import host, store, study
from bench.tables import family_summary


@dataclass(frozen=True)
class Config:
    name: str
    trials: int
    workers: tuple[int, ...]
    device: str
    seed: int
    smoke: bool
    results_dir: Path


def _study(cfg: Config, workers: int, out: Path) -> float:
    """Run the study command once; returns its wall seconds."""
    cmd = [sys.executable, "-m", "bench", "study", f"NAME={cfg.name}", f"TRIALS={cfg.trials}",
           "TIMEOUT=0", "REPLICATES=1", f"WORKERS={workers}", f"DEVICE={cfg.device}",
           f"SEED={cfg.seed}",
           f"SMOKE={int(cfg.smoke)}", f"RESULTS_DIR={out}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=host.child_env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"study with WORKERS={workers} failed:\n{tail}")
    return wall


def row(cfg: Config, workers: int, wall: float, folder: Path) -> dict:
    """One setting's outcome, from the store and the run record the study wrote."""
    trials = store.read(folder, "trials")
    run = store.last_study_run(folder)
    summary = family_summary(trials).set_index("family")
    best = summary.get("best val acc", pd.Series(dtype=float)).dropna()
    return {
        "study": cfg.name, "workers": workers, "trials": len(trials),
        "completed": int(summary["completed"].sum()), "wall_seconds": wall,
        "trials_per_minute": len(trials) / wall * 60,
        "epochs_per_minute": int(trials["epochs_run"].sum()) / wall * 60,
        "best_val_acc": json.dumps({f: round(float(v), 6) for f, v in best.items()}),
        "precision": run["config"]["precision"], "threads": run["threads"],
        "device": run["device"], "git_sha": run["git_sha"], "versions": run["versions"],
        "seed": cfg.seed, "smoke": cfg.smoke, "folder": str(folder),
    }


def table(df: pd.DataFrame) -> Table:
    first = df.iloc[0]
    out = Table(title=f"study {first['study']}: {first['trials']} trials on {first['device']}")
    for col in ("workers", "trials", "wall s", "trials/min", "epochs/min", "vs first",
                "best val acc"):
        out.add_column(col, justify="left" if col == "best val acc" else "right")
    for r in df.itertuples():
        best = ", ".join(f"{f} {v:.2%}" for f, v in json.loads(r.best_val_acc).items())
        out.add_row(str(r.workers), str(r.trials), f"{r.wall_seconds:.1f}",
                    f"{r.trials_per_minute:.1f}", f"{r.epochs_per_minute:.1f}",
                    f"{r.speedup:.2f}x", best)
    return out


def run(cfg: Config, console: Console) -> Path:
    """Every WORKERS setting in turn; writes results/bench/<UTC time>-study-<name>.parquet."""
    started = datetime.now(timezone.utc)
    root = cfg.results_dir / "bench" / f"{started:%Y%m%dT%H%M%SZ}-study-{cfg.name}"
    rows = []
    for workers in cfg.workers:
        out = root / f"workers-{workers}"
        wall = _study(cfg, workers, out)
        rows.append(row(cfg, workers, wall, study.results_folder(out, cfg.name, cfg.smoke)))
        console.print(f"WORKERS={workers}: {rows[-1]['trials']} trials in {wall:.1f} s")
    df = pd.DataFrame(rows)
    df["speedup"] = df["trials_per_minute"] / df["trials_per_minute"].iloc[0]
    df["started"] = started.isoformat(timespec="seconds")
    path = root.with_suffix(".parquet")
    store.write_parquet(path, df)
    console.print(table(df))
    return path
