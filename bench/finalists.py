"""Finalists: the one step of a study that reads the test split.

In every replicate, the top-k completed trials of each family, ranked by validation accuracy in
the store (never by test), are retrained on that replicate's own training split for several seeds
and each run is scored once on the 10k test images. Every read is logged to test_access.jsonl
before it happens, and every prediction is kept, so the families' winners can be compared paired
on the same images; `stats.verdicts` turns them into verdicts.parquet. A second run reuses the
stored scores and does not open the test files unless asked to refresh.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from bench import data, provenance, stats, store, study, train
from bench.models import count_params
from bench.tables import FittedTable, rich_table

CODE = "bench.finalists"
# Default finalists per family and replicate, and seeds per finalist: the family verdict uses
# the rank-1 finalist of each replicate; two seeds let the per-replicate diagnostic see seed noise.
K, SEEDS = 1, 2
MISCLASSIFIED_KEPT = 60  # per family winner, for the report's grid of misclassified digits

FINALIST_COLUMNS = {
    "family": "the study's family (a value of its scientific parameter)",
    "replicate": "the study replicate the finalist comes from (as in trials.parquet)",
    "rank": "1 = the family's best trial on validation, 2 = the next, ...",
    "number": "the study trial the configuration comes from",
    "arch": "registered model name",
    "seed": "torch seed of this retraining run",
    "recipe": "the trial's training recipe (JSON), retrained as is",
    "normalization": "input normalisation the trial trained on",
    "val_size": "validation images held out of the training split",
    "split_seed": "seed of the replicate's train/validation split (study SEED + replicate)",
    "split_hash": "sha256 prefix of the validation indices (matches trials.parquet)",
    "trial_val_acc": "the trial's validation accuracy in the study (what it was chosen on)",
    "val_acc": "validation accuracy of this retraining run",
    "test_acc": "test accuracy of this run; NaN when the run diverged (then test was not scored)",
    "test_loss": "test cross-entropy of this run",
    "epochs": "epochs trained",
    "train_seconds": "wall time of training and validation",
    "params_count": "trainable parameters",
    "device": "device name",
    "git_sha": "code version",
    "versions": "python and package versions",
}
PREDICTION_COLUMNS = {
    "family": "as in finalists.parquet", "replicate": "as in finalists.parquet",
    "rank": "as in finalists.parquet",
    "seed": "as in finalists.parquet", "index": "test image index (0..9999)",
    "label": "true digit", "pred": "predicted digit",
}
MISCLASSIFIED_COLUMNS = {
    "family": "as in finalists.parquet", "replicate": "as in finalists.parquet",
    "index": "test image index", "label": "true digit",
    "pred": "predicted digit", "pixels": "784 uint8 pixels, row-major",
}


def select(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top `k` completed trials per (replicate, family) by validation objective.

    Ties go to fewer parameters, then to the earlier trial, so the choice is deterministic.
    """
    trials = store.with_replicate(trials)
    done = trials[(trials["state"] == "COMPLETE") & trials["recipe"].notna()]
    ranked = done.sort_values(["replicate", "family", "value", "params_count", "number"],
                              ascending=[True, True, False, True, True])
    top = ranked.groupby(["replicate", "family"], sort=False).head(k).copy()
    top["rank"] = top.groupby(["replicate", "family"]).cumcount() + 1
    return top.reset_index(drop=True)


def missing_finalists(trials: pd.DataFrame, chosen: pd.DataFrame) -> list[str]:
    """`family replicate r` for every family and replicate of the study with no completed trial:
    the study cannot answer its question for them."""
    trials = store.with_replicate(trials)
    have = set(zip(chosen["family"], chosen["replicate"], strict=True))
    return [f"{f} (replicate {r})" for r in sorted(set(trials["replicate"]))
            for f in dict.fromkeys(trials["family"]) if (f, r) not in have]


def finalize(definition: study.Study, out: Path, device: torch.device, k: int, seeds: int,
             refresh: bool, console: Console) -> pd.DataFrame:
    """Retrain and score the finalists of the study stored in `out`; returns finalists.parquet.

    Refused before the test files are opened when a family has no completed trial in some
    replicate (the study cannot answer its question) or a rebuilt split is not the study's."""
    target = out / "finalists.parquet"
    if target.is_file() and not refresh:
        console.print(f"{target} exists: reusing its test scores; the test split was not read "
                      "(REFRESH=1 retrains and scores again)")
        finalists = pd.read_parquet(target)
        print_verdict(store.read_verdicts(out, finalists), console)
        return finalists
    trials = store.with_replicate(store.read(out, "trials"))
    if running := int((trials["state"] == "RUNNING").sum()):
        raise ValueError(f"{out}/trials.parquet has {running} trial(s) RUNNING: the study is "
                         "still running (or was killed; rerunning `make study` with the same "
                         "settings finishes it); finalize once it has ended; the test split was "
                         "not read")
    chosen = select(trials, k)
    if missing := missing_finalists(trials, chosen):
        raise ValueError(f"no completed trial for {', '.join(missing)} in {out}/trials.parquet: "
                         "the study cannot compare its families; the test split was not read "
                         "(continue the study, e.g. with a larger TIMEOUT= or TRIALS=)")
    for (family, r), n in chosen.groupby(["family", "replicate"], sort=False).size().items():
        if n < k:
            console.print(f"{family} replicate {r}: only {n} completed trial{'s' * (n != 1)}, "
                          f"so {n} finalist{'s' * (n != 1)} instead of K={k}")
    run = store.last_study_run(out)
    if not run:
        raise FileNotFoundError(f"no study at {out} (missing runs.jsonl); run the study first")
    base_seed, smoke = run["config"]["seed"], run["config"]["smoke"]
    val_size = study.SMOKE_VAL if smoke else definition.val_size
    raw = data.load_train()
    splits = {r: study.splits_by_normalization(raw, val_size, base_seed + r, device,
                                               study.SMOKE_SUBSET if smoke else None)
              for r in sorted(set(chosen["replicate"]))}
    chosen["normalization"] = chosen["normalization"].fillna("mnist")  # stores from before it
    for r, split in splits.items():  # every replicate's split, rebuilt, is the study's
        rebuilt = split(chosen["normalization"].iloc[0]).split_hash
        expected = set(trials.loc[trials["replicate"] == r, "split_hash"].dropna())
        if expected != {rebuilt}:
            raise ValueError(f"the split of replicate {r} rebuilt from {out}/runs.jsonl (hash "
                             f"{rebuilt}) is not the study's {sorted(expected)}; the study "
                             "folder is inconsistent; the test split was not read")
    prov = provenance.collect(device)
    names = [f"{r.family}#{r.number} (replicate {r.replicate})" for r in chosen.itertuples()]
    store.log_test_access(out, CODE, f"load the test split to score finalists {names}",
                          {"k": k, "seeds": seeds})
    test = data.load_test()
    x_tests = {n: data.to_inputs(test.images, n, device) for n in set(chosen["normalization"])}
    y_test = test.labels.to(device)

    rows, preds, table = [], [], _progress_table()
    for r in chosen.itertuples():
        recipe = train.Recipe(**json.loads(r.recipe))
        split_seed = base_seed + r.replicate
        for i in range(seeds):
            seed = study.derive_seed("final", split_seed, r.family, r.number, i)
            train.seed_everything(seed)
            split = splits[r.replicate](r.normalization)
            model, opt, sched = train.build(recipe, len(split.x_train), device)
            console.print(f"retraining {r.family} replicate {r.replicate} rank {r.rank} (trial "
                          f"{r.number}, {r.arch}) seed {i + 1}/{seeds}: {recipe.epochs} epoch"
                          f"{'s' * (recipe.epochs != 1)}")
            row = {"family": r.family, "replicate": r.replicate, "rank": r.rank,
                   "number": r.number, "arch": r.arch, "seed": seed, "recipe": r.recipe,
                   "normalization": r.normalization, "val_size": val_size,
                   "split_seed": split_seed, "split_hash": split.split_hash,
                   "trial_val_acc": r.value, "params_count": count_params(model),
                   "device": prov["device"], "git_sha": prov["git_sha"],
                   "versions": prov["versions"]}
            try:
                hist = train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs,
                                 seed, precision=recipe.precision)
            except train.NonFiniteLoss:
                rows.append({**row, "val_acc": math.nan, "test_acc": math.nan,
                             "test_loss": math.nan, "epochs": 0, "train_seconds": math.nan})
                table.add_row(r.family, str(r.replicate), str(r.rank), str(r.number),
                              f"{i + 1}/{seeds}", "diverged", "–")
                continue
            store.log_test_access(out, CODE, f"score finalist {r.family} replicate "
                                  f"{r.replicate} rank {r.rank}",
                                  {"number": r.number, **recipe.to_dict()}, seed)
            pred, loss = train.predict(model, x_tests[r.normalization], y_test)
            pred = pred.cpu().numpy()
            rows.append({**row, "val_acc": hist[-1]["val_acc"],
                         "test_acc": float((pred == test.labels.numpy()).mean()),
                         "test_loss": loss.item() / len(pred), "epochs": len(hist),
                         "train_seconds": sum(h["seconds"] for h in hist)})
            preds.append(pd.DataFrame({"family": r.family, "replicate": r.replicate,
                                       "rank": r.rank, "seed": seed,
                                       "index": np.arange(len(pred)),
                                       "label": test.labels.numpy(), "pred": pred}))
            table.add_row(r.family, str(r.replicate), str(r.rank), str(r.number),
                          f"{i + 1}/{seeds}", f"{rows[-1]['val_acc']:.2%}",
                          f"{rows[-1]['test_acc']:.2%}")
    finalists = pd.DataFrame(rows, columns=list(FINALIST_COLUMNS))
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(
        columns=list(PREDICTION_COLUMNS))
    verdicts = stats.verdicts(finalists, predictions)
    store.write_parquet(out / "test_predictions.parquet", predictions)
    store.write_parquet(out / "misclassified.parquet", _misclassified(predictions, test.images))
    store.write_parquet(out / "verdicts.parquet", verdicts)
    store.write_parquet(target, finalists)  # last: its presence means the set is complete
    console.print(table)
    print_verdict(verdicts, console)
    return finalists


def print_verdict(verdicts: pd.DataFrame, console: Console) -> None:
    """The test verdict for the terminal, as the report shows it, from the one structured
    result: the family verdict across replicates, then the per-replicate diagnostic."""
    if verdicts.empty:
        return
    k = int(verdicts.loc[verdicts["level"] == "family", "n"].max()) if (
        verdicts["level"] == "family").any() else 1
    console.print(rich_table(stats.verdict_table(verdicts, "family"),
                             "Family verdict across replicates (test; gap = family − reference, "
                             "95% interval over replicates and test images, Holm-adjusted p)"))
    diagnostic = stats.verdict_table(verdicts, "replicate")
    if not diagnostic.empty:
        console.print(rich_table(diagnostic, "Per replicate: the two finalists on the same test "
                                             "images (McNemar per seed pair; interval over "
                                             "seeds, then images)"))
    console.print(stats.answer(verdicts, k), markup=False)


def _misclassified(predictions: pd.DataFrame, images: torch.Tensor) -> pd.DataFrame:
    """The first seed's mistakes of each family's rank-1 finalist in the first replicate, with
    pixels for the report."""
    rows = []
    first_replicate = predictions[predictions["replicate"] == predictions["replicate"].min()]
    for family, df in first_replicate[first_replicate["rank"] == 1].groupby("family",
                                                                            sort=False):
        first = df[df["seed"] == df["seed"].iloc[0]]
        wrong = first[first["label"] != first["pred"]].head(MISCLASSIFIED_KEPT)
        for w in wrong.itertuples():
            rows.append({"family": family, "replicate": w.replicate, "index": w.index,
                         "label": w.label, "pred": w.pred,
                         "pixels": images[w.index].flatten().numpy().tolist()})
    return pd.DataFrame(rows, columns=list(MISCLASSIFIED_COLUMNS))


def _progress_table() -> FittedTable:
    """Seeds as run index (`1/2`), accuracies in percent; fits the terminal's width."""
    table = FittedTable("Finalists (chosen on validation, scored once on test)",
                        drop=("rank", "trial"))
    for col in ("family", "replicate", "rank", "trial", "seed", "val acc", "test acc"):
        table.add_column(col, justify="left" if col == "family" else "right")
    return table
