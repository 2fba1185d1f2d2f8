"""Tuning curves: how the best validation error falls as a family's tuning budget grows.

A study's answer is an answer at its budget. Per (family, replicate) the best validation error so
far is a step function of the family's training seconds (a timed study's budget) or of its
trials; per family the median over replicates with the band from the best to the worst
replicate shows how much the search itself varies, and where two families' medians cross. The
answer holds from the budget after which the families' order no longer changes.

For i.i.d. trials (random or quasi-random search, not TPE, whose trials depend on the earlier
ones) Dodge et al. 2019's expected best validation accuracy after n trials, with opda's exact,
distribution-free confidence bands (Lourie et al.), says the same without the replicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.outcomes import LOST
from bench.store import with_replicate

IID_SAMPLERS = ("random", "qmc")  # samplers whose trials are i.i.d.: expected-best curves apply
POINTS = 60  # grid points of a seconds axis


def best_so_far(trials: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per (family, replicate): after each trial, the budget used (`x`: cumulative training
    seconds, or trials) and the best validation error of the completed trials so far (NaN
    before the first one). Trials are taken in the order they started."""
    if by not in ("seconds", "trials"):
        raise ValueError(f"by={by!r}: expected 'seconds' or 'trials'")
    trials = with_replicate(trials)
    used = trials[~trials["stop_reason"].fillna("").isin(LOST) & (trials["state"] != "RUNNING")]
    rows = []
    for (family, replicate), df in used.sort_values("datetime_start").groupby(
            ["family", "replicate"], sort=False):
        x = (df["wall_seconds"].fillna(0).cumsum() if by == "seconds"
             else pd.Series(np.arange(1, len(df) + 1), index=df.index))
        best = df["value"].where(df["state"] == "COMPLETE").cummax().ffill()
        rows.append(pd.DataFrame({"family": family, "replicate": replicate,
                                  "x": x.to_numpy(dtype=float),
                                  "best_error": 1 - best.to_numpy(dtype=float)}))
    columns = ["family", "replicate", "x", "best_error"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)


def curve(trials: pd.DataFrame, by: str, points: int = POINTS) -> pd.DataFrame:
    """Per family on one budget grid: median, lowest and highest best-so-far error over the
    replicates that have a completed trial by then (`replicates` counts them)."""
    return _on_grid(best_so_far(trials, by), by, points)


def _on_grid(steps: pd.DataFrame, by: str, points: int = POINTS) -> pd.DataFrame:
    if steps.empty:
        return pd.DataFrame(columns=["family", "x", "median", "low", "high", "replicates"])
    end = steps["x"].max()
    grid = (np.arange(1, int(end) + 1, dtype=float) if by == "trials"
            else np.linspace(end / points, end, points))
    rows = []
    for family, df in steps.groupby("family", sort=False):
        at = np.full((df["replicate"].nunique(), len(grid)), np.nan)
        for i, (_, rep) in enumerate(df.groupby("replicate")):
            # the best after the last trial that ended at or before each grid point
            idx = np.searchsorted(rep["x"].to_numpy(), grid, side="right") - 1
            values = rep["best_error"].to_numpy()
            at[i] = np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)
            # past this replicate's own end its best stays where it ended
        with np.errstate(all="ignore"):
            counted = (~np.isnan(at)).sum(0)
            rows.append(pd.DataFrame({
                "family": family, "x": grid, "median": _nanquantile(at, 0.5),
                "low": _nanquantile(at, 0.0), "high": _nanquantile(at, 1.0),
                "replicates": counted}))
    return pd.concat(rows, ignore_index=True)


def _nanquantile(a: np.ndarray, q: float) -> np.ndarray:
    out = np.full(a.shape[1], np.nan)
    seen = (~np.isnan(a)).any(0)
    out[seen] = np.nanquantile(a[:, seen], q, axis=0)
    return out


@dataclass(frozen=True)
class Holding:
    """From which budget a study's ranking holds (medians over replicates)."""

    order: tuple[str, ...]  # families best first at the full budget
    holds_from: float  # the budget from which the order of the medians no longer changes
    end: float  # the full budget
    unit: str  # "s" (training seconds per family) or "trials"
    agree: int  # replicates in which the leader's own best is the lowest at the full budget
    k: int  # replicates

    @property
    def still_crossing(self) -> bool:
        """The order changed in the last tenth of the budget: a longer one may change it."""
        return self.holds_from > 0.9 * self.end


def holding(trials: pd.DataFrame, by: str) -> Holding | None:
    """The ranking at the full budget and the budget it holds from; None with < 2 families."""
    steps = best_so_far(trials, by)
    c = _on_grid(steps, by)
    if c.empty or c["family"].nunique() < 2:
        return None
    wide = c.pivot(index="x", columns="family", values="median").dropna()
    if wide.empty:
        return None
    order = tuple(wide.iloc[-1].sort_values().index)
    same = [tuple(row.sort_values().index) == order for _, row in wide.iterrows()]
    first = len(same)
    while first > 0 and same[first - 1]:
        first -= 1
    finals = steps.groupby(["replicate", "family"])["best_error"].last().unstack()
    agree = int((finals.idxmin(axis=1) == order[0]).sum())
    return Holding(order=order, holds_from=float(wide.index[first]), end=float(wide.index[-1]),
                   unit="s" if by == "seconds" else "trials", agree=agree, k=len(finals))


def describe(h: Holding | None) -> str:
    """The answer's budget in words: from which budget the ranking held, or that it did not."""
    if h is None:
        return ""
    def amount(x: float) -> str:
        return f"{x:,.0f} s" if h.unit == "s" else f"{x:.0f} trial{'s' * (round(x) != 1)}"

    budget, end = amount(h.holds_from), amount(h.end)
    ranking = " < ".join(h.order)
    if h.still_crossing:
        return (f"tuning curves (median best-so-far validation error over {h.k} replicates): "
                f"the families' order ({ranking} error) changed until {budget} of the {end} "
                "per family: the curves still cross, a longer budget may change the answer")
    return (f"tuning curves (median best-so-far validation error over {h.k} replicates): "
            f"{h.order[0]} ahead from {budget} of tuning per family on (of {end}), its own "
            f"best the lowest in {h.agree} of {h.k} replicates")


def checkpoints(trials: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per family: the median best-so-far validation error at a quarter, half and the full
    budget, so the curve can be read on a terminal."""
    c = curve(trials, by)
    if c.empty:
        return pd.DataFrame()
    end = c["x"].max()
    unit = "s" if by == "seconds" else "trials"
    marks = {name: share * end if by == "seconds" else max(1.0, np.ceil(share * end))
             for name, share in (("¼", 0.25), ("½", 0.5), ("full", 1.0))}
    rows = []
    for family, df in c.groupby("family", sort=False):
        row = {"family": family}
        for name, x in marks.items():
            at = df[df["x"] <= x + 1e-9]
            row[f"{name} ({x:,.0f} {unit}) error %"] = at["median"].iloc[-1] if len(at) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def expected_best(values: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Dodge et al. 2019's expected best validation accuracy after n i.i.d. trials, from the
    observed trials' accuracies (opda's average tuning curve of the empirical distribution)."""
    from opda.nonparametric import EmpiricalDistribution

    return np.asarray(EmpiricalDistribution(np.asarray(values, float)).average_tuning_curve(ns))


def expected_best_bands(values: np.ndarray, ns: np.ndarray,
                        confidence: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """opda's distribution-free simultaneous band of the expected best after n trials (the
    tuning curve of the CDF's lower and upper confidence bands), for accuracies in [0, 1].

    The DKW band: validation accuracies are multiples of 1/(validation images) and tie, and
    opda's exact (ld, ks) bands keep their coverage only for continuous scores; DKW's holds for
    any distribution, at the price of a wider band."""
    from opda.nonparametric import EmpiricalDistribution

    low_cdf, _, high_cdf = EmpiricalDistribution.confidence_bands(
        np.asarray(values, float), confidence, a=0.0, b=1.0,
        generator=np.random.default_rng(0), method="dkw", n_jobs=1)
    # the upper CDF band puts mass on lower values: the lower curve of the expected best
    return (np.asarray(high_cdf.average_tuning_curve(ns)),
            np.asarray(low_cdf.average_tuning_curve(ns)))


def probability_best(values: dict[str, np.ndarray], ns: np.ndarray) -> pd.DataFrame:
    """P(family f's best of n i.i.d. trials is the best of all families' bests of n), from each
    family's empirical distribution of trial accuracies (ties shared equally)."""
    families = list(values)
    support = np.unique(np.concatenate([np.asarray(v, float) for v in values.values()]))
    rows = []
    for n in ns:
        # P(max of n <= s) and P(max of n < s) for every family on the pooled support
        le = {f: (np.searchsorted(np.sort(v), support, side="right") / len(v)) ** n
              for f, v in values.items()}
        lt = {f: (np.searchsorted(np.sort(v), support, side="left") / len(v)) ** n
              for f, v in values.items()}
        row = {"n": int(n)}
        for f in families:
            at = le[f] - lt[f]  # P(f's max equals s)
            others_below = np.prod([lt[g] for g in families if g != f], axis=0)
            # ties: with every other family at or below s, share the win; computed exactly for
            # two families, and with the no-tie bound for more (ties are rare on 10k images)
            others_le = np.prod([le[g] for g in families if g != f], axis=0)
            row[f] = float(np.sum(at * (others_below + others_le) / 2))
        rows.append(row)
    return pd.DataFrame(rows)
