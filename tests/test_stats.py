"""bench.stats: exact tests, built cases, and the calibration of the family verdict.

Calibration model (`_gaps`): a shared test set of 2,000 images with difficulty z ~ N(-7, 3) in
logits (error 2.3%, two runs of the same recipe disagree on ~3% of images); each run's logit
shift = family effect + search effect per (family, replicate) ~ N(0, 0.15) + training-seed
effect per run ~ N(0, 0.07); 2 seeds per finalist. The per-replicate gap d_r then has
sd ≈ 0.44 pp (σ_rep): ~55% of its variance is the search, ~40% the test images, ~5% the
seeds. "Differ image by image": each family also has its own per-image logit term ~ N(0, 1)
(disagreement 3.8%, same population accuracy), so the 2,000 images shift every replicate's
gap the same way.

Measured with these tests' seeds (A/A and "differ image by image": n_sim = 1000 studies each,
Monte Carlo sd ≈ 0.007, asserted ≤ 0.05 + 2·sd = 0.064; power: n_sim = 500; σ_rep = 0.44 pp):

    k    A/A false "better/worse"   differ image by image (replicate spread only)   power, 3 σ_rep
    1    0.000                      –                                                –
    3    0.038                      –                                                –
    5    0.050                      –                                                1.000
    10   0.044                      0.032 (0.115)                                    –

Not asserted, measured once with the same model (n_sim = 500): power 0.88 at k = 3 for
3 σ_rep; at k = 5, 0.44 for 1 σ_rep and 0.97 for 2 σ_rep; at k = 10, 0.87 for 1 σ_rep.
"""

from fractions import Fraction
from math import comb, sqrt

import numpy as np
import pandas as pd
import pytest

from bench import stats

ALPHA = 0.05
N_SIM = 1000
LIMIT = ALPHA + 2 * sqrt(ALPHA * (1 - ALPHA) / N_SIM)
IMAGES, SEEDS, TAU_SEARCH, TAU_SEED = 2000, 2, 0.15, 0.07


# ---------------------------------------------------------------- exact pieces

def test_mcnemar_exact_values():
    assert stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    # 2 vs 8: P(X <= 2) for Binomial(10, 1/2) = 56/1024, two-sided doubles it
    assert stats.mcnemar_p(8, 2) == pytest.approx(112 / 1024)
    assert stats.mcnemar_p(60, 0) == pytest.approx(1.7e-18, rel=0.02)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_mcnemar_never_rejects_more_often_than_alpha_under_h0(alpha):
    # under H0 the family-only count of n discordant images is Binomial(n, 1/2): sum, exactly,
    # the probability of every count the test rejects
    for n in range(1, 201):
        size, a = Fraction(0), 0
        while a <= n and stats.mcnemar_p(a, n - a) <= alpha:
            assert stats.mcnemar_p(n - a, a) == stats.mcnemar_p(a, n - a)
            size += Fraction(comb(n, a), 2**n) * (2 if 2 * a != n else 1)
            a += 1
        assert 2 * a <= n + 1 and size <= alpha, (n, float(size))


def test_holm_against_a_hand_computed_case():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept at 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == [0.02]  # one comparison: nothing to correct


# ---------------------------------------------------------------- built stores

def _store(runs: dict, val: dict, n: int = 10_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """finalists and predictions from {(replicate, family): [correct array or None per seed]};
    None is a diverged run. `val[(replicate, family)]` or `val[family]`: validation accuracy.
    Every family gets its own seed values (as finalize derives them), so pairs go by slot."""
    labels = np.arange(n) % 10
    rows, preds = [], []
    for (replicate, family), seeds in runs.items():
        for i, correct in enumerate(seeds):
            seed = 1000 * (sum(map(ord, family)) % 97) + 10 * replicate + i
            acc = val.get((replicate, family), val.get(family))
            if correct is None:
                rows.append({"replicate": replicate, "family": family, "rank": 1, "seed": seed,
                             "val_acc": np.nan, "test_acc": np.nan, "trial_val_acc": acc})
                continue
            pred = np.where(correct, labels, (labels + 1) % 10)
            rows.append({"replicate": replicate, "family": family, "rank": 1, "seed": seed,
                         "val_acc": acc, "test_acc": float(np.mean(correct)),
                         "trial_val_acc": acc})
            preds.append(pd.DataFrame({"replicate": replicate, "family": family, "rank": 1,
                                       "seed": seed, "index": np.arange(n), "label": labels,
                                       "pred": pred}))
    columns = ["replicate", "family", "rank", "seed", "index", "label", "pred"]
    return pd.DataFrame(rows), pd.concat([pd.DataFrame(columns=columns), *preds],
                                         ignore_index=True)


def _wrong_first(w: int, n: int = 10_000) -> np.ndarray:
    correct = np.ones(n, bool)
    correct[:w] = False
    return correct


def _contradicting(agree: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(3 seeds, 10k) reference and family: the family fixes 60 of the reference's mistakes on
    seed pairs 0 and 2, and breaks 60 of its right answers on pair 1 (unless `agree`)."""
    rng = np.random.default_rng(3)
    ref = rng.random((3, 10_000)) < 0.98
    fam = ref.copy()
    for i in range(3):
        if i == 1 and not agree:
            fam[i, np.flatnonzero(ref[i])[:60]] = False
        else:
            fam[i, np.flatnonzero(~ref[i])[:60]] = True
    return ref, fam


def test_contradicting_seed_pairs_are_not_separable():
    ref, fam = _contradicting()
    finalists, preds = _store({(0, "b"): list(ref), (0, "a"): list(fam)}, {"a": 0.97, "b": 0.98})
    rows = stats.verdicts(finalists, preds, resamples=2000)
    rep = rows[rows["level"] == "replicate"].iloc[0]
    assert (rep["reference"], rep["family"], rep["n"]) == ("b", "a", 3)
    assert rep["gap_pp"] == pytest.approx(0.2)  # (60 - 60 + 60) / 3 images per 10k
    assert rep["p"] == 1.0 and rep["verdict"] == "not separable"
    assert "seed pair 1 does not go the mean gap's way" in rep["note"]
    assert rep["low_pp"] < 0 < rep["high_pp"]
    # the same finalists with every pair agreeing are separable
    ref, fam = _contradicting(agree=True)
    finalists, preds = _store({(0, "b"): list(ref), (0, "a"): list(fam)}, {"a": 0.97, "b": 0.98})
    rep = stats.verdicts(finalists, preds, resamples=2000).iloc[1]
    assert rep["verdict"] == "better" and rep["p"] == pytest.approx(stats.mcnemar_p(60, 0))
    assert 0 < rep["low_pp"] < 0.6 < rep["high_pp"]


def test_two_level_bootstrap_carries_seed_noise():
    ref, fam = _contradicting()
    diff = fam.astype(np.int8) - ref.astype(np.int8)
    low, high = stats._bootstrap_gap(diff, 4000)
    img_low, img_high = stats._bootstrap_gap(diff, 4000, over_seeds=False)
    assert high - low > 3 * (img_high - img_low)  # seeds disagree: their noise dominates
    assert img_low > 0 > low
    ref, fam = _contradicting(agree=True)  # seeds agree: about the images-only width
    diff = fam.astype(np.int8) - ref.astype(np.int8)
    low, high = stats._bootstrap_gap(diff, 4000)
    img_low, img_high = stats._bootstrap_gap(diff, 4000, over_seeds=False)
    assert img_high - img_low <= high - low < 1.5 * (img_high - img_low)
    assert stats._bootstrap_gap(np.zeros((2, 50), np.int8)) == (0.0, 0.0)


def _three_replicates(wrong: dict[str, list[int]], val: dict[str, float], seeds: int = 2):
    return _store({(r, f): [_wrong_first(w[r])] * seeds for f, w in wrong.items()
                   for r in range(len(w))}, val)


WRONG = {"a": [300, 310, 305], "b": [450, 465, 455], "c": [302, 320, 300], "d": [150, 165, 150]}
VAL = {"a": 0.99, "b": 0.98, "c": 0.97, "d": 0.96}


def test_verdicts_across_replicates_with_holm_and_answer():
    finalists, preds = _three_replicates(WRONG, VAL)
    rows = stats.verdicts(finalists, preds, resamples=2000)
    assert list(rows.columns) == list(stats.VERDICT_COLUMNS)
    fam = rows[rows["level"] == "family"].set_index("family")
    assert list(fam.index) == ["b", "c", "d"] and set(fam["reference"]) == {"a"}
    assert fam["replicate"].isna().all() and list(fam["n"]) == [3, 3, 3]
    assert fam.loc["b", "gap_pp"] == pytest.approx(-(150 + 155 + 150) / 300)
    assert list(fam["verdict"]) == ["worse", "not separable", "better"]
    assert list(fam["wins"]) == [0, 1, 3]
    assert list(fam["p_reference_better"]) == pytest.approx([1, 2 / 3, 0])
    assert fam.loc["c", "p_low"] == 0 and fam.loc["c", "p_high"] == 1
    assert list(fam["p_adjusted"]) == pytest.approx(stats.holm(list(fam["p"])))
    assert (fam["low_pp"] < fam["gap_pp"]).all() and (fam["gap_pp"] < fam["high_pp"]).all()
    assert fam.loc["b", "high_pp"] < 0 < fam.loc["d", "low_pp"]
    rep = rows[rows["level"] == "replicate"]
    assert list(rep["replicate"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rep["wins"].isna().all() and rep["p_reference_better"].isna().all()
    assert (rep["n"] == 2).all()
    for _, one in rep.groupby("replicate"):
        assert list(one["p_adjusted"]) == pytest.approx(stats.holm(list(one["p"])))
    pd.testing.assert_frame_equal(rows, stats.verdicts(finalists, preds, resamples=2000))

    line = stats.answer(rows, 3)
    assert line.startswith("a (best on validation, median over 3 replicates) vs b: b worse by "
                           "1.52 pp [")
    assert "won 0 of 3 replicates, P(a > b) = 1.00, Holm p = " in line
    assert "vs c: c not separable from a at this budget, gap −0.02 pp [" in line
    assert "vs d: d better by 1.50 pp [+" in line and "won 3 of 3" in line
    assert "Holm-adjusted over 3 comparisons" in line and "one replicate" not in line

    table = stats.verdict_table(rows, "family")
    assert list(table.columns) == ["family", "replicates", "gap pp", "95% low pp",
                                   "95% high pp", "p unadjusted", "p Holm", "won",
                                   "P(ref > family)", "P 95% low", "P 95% high", "verdict",
                                   "note"]
    assert list(table["family"]) == ["b", "c", "d"]
    assert list(stats.verdict_table(rows, "replicate").columns) == [
        "replicate", "family", "seed pairs", "gap pp", "95% low pp", "95% high pp",
        "p McNemar", "p Holm", "verdict", "note"]
    with pytest.raises(ValueError, match="valid: family, replicate"):
        stats.verdict_table(rows, "seed")


def test_one_replicate_speaks_about_the_finalists_not_the_family():
    finalists, preds = _three_replicates({f: w[:1] for f, w in WRONG.items()}, VAL)
    rows = stats.verdicts(finalists.drop(columns="replicate"),
                          preds.drop(columns="replicate"), resamples=2000)  # an old store
    fam = rows[rows["level"] == "family"]
    assert (fam["verdict"] == "not separable").all() and fam["p"].isna().all()
    assert fam["note"].str.contains("one replicate speaks about these finalists").all()
    assert list(fam["wins"]) == [0, 0, 1] and list(fam["n"]) == [1, 1, 1]
    rep = rows[rows["level"] == "replicate"].set_index("family")
    assert list(rep["verdict"]) == ["worse", "not separable", "better"]
    line = stats.answer(rows, 1)
    assert line.startswith("a (best on validation, 1 replicate): one replicate speaks about "
                           "these finalists, not the family: a family verdict needs ≥ 3 "
                           "replicates (REPLICATES=3). ")
    assert "b's finalist worse by 1.50 pp" in line and "d's finalist better by 1.50 pp" in line
    assert "c's finalist not separable from a's" in line


def test_a_diverged_family_keeps_its_rows():
    runs = {(r, f): [_wrong_first(w[r])] * 2 for f, w in WRONG.items() if f in "ab"
            for r in range(3)}
    runs |= {(r, "c"): [None, None] for r in range(3)}  # rank-1 diverged on every seed
    runs[(1, "b")] = [None, None]
    finalists, preds = _store(runs, VAL)
    scores = stats.replicate_scores(finalists)
    assert len(scores) == 9 and scores.loc[scores["family"] == "c", "test_acc"].isna().all()
    assert list(scores.loc[scores["family"] == "c", "diverged"]) == [2, 2, 2]
    rows = stats.verdicts(finalists, preds, resamples=1000)
    fam = rows[rows["level"] == "family"].set_index("family")
    assert list(fam.index) == ["b", "c"]
    assert fam.loc["c", "verdict"] == "not separable" and fam.loc["c", "n"] == 0
    assert np.isnan(fam.loc["c", "p"]) and np.isnan(fam.loc["c", "p_adjusted"])
    assert "c diverged in replicates 0, 1, 2" in fam.loc["c", "note"]
    assert "no replicate where both were scored" in fam.loc["c", "note"]
    assert fam.loc["b", "n"] == 2 and "b diverged in replicate 1" in fam.loc["b", "note"]
    assert fam.loc["b", "p_adjusted"] == fam.loc["b", "p"]  # the only testable comparison
    rep = rows[(rows["level"] == "replicate") & (rows["family"] == "c")]
    assert len(rep) == 3 and (rep["verdict"] == "not separable").all()
    assert rep["note"].iloc[0] == "c diverged on every seed in replicate 0"
    assert "c: no family verdict (c diverged in replicates 0, 1, 2" in stats.answer(rows, 3)


def test_one_scored_family_or_none_gives_rows_with_notes():
    good = [_wrong_first(100)] * 2
    finalists, preds = _store({(0, "a"): good, (1, "a"): good}, {"a": 0.99})
    rows = stats.verdicts(finalists, preds)
    assert len(rows) == 1 and rows["note"].iloc[0] == "only one family (a): nothing to compare"
    assert stats.answer(rows, 2) == "No comparison: only one family (a): nothing to compare."
    finalists, preds = _store({(0, "a"): good, (0, "b"): [None, None]}, VAL)
    rows = stats.verdicts(finalists, preds)
    assert list(rows["level"]) == ["family", "replicate"] and list(rows["family"]) == ["b", "b"]
    assert (rows["verdict"] == "not separable").all()
    assert "b diverged in replicate 0" in rows["note"].iloc[0]
    finalists, _ = _store({(0, "a"): [None], (0, "b"): [None]}, VAL)
    rows = stats.verdicts(finalists, pd.DataFrame())
    assert list(rows["family"]) == ["a", "b"] and (rows["reference"] == "").all()
    assert rows["note"].str.contains("no family has a finite validation accuracy").all()
    assert stats.answer(rows, 1).startswith("No comparison: no family has a finite")


def test_reference_is_the_median_on_validation_never_test():
    # a: median val 0.99 (mean 0.977); b: 0.98 every time (mean higher); b wins on test
    val = {(0, "a"): 0.99, (1, "a"): 0.95, (2, "a"): 0.99, (0, "b"): 0.98, (1, "b"): 0.98,
           (2, "b"): 0.98}
    finalists, preds = _store({(r, f): [_wrong_first(w)] for r in range(3)
                               for f, w in (("a", 300), ("b", 200))}, val)
    scores = stats.replicate_scores(finalists)
    assert scores.groupby("family")["val_acc"].mean().idxmax() == "b"
    assert scores.groupby("family")["test_acc"].median().idxmax() == "b"
    assert stats.reference_family(scores) == "a"
    assert set(stats.verdicts(finalists, preds)["reference"]) == {"a"}


def test_replicate_scores_and_correctness():
    correct = _wrong_first(10, 100)
    finalists, preds = _store({(0, "a"): [correct, None, correct], (1, "a"): [correct],
                               (1, "b"): [None]}, {"a": 0.9, "b": 0.8}, n=100)
    finalists = pd.concat([finalists, finalists.iloc[:1].assign(rank=2, test_acc=0.5)])
    scores = stats.replicate_scores(finalists)
    assert list(zip(scores["replicate"], scores["family"], scores["seeds"], scores["diverged"],
                    strict=True)) == [(0, "a", 2, 1), (1, "a", 1, 0), (1, "b", 0, 1)]
    assert scores["test_acc"].iloc[0] == pytest.approx(0.9)
    assert stats.correctness(preds, "a").shape == (3, 100)
    assert stats.correctness(preds, "a", replicate=0).shape == (2, 100)
    assert stats.correctness(preds.drop(columns="replicate"), "a").sum() == 270


# ---------------------------------------------------------------- calibration

def _gaps(k: int, n: int, rng: np.random.Generator, shift: float = 0.0,
          own: float = 0.0) -> np.ndarray:
    """(n studies, k replicates, images) per-image gaps, family − reference, seeds averaged.

    A run gets image i wrong with probability sigmoid(z_i + effect): z is the image's
    difficulty (plus the family's own per-image term `own`), effect = search (per family and
    replicate) + training seed; the family's effect is lower by `shift` (a better family).
    """
    z = rng.normal(-7, 3, (n, 1, 1, 1, IMAGES)) + own * rng.normal(size=(n, 2, 1, 1, IMAGES))
    effect = (rng.normal(0, TAU_SEARCH, (n, 2, k, 1, 1))
              + rng.normal(0, TAU_SEED, (n, 2, k, SEEDS, 1)))
    effect[:, 1] -= shift
    # wrong with probability 1/(1 + e^-(z + effect)): right iff u (1 + e^-z e^-effect) >= 1
    ez, ee = np.exp(-z).astype(np.float32), np.exp(-effect).astype(np.float32)
    u = rng.random((n, 2, k, SEEDS, IMAGES), dtype=np.float32)
    v = u * ez
    v *= ee
    v += u
    right = (v >= 1).sum(3, dtype=np.int8)
    return (right[:, 1] - right[:, 0]) / SEEDS


def _simulate(k: int, seed: int, shift: float = 0.0, own: float = 0.0, n_sim: int = N_SIM,
              image_term: tuple[bool, ...] = (True,)) -> tuple[list[np.ndarray], np.ndarray]:
    """Family-level verdicts of `n_sim` simulated studies (one comparison each, so Holm is the
    identity), with and/or without the test-image term, and every replicate's gap d_r."""
    rng = np.random.default_rng(seed)
    verdicts, gaps = [[] for _ in image_term], []
    for start in range(0, n_sim, 100):
        for x in _gaps(k, min(100, n_sim - start), rng, shift, own):
            d = x.mean(1)
            gaps.append(d)
            for out, term in zip(verdicts, image_term, strict=True):
                row = stats._family_comparison("ref", "fam", d, x if term else None, [],
                                               resamples=200)
                out.append(stats._decide([row], ALPHA)[0].verdict.value)
    return [np.array(v) for v in verdicts], np.concatenate(gaps)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_aa_studies_end_not_separable(k):
    (verdicts,), _ = _simulate(k, seed=k)
    rate = float(np.mean(verdicts != "not separable"))
    assert rate <= LIMIT, f"k={k}: false better/worse in {rate:.3f} of {N_SIM} A/A studies"


def test_families_that_differ_image_by_image_but_not_on_average_end_not_separable():
    # the 2,000 shared images shift every replicate's gap alike: the spread over 10 replicates
    # alone (no test-image term) calls these families "better/worse" too often
    (verdicts, spread_only), _ = _simulate(10, seed=110, own=1.0, image_term=(True, False))
    rate, naive = (float(np.mean(v != "not separable")) for v in (verdicts, spread_only))
    assert rate <= LIMIT < naive, (f"false better/worse in {rate:.3f} of {N_SIM} studies "
                                   f"({naive:.3f} without the test-image term)")


def test_a_gap_of_three_replicate_sigmas_is_found_at_five_replicates():
    _, aa = _simulate(5, seed=50, n_sim=300, image_term=())
    sigma = float(aa.std(ddof=1))  # σ_rep: sd of the per-replicate gap in A/A studies
    z = np.random.default_rng(1).normal(-7, 3, 400_000)
    low, high = 0.0, 5.0  # the logit shift whose population accuracy gap is 3 σ_rep
    for _ in range(40):
        shift = (low + high) / 2
        gap = np.mean(1 / (1 + np.exp(-z)) - 1 / (1 + np.exp(-(z - shift))))
        low, high = (shift, high) if gap < 3 * sigma else (low, shift)
    (verdicts,), d = _simulate(5, seed=55, shift=shift, n_sim=500)
    power = float(np.mean(verdicts == "better"))
    assert 0.003 < sigma < 0.006 and d.mean() == pytest.approx(3 * sigma, rel=0.1)
    assert power >= 0.8, f"'better' in {power:.3f} of 500 studies (σ_rep {sigma * 100:.2f} pp)"
    assert not (verdicts == "worse").any()
