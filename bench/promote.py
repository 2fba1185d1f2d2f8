"""Promote a study's best finalist to a fixed leaderboard entry that anyone can reproduce.

`make finalize` writes results/<study>/finalists.parquet (one row per family, rank and seed). The
finalist with the highest mean validation accuracy is chosen (never by test), its finalists' mean
test accuracy becomes the entry's claim, and the entry is written to entries/<study>-<family>.json:
a committed file, reviewed like a study file, because results/ is not committed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench import provenance, store, train
from bench.leaderboard import ENTRIES_DIR, RECIPES, Entry, check

FINALIST_COLUMNS = ("family", "rank", "number", "arch", "seed", "recipe", "normalization",
                    "val_size", "split_seed", "val_acc", "test_acc", "epochs", "git_sha", "device")


def promote(name: str, results_dir: Path, directory: Path | None = None) -> Entry:
    """Make the study's best finalist (highest mean validation accuracy) a fixed entry.

    The choice reads validation only; the finalists' mean test accuracy becomes the claim that
    reproducing the entry checks. The entry is written to entries/<study>-<family>.json.
    """
    path = results_dir / name / "finalists.parquet"
    if not path.is_file():
        raise ValueError(f"no finalists at {path}; run make finalize NAME={name} first")
    df = pd.read_parquet(path)
    if missing := [c for c in FINALIST_COLUMNS if c not in df.columns]:
        raise ValueError(f"{path} lacks columns {missing}")
    if df.empty:
        raise ValueError(f"{path} holds no finalists")
    if not (df["val_acc"].notna() & df["test_acc"].notna()).any():
        raise ValueError(f"{path}: every finalist diverged (no validation or test accuracy); "
                         "nothing to promote")
    means = df.groupby(["family", "rank"], as_index=False)["val_acc"].mean()
    best = means.sort_values(["val_acc", "rank", "family"], ascending=[False, True, True]).iloc[0]
    runs = df[(df["family"] == best["family"]) & (df["rank"] == best["rank"])]
    recipes = set(runs["recipe"])
    if len(recipes) != 1:
        raise ValueError(f"{path}: finalist {best['family']} rank {best['rank']} has "
                         f"{len(recipes)} different recipes; expected one")
    try:
        recipe = train.Recipe(**json.loads(recipes.pop()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable recipe: {exc}") from None
    first = runs.iloc[0]
    test = runs["test_acc"]
    entry = Entry(
        id=f"{name}-{best['family']}",
        recipe=recipe,  # its epochs, not a row's: a seed that diverged trained 0 of them
        normalization=str(first["normalization"]), split="stratified",
        val_size=int(first["val_size"]), split_seed=int(first["split_seed"]),
        eval_every_epoch=False, claim=round(float(test.mean()), 6),
        source=f"study {name}: best {best['family']} finalist (rank {int(best['rank'])}, trial "
               f"{int(first['number'])}), chosen on mean validation accuracy "
               f"{best['val_acc']:.2%} over {len(runs)} seeds; claim = their mean test accuracy "
               f"({test.mean():.2%} ± {test.std() if len(test) > 1 else 0:.2%})",
        provenance={"study": name, "family": str(best["family"]), "rank": int(best["rank"]),
                    "number": int(first["number"]), "seeds": [int(s) for s in runs["seed"]],
                    "val_acc": [float(v) for v in runs["val_acc"]],
                    "test_acc": [float(v) for v in test],
                    "git_sha": sorted(set(runs["git_sha"].astype(str))),
                    "device": sorted(set(runs["device"].astype(str))),
                    "promoted_at_sha": provenance.git_sha(),
                    "promoted_at": pd.Timestamp.now("UTC").isoformat(timespec="seconds")},
    )
    check(entry)
    if entry.id in {e.id for e in RECIPES}:
        raise ValueError(f"promoted id {entry.id!r} clashes with a classic recipe")
    store.write_json((directory or ENTRIES_DIR) / f"{entry.id}.json", entry.to_dict())
    return entry
