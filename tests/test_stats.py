import numpy as np
import pandas as pd
import pytest

from bench import stats


def test_mcnemar_exact_values():
    assert stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    # 2 vs 8: P(X <= 2) for Binomial(10, 1/2) = 56/1024, two-sided doubles it
    assert stats.mcnemar_p(8, 2) == pytest.approx(112 / 1024)


def test_paired_identical_models_show_no_gap():
    rng = np.random.default_rng(0)
    a = rng.random((3, 2000)) < 0.98
    p = stats.paired(a, a.copy())
    assert p.gap == 0 and p.low == 0 and p.high == 0
    assert p.a_only == p.b_only == 0 and p.p_value == 1.0
    assert p.verdict("cnn", "mlp").startswith("no difference")


def test_paired_resolves_a_small_gap_on_the_same_images():
    rng = np.random.default_rng(1)
    b = rng.random((3, 10_000)) < 0.98
    a = b.copy()
    for seed in range(3):  # A fixes 40 of B's mistakes on every seed: +0.4 pp
        a[seed, np.flatnonzero(~b[seed])[:40]] = True
    p = stats.paired(a, b)
    assert p.gap == pytest.approx(a.mean() - b.mean())
    assert 0 < p.low < p.gap < p.high
    assert p.b_only == 0 and p.a_only == 40
    assert p.p_value < 1e-6
    assert p.verdict("cnn", "mlp") == "cnn is better than mlp"
    assert stats.paired(b, a).verdict("mlp", "cnn") == "cnn is better than mlp"


def test_paired_rejects_arrays_over_different_images():
    with pytest.raises(ValueError, match="same images"):
        stats.paired(np.ones((2, 10), bool), np.ones((2, 11), bool))


def test_holm_against_a_hand_computed_case():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept at 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == [0.02]  # one comparison: nothing to correct


def _family_runs(wrong: dict[str, int], val: dict[str, float], n: int = 10_000, seeds: int = 2):
    """Finalists and predictions: family f gets its first wrong[f] images wrong on every seed."""
    labels = np.arange(n) % 10
    rows, preds = [], []
    for family, k in wrong.items():
        for seed in range(seeds):
            pred = labels.copy()
            pred[:k] = (labels[:k] + 1) % 10
            preds.append(pd.DataFrame({"family": family, "rank": 1, "seed": seed,
                                       "index": np.arange(n), "label": labels, "pred": pred}))
            rows.append({"family": family, "rank": 1, "seed": seed, "val_acc": val[family],
                         "test_acc": (pred == labels).mean()})
    return pd.DataFrame(rows), pd.concat(preds, ignore_index=True)


def test_family_verdicts_compare_every_family_with_the_best_on_validation():
    # "b" is best on validation; "a" makes 2 fewer mistakes on test (not separable), "c" 60 more
    # (separable), "d" is identical to "b". Test never picks the reference.
    finalists, preds = _family_runs({"a": 100, "b": 102, "c": 162, "d": 102},
                                    {"a": 0.97, "b": 0.98, "c": 0.96, "d": 0.975})
    table, line = stats.family_verdicts(finalists, preds)
    t = table.set_index("family")
    assert list(table["family"]) == ["b", "a", "c", "d"]
    assert t.loc["b", "verdict"] == "best on validation (the reference)"
    assert t.loc["b", "test acc"] == pytest.approx(1 - 102 / 10_000)
    assert t.loc["a", "gap pp"] == pytest.approx(0.02) and t.loc["c", "gap pp"] == pytest.approx(
        -0.6)
    assert t.loc["c", "CI low pp"] < -0.5 < t.loc["c", "CI high pp"] < 0
    raw = [stats.mcnemar_p(0, 2), stats.mcnemar_p(60, 0), 1.0]
    assert list(t.loc[["a", "c", "d"], "p Holm"]) == pytest.approx(stats.holm(raw))
    assert t.loc["c", "verdict"] == "b is better than c"
    assert t.loc["a", "verdict"].startswith("no difference between b and a")
    assert line == ("test: b (best on validation) 98.98%; worse than b: c; tied with b (not "
                    "separable on the test set): a, d (paired on the same test images, "
                    "Holm-adjusted over 3 comparisons)")


def test_holm_can_turn_a_lone_significant_gap_into_a_tie():
    # 7 vs 0 discordant images: p = 2/128 = 0.0156 alone, but x3 under Holm (0.047) stays < 0.05;
    # 6 vs 0: p = 0.031 alone, x3 = 0.094 with two other comparisons -> tied
    finalists, preds = _family_runs({"ref": 100, "x": 106, "y": 100, "z": 100},
                                    {"ref": 0.99, "x": 0.9, "y": 0.9, "z": 0.9}, seeds=1)
    table, _ = stats.family_verdicts(finalists, preds)
    x = table.set_index("family").loc["x"]
    assert stats.mcnemar_p(6, 0) < 0.05 <= x["p Holm"]
    assert not x["verdict"].endswith("is better than x")
