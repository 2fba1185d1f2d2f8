"""Leaderboard entries against DESIGN.md's table (read from the recipes' code), and the verdict."""

import json
import math
from dataclasses import fields, replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bench import data, leaderboard, reproduce, train
from tests.conftest import synthetic_digits

E = {e.id: e for e in leaderboard.RECIPES}
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

# DESIGN.md's table, value by value. lrs: the lr each epoch actually trains with.
DESIGN = {
    "mlp-128-128-adam": dict(
        linear=[128, 128, 10], batch_norm=[], optimizer="adam", lr=0.01, momentum=None,
        lrs=[0.01] * 7, batch=128, eval_batch=128, shuffle=True, split=("contiguous", 12_000),
        eval_on="val", metric="accuracy", every_epoch=True, epochs=7, normalization=None,
        loss="cross_entropy", claim=None),
    "mlp-bn-300-100-sgd": dict(
        linear=[300, 100, 10], batch_norm=[300, 100], optimizer="sgd", lr=0.01, momentum=0.5,
        lrs=[1e-3] * 5 + [1e-4] * 5 + [1e-5] * 5 + [1e-6] * 5, batch=64, eval_batch=128,
        shuffle=True, split=("all", 0), eval_on="test", metric="batch_mean", every_epoch=True,
        epochs=20, normalization=(0.5, 0.5), loss="cross_entropy", claim=None),
    "mlp-400-200-100-sgd": dict(
        linear=[400, 200, 100, 10], batch_norm=[], optimizer="sgd", lr=0.1, momentum=0.0,
        lrs=[0.1] * 20, batch=64, eval_batch=128, shuffle=True, split=("all", 0),
        eval_on="test", metric="accuracy", every_epoch=True, epochs=20, normalization=(0.5, 0.5),
        loss="cross_entropy", claim=0.977),
    "cnn-conv32-adam": dict(
        linear=[10], batch_norm=[], optimizer="adam", lr=1e-3, momentum=None, lrs=[1e-3] * 2,
        batch=64, eval_batch=64, shuffle=False, split=("all", 0), eval_on="test",
        metric="accuracy", every_epoch=False, epochs=2, normalization=(0.1307, 0.3081),
        loss="nll", claim=(0.975, 0.985)),
    "mlp-64-32-softmax-sgd": dict(
        linear=[64, 32, 10], batch_norm=[], optimizer="sgd", lr=0.005, momentum=0.0,
        lrs=[0.005] * 100, batch=64, eval_batch=64, shuffle=False, split=("all", 0),
        eval_on="test", metric="accuracy", every_epoch=True, epochs=100, normalization=None,
        loss="cross_entropy_onehot", claim=None),
}


def lr_per_epoch(entry):
    """The lr each epoch starts with, stepping the schedule once per batch as `fit` does."""
    opt_steps = 10  # schedules are epoch-based, so any number of steps per epoch will do
    model, opt, sched = train.build(entry.recipe, opt_steps * entry.recipe.batch_size, CPU)
    out = []
    for _ in range(entry.recipe.epochs):
        out.append(opt.param_groups[0]["lr"])
        for _ in range(opt_steps):
            opt.step()
            sched.step()
    return out


@pytest.mark.parametrize("entry_id", list(DESIGN))
def test_recipe_matches_design(entry_id):
    want, entry = DESIGN[entry_id], E[entry_id]
    model, opt, _ = train.build(entry.recipe, 640, CPU)
    mods = list(model.modules())
    assert [m.out_features for m in mods if isinstance(m, torch.nn.Linear)] == want["linear"]
    assert [m.num_features for m in mods if isinstance(m, torch.nn.BatchNorm1d)] == (
        want["batch_norm"])
    assert type(opt).__name__.lower() == want["optimizer"]
    assert entry.recipe.lr == want["lr"] and entry.recipe.weight_decay == 0
    if want["momentum"] is not None:
        assert opt.param_groups[0]["momentum"] == want["momentum"]
        assert opt.param_groups[0]["nesterov"] is False
    else:
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # Adam's defaults
    assert lr_per_epoch(entry) == pytest.approx(want["lrs"], rel=1e-9)
    assert (entry.recipe.batch_size, entry.eval_batch_size) == (want["batch"], want["eval_batch"])
    assert entry.shuffle is want["shuffle"]
    assert (entry.split, entry.val_size) == want["split"]
    assert (entry.eval_on, entry.metric) == (want["eval_on"], want["metric"])
    assert entry.eval_every_epoch is want["every_epoch"]
    assert entry.recipe.epochs == want["epochs"]
    assert data.NORMALIZATIONS[entry.normalization] == want["normalization"]
    assert entry.loss == want["loss"]
    assert entry.claim == want["claim"]


def test_conv32_layers_match_design():
    model, _, _ = train.build(E["cnn-conv32-adam"].recipe, 640, CPU)
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in conv] == [(1, 32, (3, 3))]
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout2d)] == [0.25]
    assert [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [5408]
    out = model.eval()(torch.randn(3, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)  # log_softmax output


def test_fixed_variants_change_one_quirk_each():
    def differing(a, b):
        changed = {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}
        recipe = {f.name for f in fields(a.recipe)
                  if getattr(a.recipe, f.name) != getattr(b.recipe, f.name)}
        return changed - {"id", "source"}, recipe

    bn, bn_fixed = E["mlp-bn-300-100-sgd"], E["mlp-bn-300-100-sgd-fixed"]
    assert differing(bn, bn_fixed) == ({"recipe"}, {"schedule_kwargs"})
    assert lr_per_epoch(bn_fixed) == pytest.approx(
        [1e-2] * 5 + [1e-3] * 5 + [1e-4] * 5 + [1e-5] * 5, rel=1e-9)
    soft, soft_fixed = E["mlp-64-32-softmax-sgd"], E["mlp-64-32-softmax-sgd-fixed"]
    assert differing(soft, soft_fixed) == ({"recipe"}, {"arch"})


def _raw(n, seed):
    images, labels = synthetic_digits(n, seed)
    return data.Raw(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), {})


def _small(entry):
    """The entry on tiny data: one epoch, and a validation part that fits 300 images."""
    val = 100 if entry.split != "all" else 0
    return replace(entry, val_size=val, recipe=replace(entry.recipe, epochs=1))


@pytest.mark.parametrize("entry_id", list(leaderboard.all_entries()))
def test_every_entry_builds_and_trains_on_tiny_data(entry_id):
    entry = _small(leaderboard.all_entries()[entry_id])
    split, x_eval, y_eval = reproduce.inputs(entry, _raw(300, 0), _raw(100, 1), CPU)
    train.seed_everything(0)
    before = train.build(entry.recipe, len(split.x_train), CPU)[0].state_dict()
    model, history = reproduce.train_entry(entry, split, x_eval, y_eval, 0, CPU)
    assert len(history) == 1 and 0 <= history[0]["eval_acc"] <= 1
    assert math.isfinite(history[0]["train_loss"])
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_contiguous_split_keeps_file_order():
    entry = replace(E["mlp-128-128-adam"], val_size=100)
    raw = _raw(500, 0)
    split, x_val, y_val = reproduce.inputs(entry, raw, None, CPU)
    assert torch.equal(split.y_train, raw.labels[:400]) and torch.equal(y_val, raw.labels[400:])
    assert torch.equal(x_val, data.to_inputs(raw.images[400:], "none", CPU))
    assert len(split.x_val) == 0  # fit only trains; the recipe's own scoring reads x_val


def test_double_softmax_entry_applies_softmax_before_the_loss(monkeypatch):
    seen = []
    real = F.cross_entropy

    def spy(out, target, *args, **kwargs):
        seen.append((out.detach(), target))
        return real(out, target, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    for entry_id in ("mlp-64-32-softmax-sgd", "mlp-64-32-softmax-sgd-fixed"):
        entry = _small(E[entry_id])
        split, x_eval, y_eval = reproduce.inputs(entry, _raw(128, 0), _raw(64, 1), CPU)
        seen.clear()
        reproduce.train_entry(entry, split, x_eval, y_eval, 0, CPU)
        train_calls = [(o, t) for o, t in seen if t.dtype == torch.float32]  # training steps
        assert len(train_calls) == 2  # 128 images, batches of 64
        out, target = train_calls[0]
        assert torch.equal(target, F.one_hot(split.y_train[:64], 10).float())  # one-hot floats
        is_prob = torch.allclose(out.sum(1), torch.ones(64)) and bool((out >= 0).all())
        assert is_prob is (entry_id == "mlp-64-32-softmax-sgd")


def test_one_hot_loss_equals_class_index_loss():
    out, y = torch.randn(6, 10), torch.tensor([0, 3, 9, 1, 1, 5])
    assert torch.allclose(leaderboard.LOSSES["cross_entropy_onehot"](out, y),
                          F.cross_entropy(out, y))


@pytest.mark.parametrize(("mean", "std", "claim", "expected"), [
    (0.9770, 0.0010, 0.9770, "reproduced"),
    (0.9745, 0.0010, 0.9770, "reproduced"),  # 0.25 pp off: inside the 0.3 pp floor
    (0.9735, 0.0010, 0.9770, "below claim"),  # 0.35 pp off, 2·std = 0.2 pp
    (0.9735, 0.0020, 0.9770, "reproduced"),  # 2·std = 0.4 pp covers it
    (0.9800, math.nan, 0.9770, "reproduced"),  # one seed: exactly the 0.3 pp tolerance
    (0.9801, math.nan, 0.9770, "above claim"),
    (0.9750, 0.0005, (0.975, 0.985), "reproduced"),  # interval: low is inside
    (0.9850, 0.0005, (0.975, 0.985), "above claim"),  # high is outside ({:.0f} gives 99%)
    (0.9741, 0.0100, (0.975, 0.985), "below claim"),  # the spread does not widen an interval
    (0.9100, 0.0100, None, "no claim"),
])
def test_verdict_rule(mean, std, claim, expected):
    assert leaderboard.verdict(mean, std, claim) == expected


def _rows(entry, accs, device="cpu: test", digest=None):
    return pd.DataFrame([{
        "entry": entry.id, "seed": s, "acc": a, "eval_on": entry.eval_on, "metric": entry.metric,
        "claim": json.dumps(entry.claim), "seconds_per_epoch": 2.0, "device": device,
        "entry_hash": digest or entry.digest, "git_sha": "abc", "versions": "torch=x",
        "threads": 1} for s, a in enumerate(accs)])


def test_summary_and_markdown_from_hand_made_rows():
    mlp, cnn = E["mlp-400-200-100-sgd"], E["cnn-conv32-adam"]
    rows = pd.concat([_rows(mlp, [0.978, 0.976, 0.977]), _rows(cnn, [0.974], digest="old")])
    summary = leaderboard.summarize(rows, E).set_index("entry")
    assert summary.loc[mlp.id, "mean"] == pytest.approx(0.977)
    assert summary.loc[mlp.id, "std"] == pytest.approx(0.001)
    assert summary.loc[mlp.id, "verdict"] == "reproduced"
    assert summary.loc[cnn.id, "verdict"] == "below claim" and summary.loc[cnn.id, "stale"]
    assert summary.loc["mlp-128-128-adam", "verdict"] == "not run"
    md = leaderboard.markdown(summary.reset_index(), rows, E)
    assert "| mlp-400-200-100-sgd | test (accuracy) | 97.70% ± 0.10% | 3 | 97.70% | " \
           "reproduced | 2.00 |" in md
    assert "| cnn-conv32-adam | test (accuracy) | 97.40% | 1 | [97.5%, 98.5%) | below claim " \
           "(stale: definition changed) | 2.00 |" in md
    assert "- device: cpu: test" in md and "one seed" in md and "on CPU" in md
    assert "deviation: images are never flattened" in md


def test_entries_round_trip_through_json(tmp_path):
    for entry in leaderboard.RECIPES:
        path = tmp_path / f"{entry.id}.json"
        path.write_text(json.dumps(entry.to_dict()))
    loaded = {e.id: json.dumps(e.to_dict()) for e in leaderboard.promoted(tmp_path)}
    assert loaded == {e.id: json.dumps(e.to_dict()) for e in leaderboard.RECIPES}
    assert {e.id: e.digest for e in leaderboard.promoted(tmp_path)} == {
        e.id: e.digest for e in leaderboard.RECIPES}
    with pytest.raises(ValueError, match="is defined twice"):
        leaderboard.all_entries(tmp_path)


def test_bad_entries_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match="unknown loss 'mse'; valid: cross_entropy, "):
        leaderboard.check(replace(E["cnn-conv32-adam"], loss="mse"))
    with pytest.raises(ValueError, match="unknown model 'resnet'; valid: cnn, cnn-bn"):
        leaderboard.check(replace(E["cnn-conv32-adam"],
                                  recipe=replace(E["cnn-conv32-adam"].recipe, arch="resnet")))
    with pytest.raises(ValueError, match="split 'contiguous' with val_size=0"):
        leaderboard.check(replace(E["mlp-128-128-adam"], val_size=0))


def test_a_float32_recipe_keeps_the_digest_it_had_before_precision_existed():
    import hashlib

    entry = leaderboard.RECIPES[0]
    d = entry.to_dict()
    del d["recipe"]["precision"]
    before = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert entry.digest == before
    assert replace(entry, recipe=replace(entry.recipe, precision="bf16")).digest != before
    with pytest.raises(ValueError, match=r"unknown precision 'auto'; valid: bf16, fp32"):
        leaderboard.check(replace(entry, recipe=replace(entry.recipe, precision="auto")))
