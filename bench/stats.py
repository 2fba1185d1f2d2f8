"""The verdicts of a study: is a family better than the reference under this tuning budget?

A study asks about *families under a tuning budget*. Most of its variance is the search itself
(which configurations a study seed finds), then the split and the training seed, and last the
10,000 test images. One study run (a replicate) therefore speaks about its two finalists, not
about the families: the unit of a family verdict is the replicate.

Family level (`level == "family"`). The reference is the family with the highest median, over
replicates, of its rank-1 finalist's validation accuracy (never test). For each other family,
d_r = family − reference test accuracy in replicate r (rank-1 finalists, mean over their
training seeds), over the k replicates where both were scored. The gap is the *mean* of d_r
(the quantity the interval and p are about; a median would not be centred in a t interval).
Its variance is that of the grand mean of a two-way crossed random-effects table x[r, i]
(replicates × test images, x = per-image correctness gap averaged over seeds):

    V = s²(d_r)/k + max(0, MS_images − MS_residual)/(k·N)

s²(d_r)/k carries search, split, seed and each replicate's own image noise; the second term is
the test-image sampling noise shared by every replicate (the same N images), which the spread of
d_r cannot show. It is the suggested s²(d)/k + var_i(δ_i)/N without the residual that
var_i(δ_i) and s²(d) would otherwise both count (δ_i = x[:, i] averaged over replicates).
p and the 95% interval use t with k − 1 degrees of freedom (conservative: the image term has
N − 1). The calibration tests (tests/test_stats.py) measure 0-5% false "better/worse" for A/A
studies at k = 1, 3, 5, 10, also when the families differ image by image but not on average,
and ≥ 80% power for a gap of 3 replicate-σ at k = 5. Holm's step-down correction runs across
the family-level comparisons. With k < 2 there is no family test: one replicate speaks about
these finalists, not the family. Wins in k and P(reference > family) over replicates
(Bouthillier et al. 2021, with a 95% bootstrap interval) describe the same d_r.

Replicate level (`level == "replicate"`): a diagnostic of two finalists on the same images.
Seed slot i of the family is paired with slot i of the reference; one exact McNemar test per
pair, the largest p kept, and p = 1 unless every pair's discordance goes the way of the mean
gap. The interval is a two-level bootstrap (seed pairs, then images), so training-seed noise
counts. "better/worse" needs the Holm-adjusted p (within the replicate) below alpha *and* the
interval on the gap's side of 0.

Everything here is structured (`Comparison`, a DataFrame with `VERDICT_COLUMNS`); `answer` and
`verdict_table` are the only places verdicts become words or human column names.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, replace
from math import comb, isfinite, nan, sqrt

import numpy as np
import pandas as pd
from scipy import special

from bench.store import with_replicate

REPLICATES_FOR_A_VERDICT = 3  # what the k = 1 caveat asks for (REPLICATES=3)
RESAMPLES = 10_000  # bootstrap resamples (fixed rng seed: verdicts are deterministic)
_CHUNK = 1_000  # resamples per chunk: memory stays at chunk x distinct gap columns
_RNG_SEED = 0


class Verdict(str, enum.Enum):
    """The family against the reference."""

    BETTER = "better"
    WORSE = "worse"
    NOT_SEPARABLE = "not separable"


@dataclass(frozen=True)
class Comparison:
    """One family against the reference; the fields are described in `VERDICT_COLUMNS`."""

    level: str
    replicate: int | None
    reference: str
    family: str
    gap_pp: float
    low_pp: float
    high_pp: float
    p: float
    p_adjusted: float
    verdict: Verdict
    n: int
    wins: int | None
    p_reference_better: float
    p_low: float
    p_high: float
    note: str


VERDICT_COLUMNS: dict[str, str] = {
    "level": "family: across replicates (the verdict about the family); replicate: a "
             "diagnostic of the two rank-1 finalists of one replicate on the same test images",
    "replicate": "replicate (study seed offset) of a replicate-level row; null at family level",
    "reference": "the family best on validation (median over replicates of its rank-1 "
                 "finalist's validation accuracy), which every other family is compared with",
    "family": "the family compared with the reference",
    "gap_pp": "family − reference test accuracy, percentage points; family level: mean over "
              "the replicates where both were scored; replicate level: mean over seed pairs",
    "low_pp": "95% interval of gap_pp, low end (family: t over replicates + test-image "
              "variance; replicate: bootstrap over seed pairs, then images)",
    "high_pp": "95% interval of gap_pp, high end",
    "p": "two-sided p, unadjusted (family: t test; replicate: largest exact McNemar p over "
         "seed pairs, 1 unless every pair goes the gap's way); NaN when untestable",
    "p_adjusted": "p after Holm's correction across the comparisons of the same level (and "
                  "replicate); NaN when untestable",
    "verdict": "better / worse / not separable: the family against the reference (p_adjusted "
               "< alpha; at replicate level the interval must also exclude 0)",
    "n": "family level: replicates compared; replicate level: matched seed pairs",
    "wins": "family level: replicates where the family's test accuracy beats the "
            "reference's; null at replicate level",
    "p_reference_better": "family level: P(reference > family) over replicates (ties count "
                          "half; Bouthillier et al. 2021); NaN at replicate level",
    "p_low": "95% bootstrap interval (over replicates) of p_reference_better, low end",
    "p_high": "95% bootstrap interval of p_reference_better, high end",
    "note": "empty, or why there is no test or what it rests on (divergence, one replicate)",
}


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: under H0 each discordant image is a fair coin flip."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The i-th smallest p is multiplied by (m - i), i from 0, then made non-decreasing along that
    order and capped at 1: an adjusted p below alpha rejects with family-wise error <= alpha.
    """
    m = len(p_values)
    adjusted, running = [0.0] * m, 0.0
    for i, k in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - i) * p_values[k]))
        adjusted[k] = running
    return adjusted


def correctness(predictions: pd.DataFrame, family: str, rank: int = 1,
                replicate: int | None = None) -> np.ndarray:
    """Boolean (runs, images) array of a finalist's right answers, runs in store order
    (`replicate=None`: every replicate's runs)."""
    df = with_replicate(predictions)
    df = df[(df["family"] == family) & (df["rank"] == rank)]
    if replicate is not None:
        df = df[df["replicate"] == replicate]
    return np.stack([(g.sort_values("index")["pred"] == g.sort_values("index")["label"])
                     .to_numpy() for _, g in df.groupby(["replicate", "seed"], sort=False)])


def replicate_scores(finalists: pd.DataFrame) -> pd.DataFrame:
    """One row per (replicate, family): the rank-1 finalist's mean validation and test accuracy
    over its non-diverged seeds, how many seeds were scored and how many diverged.

    A family with rows in a replicate always has its row there (NaN when it diverged on every
    seed or has no rank-1 run), so nothing vanishes from a comparison unannounced.
    """
    df = with_replicate(finalists)
    families = list(dict.fromkeys(df["family"]))
    rows = []
    for replicate in sorted(df["replicate"].unique()):
        here = df[df["replicate"] == replicate]
        for family in families:
            runs = here[here["family"] == family]
            if runs.empty:
                continue
            first = runs[runs["rank"] == 1]
            ok = first["val_acc"].notna() & first["test_acc"].notna()
            rows.append({"replicate": int(replicate), "family": family,
                         "val_acc": first.loc[ok, "val_acc"].mean() if ok.any() else nan,
                         "test_acc": first.loc[ok, "test_acc"].mean() if ok.any() else nan,
                         "seeds": int(ok.sum()), "diverged": int((~ok).sum())})
    return pd.DataFrame(rows, columns=["replicate", "family", "val_acc", "test_acc", "seeds",
                                       "diverged"])


def reference_family(scores: pd.DataFrame) -> str:
    """The family with the highest median over replicates of its rank-1 validation accuracy
    (NaN skipped; first in store order on a tie). Test never chooses the reference."""
    median = scores.groupby("family", sort=False)["val_acc"].median()
    median = median[np.isfinite(median.to_numpy(float))]
    if median.empty:
        raise ValueError("no family has a finite validation accuracy (all diverged): "
                         "no reference to compare with")
    return str(median.idxmax())


def _family_test(d: np.ndarray, x: np.ndarray | None = None) -> tuple[float, float, float,
                                                                      float]:
    """Mean gap, 95% interval and two-sided p from per-replicate gaps `d` (k >= 2) and the
    (k, images) per-image gaps `x` they average (None: replicate spread only)."""
    d = np.asarray(d, float)
    k = len(d)
    gap, var = float(d.mean()), float(d.var(ddof=1)) / k
    if x is not None and np.shape(x)[1] > 1:
        x = np.asarray(x, float)
        images = x.shape[1]
        delta = x.mean(0)
        ms_images = k * float(delta.var(ddof=1))
        resid = x - x.mean(1, keepdims=True) - delta + x.mean()
        ms_resid = float(np.square(resid).sum()) / ((k - 1) * (images - 1))
        var += max(0.0, ms_images - ms_resid) / (k * images)
    se = sqrt(var)
    if se == 0:
        return gap, gap, gap, 1.0 if gap == 0 else 0.0
    half = float(special.stdtrit(k - 1, 0.975)) * se  # Student t quantile and cdf (scipy)
    return gap, gap - half, gap + half, float(2 * special.stdtr(k - 1, -abs(gap) / se))


def _outperform(d: np.ndarray, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """P(reference > family) over replicates (ties count half) and its 95% percentile
    bootstrap interval over replicates."""
    w = (d < 0) + 0.5 * (d == 0)
    rng = np.random.default_rng(_RNG_SEED)
    boot = w[rng.integers(0, len(w), size=(resamples, len(w)))].mean(1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(w.mean()), float(low), float(high)


def _bootstrap_gap(diff: np.ndarray, resamples: int = RESAMPLES,
                   over_seeds: bool = True) -> tuple[float, float]:
    """95% percentile interval of the mean of a (seed pairs, images) gap array in {-1, 0, 1}:
    seed pairs resampled (unless `over_seeds` is False), images resampled, independently since
    every pair is scored on the same images.

    An image is only its column of gaps across the pairs, and there are few distinct columns
    (at most 3^pairs, mostly all zero): resampling N images is drawing how many times each
    distinct column comes up, Multinomial(N, column frequencies) - the same distribution as
    drawing image indices, at a cost that does not grow with N.
    """
    pairs, images = diff.shape
    columns, counts = np.unique(np.asarray(diff, np.int8).T, axis=0, return_counts=True)
    if not columns.any():
        return 0.0, 0.0
    columns, freq = columns.astype(float), counts / images
    rng = np.random.default_rng(_RNG_SEED)
    gaps = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):  # memory: chunk x distinct columns
        b = min(_CHUNK, resamples - start)
        per_pair = rng.multinomial(images, freq, size=b) @ columns / images  # (b, pairs)
        weight = (rng.multinomial(pairs, np.full(pairs, 1 / pairs), size=b) / pairs
                  if over_seeds else np.full((b, pairs), 1 / pairs))
        gaps[start:start + b] = (per_pair * weight).sum(1)
    low, high = np.quantile(gaps, [0.025, 0.975])
    return float(low), float(high)


def _paired_test(reference: np.ndarray, family: np.ndarray, resamples: int = RESAMPLES
                 ) -> tuple[float, float, float, float, str]:
    """Family − reference on the same images from (seed pairs, images) correctness arrays:
    gap, two-level bootstrap interval, p (largest McNemar p; 1 unless every pair agrees in
    direction with the mean gap) and a note."""
    diff = family.astype(np.int8) - reference.astype(np.int8)
    gap = float(diff.mean())
    family_only, reference_only = (diff == 1).sum(1), (diff == -1).sum(1)
    p = max(mcnemar_p(int(a), int(b)) for a, b in zip(family_only, reference_only, strict=True))
    against = [i for i, (a, b) in enumerate(zip(family_only, reference_only, strict=True))
               if np.sign(int(a) - int(b)) != np.sign(gap)]
    note = ""
    if against and gap != 0:
        p = 1.0
        note = (f"seed pair{'s' if len(against) > 1 else ''} "
                f"{', '.join(map(str, against))} "
                f"{'do' if len(against) > 1 else 'does'} not go the mean gap's way")
    low, high = _bootstrap_gap(diff, resamples)
    return gap, low, high, p, note


def _untested(level: str, replicate: int | None, reference: str, family: str, n: int,
              note: str, wins: int | None = None, outperform: tuple[float, float, float] = (
                  nan, nan, nan)) -> Comparison:
    return Comparison(level, replicate, reference, family, nan, nan, nan, nan, nan,
                      Verdict.NOT_SEPARABLE, n, wins, *outperform, note)


def _family_comparison(reference: str, family: str, d: np.ndarray, x: np.ndarray | None,
                       notes: list[str], resamples: int = RESAMPLES) -> Comparison:
    """The family-level comparison (verdict not yet decided: see `_decide`) from the gaps `d`
    (fractions) of the k replicates where both were scored and their per-image gaps `x`."""
    d = np.asarray(d, float)
    k = len(d)
    if k == 0:
        return _untested("family", None, reference, family, 0, "; ".join(
            [*notes, "no replicate where both were scored: no comparison"]))
    wins, outperform = int((d > 0).sum()), _outperform(d, resamples)
    if k == 1:
        return _untested("family", None, reference, family, 1, "; ".join(
            [*notes, "one replicate speaks about these finalists, not the family; a family "
                     f"verdict needs REPLICATES>={REPLICATES_FOR_A_VERDICT}"]),
                         wins, outperform)
    if k < REPLICATES_FOR_A_VERDICT:
        notes = [*notes, f"{k} replicates: t with {k - 1} degree{'s' if k > 2 else ''} of "
                         f"freedom; REPLICATES>={REPLICATES_FOR_A_VERDICT} for a useful verdict"]
    gap, low, high, p = _family_test(d, x)
    return Comparison("family", None, reference, family, gap * 100, low * 100, high * 100, p,
                      nan, Verdict.NOT_SEPARABLE, k, wins, *outperform, "; ".join(notes))


def _decide(rows: list[Comparison], alpha: float) -> list[Comparison]:
    """Holm across the testable rows, then the verdicts (replicate level: the interval must
    also exclude 0 on the gap's side)."""
    tested = [i for i, r in enumerate(rows) if isfinite(r.p)]
    adjusted = dict(zip(tested, holm([rows[i].p for i in tested]), strict=True))
    out = []
    for i, r in enumerate(rows):
        if i not in tested:
            out.append(r)
            continue
        verdict, note = Verdict.NOT_SEPARABLE, r.note
        if adjusted[i] < alpha and r.gap_pp != 0:
            side = r.low_pp > 0 if r.gap_pp > 0 else r.high_pp < 0
            if side or r.level == "family":
                verdict = Verdict.BETTER if r.gap_pp > 0 else Verdict.WORSE
            else:
                note = "; ".join(filter(None, [note, "every seed pair agrees, but the interval "
                                                     "over seeds and images includes 0"]))
        out.append(replace(r, p_adjusted=adjusted[i], verdict=verdict, note=note))
    return out


def _runs(finalists: pd.DataFrame, predictions: pd.DataFrame
          ) -> tuple[dict[tuple[int, str], list], dict[tuple[int, str], dict]]:
    """Rank-1 seed slots per (replicate, family) in run order, and each scored run's boolean
    correctness over the test images (checked to be the same images for every run)."""
    first = finalists[finalists["rank"] == 1]
    slots = {(int(r), f): list(g["seed"])
             for (r, f), g in first.groupby(["replicate", "family"], sort=False)}
    if predictions.empty:
        return slots, {}
    pred = predictions[predictions["rank"] == 1].sort_values(
        ["replicate", "family", "seed", "index"], kind="stable")
    correct = pred["pred"].to_numpy() == pred["label"].to_numpy()
    index = pred["index"].to_numpy()
    images, runs = None, {}
    groups = pred.groupby(["replicate", "family", "seed"], sort=False).indices
    for (r, f, seed), pos in groups.items():
        if images is None:
            images = index[pos]
        elif not np.array_equal(index[pos], images):
            raise ValueError(f"need every run scored on the same images; {f} seed {seed} in "
                             f"replicate {r} has {len(pos)} images, another run {len(images)}")
        runs.setdefault((int(r), f), {})[seed] = correct[pos]
    return slots, runs


def _replicate_comparison(replicate: int, reference: str, family: str, slots: dict, runs: dict,
                          scored: set, resamples: int) -> Comparison:
    """The two rank-1 finalists of one replicate, seed slot i against seed slot i."""
    key_ref, key_fam = (replicate, reference), (replicate, family)
    missing = [f"{name} has no test predictions" if key in scored
               else f"{name} diverged on every seed" if key in slots else f"{name} has no runs"
               for name, key in ((reference, key_ref), (family, key_fam)) if key not in runs]
    if missing:
        return _untested("replicate", replicate, reference, family, 0,
                         f"{' and '.join(missing)} in replicate {replicate}")
    pairs = [(a, b) for a, b in zip(slots[key_ref], slots[key_fam], strict=False)
             if a in runs[key_ref] and b in runs[key_fam]]
    if not pairs:
        return _untested("replicate", replicate, reference, family, 0,
                         f"no seed slot where both were scored in replicate {replicate}")
    ref = np.stack([runs[key_ref][a] for a, _ in pairs])
    fam = np.stack([runs[key_fam][b] for _, b in pairs])
    gap, low, high, p, note = _paired_test(ref, fam, resamples)
    return Comparison("replicate", replicate, reference, family, gap * 100, low * 100,
                      high * 100, p, nan, Verdict.NOT_SEPARABLE, len(pairs), None, nan, nan,
                      nan, note)


def _frame(rows: list[Comparison]) -> pd.DataFrame:
    df = pd.DataFrame([{**asdict(r), "verdict": r.verdict.value} for r in rows],
                      columns=list(VERDICT_COLUMNS))
    return df.astype({"replicate": "Int64", "wins": "Int64", "n": "int64"})


def verdicts(finalists: pd.DataFrame, predictions: pd.DataFrame, alpha: float = 0.05, *,
             resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every family against the reference: family-level rows (across replicates) first, then
    the replicate-level diagnostics, one row per comparison with the columns `VERDICT_COLUMNS`.

    No family is dropped: one that never scored gets its rows with a note; with one family
    only, a single row says there is nothing to compare.
    """
    finalists, predictions = with_replicate(finalists), with_replicate(predictions)
    scores = replicate_scores(finalists)
    families = list(dict.fromkeys(finalists["family"]))
    try:
        reference = reference_family(scores)
    except ValueError as e:
        return _frame([_untested("family", None, "", f, 0, str(e)) for f in families])
    others = [f for f in families if f != reference]
    if not others:
        return _frame([_untested("family", None, reference, reference, 0,
                                 f"only one family ({reference}): nothing to compare")])
    slots, runs = _runs(finalists, predictions)
    test = scores.pivot(index="replicate", columns="family", values="test_acc")
    rows = []
    for family in others:
        present = scores.loc[scores["family"].isin([reference, family]), "replicate"].unique()
        notes = []
        for name in (family, reference):
            tag = f"{name} (reference)" if name == reference else name
            had = scores[scores["family"] == name]
            gone = sorted(had.loc[had["test_acc"].isna(), "replicate"])
            absent = sorted(set(present) - set(had["replicate"]))
            if gone:
                notes.append(f"{tag} diverged in replicate{'s' if len(gone) > 1 else ''} "
                             f"{', '.join(map(str, gone))}")
            if absent:
                notes.append(f"{tag} has no runs in replicate{'s' if len(absent) > 1 else ''} "
                             f"{', '.join(map(str, absent))}")
        both = test[[reference, family]].dropna() if family in test else test.iloc[:0]
        reps = [int(r) for r in both.index]
        d = (both[family] - both[reference]).to_numpy(float)
        x = None
        if len(reps) >= 2 and all((r, f) in runs for r in reps for f in (reference, family)):
            x = np.stack([np.mean(list(runs[(r, family)].values()), 0)
                          - np.mean(list(runs[(r, reference)].values()), 0) for r in reps])
        elif len(reps) >= 2:
            notes.append("test predictions missing: interval without test-image variance "
                         "(too narrow when the families differ image by image)")
        rows.append(_family_comparison(reference, family, d, x, notes, resamples))
    rows = _decide(rows, alpha)
    scored = {(int(r), f) for r, f in
              scores.loc[scores["test_acc"].notna(), ["replicate", "family"]].itertuples(
                  index=False)}
    for replicate in sorted(scores["replicate"].unique()):
        here = set(scores.loc[scores["replicate"] == replicate, "family"])
        rows += _decide([_replicate_comparison(int(replicate), reference, f, slots, runs,
                                               scored, resamples)
                         for f in others if f in here or reference in here], alpha)
    return _frame(rows)


def _pp(v: float) -> str:
    return f"{v:+.2f}".replace("-", "−")


def _phrase(r: pd.Series, finalists: bool) -> str:
    """One comparison in words: the family's (across replicates) or its finalist's (one
    replicate, over seed pairs)."""
    ref, fam = r["reference"], r["family"]
    who, whom = (f"{fam}'s finalist", f"{ref}'s") if finalists else (fam, ref)
    if not isfinite(r["p"]):
        return f"{who}: {'no test' if finalists else 'no family verdict'} ({r['note']})"
    interval = f"[{_pp(r['low_pp'])}, {_pp(r['high_pp'])}]"
    if r["verdict"] == Verdict.NOT_SEPARABLE.value:
        budget = "" if finalists else " at this budget"
        head = f"{who} not separable from {whom}{budget}, gap {_pp(r['gap_pp'])} pp"
    else:
        head = f"{who} {r['verdict']} by {abs(r['gap_pp']):.2f} pp"
    if finalists:
        line = (f"{head} {interval} over {r['n']} seed pair{'s' if r['n'] != 1 else ''}, "
                f"McNemar Holm p = {r['p_adjusted']:.2g}")
    else:
        line = (f"{fam}: {head} {interval}, won {r['wins']} of {r['n']} replicates, "
                f"P({ref} > {fam}) = {r['p_reference_better']:.2f}, Holm p = "
                f"{r['p_adjusted']:.2g}")
    return line + (f" ({r['note']})" if r["note"] else "")


def answer(verdicts_df: pd.DataFrame, k: int) -> str:
    """The study's answer in one paragraph, from the `verdicts` rows of a study with k
    replicates: the terminal and the report both print this."""
    fam = verdicts_df[verdicts_df["level"] == "family"]
    if fam.empty:
        return "No comparison: no family was scored."
    first = fam.iloc[0]
    if first["reference"] == "" or first["reference"] == first["family"]:
        return f"No comparison: {first['note']}."
    ref = first["reference"]
    if k == 1:
        rep = verdicts_df[verdicts_df["level"] == "replicate"]
        line = (f"{ref} (best on validation, 1 replicate): one replicate speaks about these "
                "finalists, not the family: a family verdict needs "
                f"≥ {REPLICATES_FOR_A_VERDICT} replicates (REPLICATES={REPLICATES_FOR_A_VERDICT})")
        if not rep.empty:
            line += (f". These finalists against {ref}'s, paired on the same test images: "
                     + "; ".join(_phrase(r, finalists=True) for _, r in rep.iterrows()))
        return line + "."
    line = (f"{ref} (best on validation, median over {k} replicates) vs "
            + "; vs ".join(_phrase(r, finalists=False) for _, r in fam.iterrows()))
    tested = int(np.isfinite(fam["p"].to_numpy(float)).sum())
    if tested > 1:
        line += f". Holm-adjusted over {tested} comparisons"
    return line + "."


_TABLES = {
    "family": {"family": "family", "n": "replicates", "gap_pp": "gap pp",
               "low_pp": "95% low pp", "high_pp": "95% high pp", "p": "p unadjusted",
               "p_adjusted": "p Holm", "wins": "won", "p_reference_better": "P(ref > family)",
               "p_low": "P 95% low", "p_high": "P 95% high", "verdict": "verdict",
               "note": "note"},
    "replicate": {"replicate": "replicate", "family": "family", "n": "seed pairs",
                  "gap_pp": "gap pp", "low_pp": "95% low pp", "high_pp": "95% high pp",
                  "p": "p McNemar", "p_adjusted": "p Holm", "verdict": "verdict",
                  "note": "note"},
}


def verdict_table(verdicts_df: pd.DataFrame, level: str) -> pd.DataFrame:
    """The rows of one level with human column names, numbers left as numbers (gap columns
    "… pp" in percentage points, family − reference)."""
    if level not in _TABLES:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(_TABLES)}")
    columns = _TABLES[level]
    df = verdicts_df.loc[verdicts_df["level"] == level, list(columns)]
    return df.rename(columns=columns).reset_index(drop=True)
