"""Promotion of a study's finalist, from a hand-made finalists.parquet."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from bench import data, leaderboard, promote, reproduce, train
from tests.conftest import synthetic_digits

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

CNN = train.Recipe("cnn", lr=0.003, batch_size=128, epochs=4, optimizer="adamw",
                   schedule="onecycle", weight_decay=1e-4, schedule_kwargs={"pct_start": 0.3},
                   arch_kwargs={"blocks": 2, "channels": 16, "convs": 1, "dropout": 0.1,
                                "hidden": 64})
MLP = train.Recipe("mlp", lr=0.01, batch_size=256, epochs=3, optimizer="sgd",
                   optimizer_kwargs={"momentum": 0.9, "nesterov": True},
                   arch_kwargs={"widths": [256], "dropout": 0.0, "batch_norm": False})


def finalists(rows):
    """rows: (family, rank, number, recipe, val_accs, test_accs) -> the finalize schema."""
    out = []
    for family, rank, number, recipe, vals, tests in rows:
        for seed, (val, test) in enumerate(zip(vals, tests, strict=True)):
            out.append({"family": family, "rank": rank, "number": number, "arch": recipe.arch,
                        "seed": 100 + seed, "recipe": json.dumps(recipe.to_dict()),
                        "normalization": "mnist", "val_size": 10_000, "split_seed": 0,
                        "val_acc": val, "test_acc": test, "epochs": recipe.epochs,
                        "git_sha": "f00d", "device": "NVIDIA H100"})
    return pd.DataFrame(out)


def write(results, df, name="mlp_vs_cnn"):
    (results / name).mkdir(parents=True)
    df.to_parquet(results / name / "finalists.parquet")


def test_promotes_the_best_mean_validation_finalist_never_by_test(tmp_path):
    # The MLP has the best test numbers, the CNN rank 2 the best mean validation accuracy.
    write(tmp_path / "results", finalists([
        ("cnn", 1, 7, CNN, [0.990, 0.986, 0.985], [0.988, 0.987, 0.986]),  # mean val .9870
        ("cnn", 2, 9, CNN, [0.989, 0.988, 0.988], [0.985, 0.986, 0.984]),  # mean val .9883
        ("mlp", 1, 3, MLP, [0.980, 0.981, 0.982], [0.995, 0.996, 0.997]),
    ]))
    entries = tmp_path / "entries"
    entry = promote.promote("mlp_vs_cnn", tmp_path / "results", entries)
    assert entry.id == "mlp_vs_cnn-cnn"
    assert entry.provenance["rank"] == 2 and entry.provenance["number"] == 9
    assert entry.claim == pytest.approx((0.985 + 0.986 + 0.984) / 3)
    assert entry.recipe == CNN
    assert (entry.split, entry.val_size, entry.split_seed) == ("stratified", 10_000, 0)
    assert (entry.eval_on, entry.metric, entry.normalization) == ("test", "accuracy", "mnist")
    assert entry.provenance["seeds"] == [100, 101, 102]
    assert entry.provenance["git_sha"] == ["f00d"]
    assert entry.provenance["device"] == ["NVIDIA H100"]
    # It is now a leaderboard entry like the recipes, loaded from its committed file.
    loaded = leaderboard.all_entries(entries)
    assert list(loaded)[-1] == "mlp_vs_cnn-cnn"
    assert loaded["mlp_vs_cnn-cnn"].digest == entry.digest
    # a 3-seed rerun is judged by the leaderboard's one rule: within ±4.97·std (3 seeds) of the
    # claim, which the committed file holds as the finalists' mean test accuracy, in accuracy
    claim, unit = loaded["mlp_vs_cnn-cnn"].claim, loaded["mlp_vs_cnn-cnn"].claim_unit
    assert (claim, unit) == (round((0.985 + 0.986 + 0.984) / 3, 6), "accuracy")
    assert leaderboard.verdict(claim - 0.0049, 0.001, claim, unit, seeds=3) == "reproduced"
    assert leaderboard.verdict(claim - 0.0051, 0.001, claim, unit, seeds=3) == "worse than claim"
    assert leaderboard.verdict(claim + 0.0051, 0.001, claim, unit, seeds=3) == "better than claim"


def test_missing_or_malformed_finalists_are_one_clear_error(tmp_path):
    results, entries = tmp_path / "results", tmp_path / "entries"
    with pytest.raises(ValueError, match="no finalists at .*run make finalize NAME=mlp_vs_cnn"):
        promote.promote("mlp_vs_cnn", results, entries)
    write(results, finalists([("cnn", 1, 7, CNN, [0.99], [0.98])]).drop(columns="test_acc"))
    with pytest.raises(ValueError, match=r"lacks columns \['test_acc'\]"):
        promote.promote("mlp_vs_cnn", results, entries)
    mixed = finalists([("cnn", 1, 7, CNN, [0.99], [0.98]), ("cnn", 1, 7, MLP, [0.99], [0.98])])
    write(results, mixed, name="other")
    with pytest.raises(ValueError, match="has 2 different recipes"):
        promote.promote("other", results, entries)
    assert not entries.exists()


def _raw(n, seed):
    images, labels = synthetic_digits(n, seed)
    return data.Raw(torch.from_numpy(images.astype("uint8")), torch.from_numpy(labels), {})


def test_a_promoted_entry_trains_on_its_study_split(tmp_path):
    write(tmp_path / "results", finalists([("mlp", 1, 3, MLP, [0.98], [0.97])]))
    entry = promote.promote("mlp_vs_cnn", tmp_path / "results", tmp_path / "entries")
    small = replace(entry, val_size=100, recipe=replace(entry.recipe, epochs=1))
    train_raw, test_raw = _raw(400, 0), _raw(100, 1)
    split, x_eval, y_eval = reproduce.inputs(small, train_raw, test_raw, CPU)
    expected = data.train_val(train_raw, 100, 0, "mnist", CPU)
    assert split.split_hash == expected.split_hash and torch.equal(split.x_train,
                                                                  expected.x_train)
    _, history = reproduce.train_entry(small, split, x_eval, y_eval, 0, CPU)
    assert 0 <= history[0]["val_acc"] <= 1 and 0 <= history[0]["eval_acc"] <= 1


def test_a_diverged_first_seed_does_not_set_the_entry_epochs(tmp_path):
    # Issue 21: finalize writes epochs=0 (and NaN accuracies) for a seed whose loss went
    # non-finite; when that seed is the winner's first row, the entry once got 0 epochs and
    # reproducing it failed on an empty history.
    df = finalists([("mlp", 1, 3, MLP, [0.98, 0.981], [0.97, 0.971])])
    df = pd.concat([df.iloc[:1].assign(val_acc=float("nan"), test_acc=float("nan"), epochs=0,
                                       seed=99), df], ignore_index=True)
    write(tmp_path / "results", df)
    entry = promote.promote("mlp_vs_cnn", tmp_path / "results", tmp_path / "entries")
    assert entry.recipe.epochs == MLP.epochs == 3
    assert entry.recipe == MLP
    assert entry.claim == pytest.approx(0.9705)


def test_a_study_whose_every_finalist_diverged_promotes_nothing(tmp_path):
    # finalize writes NaN accuracies for a run whose loss went non-finite; with every run so,
    # the entry once got the claim NaN, which every rerun "reproduced" (NaN compares false)
    nan = float("nan")
    write(tmp_path / "results", finalists([("cnn", 1, 7, CNN, [nan, nan], [nan, nan]),
                                           ("mlp", 1, 3, MLP, [nan], [nan])]))
    with pytest.raises(ValueError, match=r"finalists.parquet: every finalist diverged \(no "
                                         r"validation or test accuracy\); nothing to promote"):
        promote.promote("mlp_vs_cnn", tmp_path / "results", tmp_path / "entries")
    assert not (tmp_path / "entries").exists()
