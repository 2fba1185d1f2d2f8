import numpy as np
import optuna
import pandas as pd
import pytest

from bench import curves, study
from bench.space import SpaceError


def _trials(rows):
    """rows: (family, replicate, value or None for pruned, seconds) in the order they started."""
    return pd.DataFrame([{
        "family": f, "replicate": r, "state": "COMPLETE" if v is not None else "PRUNED",
        "value": v, "wall_seconds": s, "stop_reason": "" if v is not None else "pruned",
        "datetime_start": pd.Timestamp("2026-01-01") + pd.Timedelta(seconds=i)}
        for i, (f, r, v, s) in enumerate(rows)])


def test_expected_best_is_the_hand_computed_expectation_of_the_max_of_n():
    values = np.array([0.91, 0.95, 0.93, 0.97, 0.90])
    v = np.sort(values)
    n_all = len(v)
    for n in (1, 2, 3, 10):
        # E[max of n draws with replacement] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n]
        hand = sum(v[i - 1] * ((i / n_all) ** n - ((i - 1) / n_all) ** n)
                   for i in range(1, n_all + 1))
        assert curves.expected_best(values, np.array([n]))[0] == pytest.approx(hand)
    assert curves.expected_best(values, np.array([1]))[0] == pytest.approx(values.mean())


def test_expected_best_bands_hold_the_estimate():
    values = np.random.default_rng(0).uniform(0.9, 0.99, 40)
    ns = np.array([1, 5, 20])
    low, high = curves.expected_best_bands(values, ns)
    mid = curves.expected_best(values, ns)
    assert (low <= mid).all() and (mid <= high).all() and (np.diff(mid) > 0).all()


def test_probability_best_for_two_families_by_hand():
    # a: {0.90, 0.95}, b: {0.90, 0.92}; one trial each: a wins on 0.95 (1/2), ties share
    # P(a=0.90, b=0.90) = 1/4 -> 1/8; so 1/2 + 1/8 = 0.625
    p = curves.probability_best({"a": np.array([0.90, 0.95]), "b": np.array([0.90, 0.92])},
                                np.array([1, 2]))
    assert p.loc[0, "a"] == pytest.approx(0.625) and p.loc[0, "b"] == pytest.approx(0.375)
    # two trials: a's max is 0.95 unless both draws are 0.90 (1/4); then a ties only with
    # b's 0.90-0.90 (1/4): 3/4 + 1/4 * 1/4 * 1/2 = 0.78125
    assert p.loc[1, "a"] == pytest.approx(0.78125)


def test_best_so_far_steps_by_seconds_and_by_trials():
    t = _trials([("a", 0, None, 2.0), ("a", 0, 0.90, 3.0), ("a", 0, None, 1.0),
                 ("a", 0, 0.85, 1.0), ("a", 0, 0.95, 4.0)])
    by_s = curves.best_so_far(t, "seconds")
    assert by_s["x"].tolist() == [2.0, 5.0, 6.0, 7.0, 11.0]
    assert np.isnan(by_s["best_error"].iloc[0])
    # a pruned trial keeps the best so far (it is not a gap in the curve)
    assert by_s["best_error"].iloc[1:].round(6).tolist() == [0.1, 0.1, 0.1, 0.05]
    assert curves.best_so_far(t, "trials")["x"].tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="by='hours'"):
        curves.best_so_far(t, "hours")


def test_the_answer_holds_from_the_budget_after_the_last_crossing():
    # b leads early in both replicates; a overtakes it after 5 trials and stays ahead
    rows = []
    for r in (0, 1):
        rows += [("a", r, 0.80, 1.0)] * 5 + [("a", r, 0.99, 1.0)] * 5
        rows += [("b", r, 0.90, 1.0)] * 10
    h = curves.holding(_trials(rows), "trials")
    assert h.order == ("a", "b") and h.holds_from == 6 and h.end == 10
    assert h.agree == 2 and h.k == 2 and not h.still_crossing
    assert curves.describe(h).startswith(
        "tuning curves (median best-so-far validation error over 2 replicates): a ahead from "
        "6 trials of tuning per family on (of 10 trials), its own best the lowest in 2 of 2")
    table = curves.checkpoints(_trials(rows), "trials")
    assert list(table.columns) == ["family", "¼ (3 trials) error %", "½ (5 trials) error %",
                                   "full (10 trials) error %"]
    assert table.set_index("family").loc["a"].round(6).tolist() == [0.2, 0.2, 0.01]


def test_curves_that_cross_in_the_last_tenth_say_so():
    rows = []
    for r in (0, 1):
        rows += [("a", r, 0.80, 1.0)] * 9 + [("a", r, 0.99, 1.0)]
        rows += [("b", r, 0.90, 1.0)] * 10
    h = curves.holding(_trials(rows), "trials")
    assert h.still_crossing and "the curves still cross" in curves.describe(h)


def test_a_family_may_name_its_sampler_but_not_an_unknown_one():
    families = {"tpe": {"sampler": "tpe"}, "random": {"sampler": "random"},
                "qmc": {"sampler": "qmc"}}
    assert study.family_samplers(families) == {"tpe": "tpe", "random": "random", "qmc": "qmc"}
    with pytest.raises(SpaceError, match="sampler='grid'; valid: tpe, random, qmc"):
        study.family_samplers({"x": {"sampler": "grid"}})
    definition = study.Study(question="q", families=families,
                             space=study.Space(archs=("mlp",)))
    assert isinstance(study.make_sampler(definition, "random", 1), optuna.samplers.RandomSampler)
    assert isinstance(study.make_sampler(definition, "qmc", 1), optuna.samplers.QMCSampler)
    assert isinstance(study.make_sampler(definition, "tpe", 1), optuna.samplers.TPESampler)
    # the same space under different samplers is a comparison, not the same family twice
    assert len(study.family_spaces(families, study.Space(archs=("mlp",)))) == 3
