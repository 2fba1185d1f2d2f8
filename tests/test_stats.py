import numpy as np
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
