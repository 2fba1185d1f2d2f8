"""Paired comparisons of classifiers on the same test images, and the families' verdict.

Two models scored on the same 10k images are not independent samples: most images are right for
both. Comparing them image by image (McNemar's exact test on the discordant pairs, a bootstrap
over images of the accuracy gap) resolves differences of ~0.1-0.2 pp that two separate
confidence intervals would call a tie. With more than two families the best one on validation is
compared with each other one, and Holm's step-down correction keeps the chance of any false
"better" at 5% across all those comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Paired:
    """A minus B on the same images; `a_only`/`b_only` count images only one of them gets right."""

    gap: float  # accuracy of A minus accuracy of B, as a fraction, averaged over seeds
    low: float  # 95% paired-bootstrap interval of `gap`
    high: float
    a_only: float  # images only A gets right, mean over matched seed pairs
    b_only: float  # images only B gets right, mean over matched seed pairs
    p_value: float  # the largest exact McNemar p-value over the matched seed pairs

    def verdict(self, a: str, b: str, alpha: float = 0.05, p_value: float | None = None) -> str:
        """Better only when the interval excludes 0 and every seed pair's McNemar test agrees
        (`p_value`: that test's p after a multiple-comparison correction, when there is one)."""
        p = self.p_value if p_value is None else p_value
        if self.low > 0 or self.high < 0:
            ahead, behind = (a, b) if self.low > 0 else (b, a)
            if p < alpha:
                return f"{ahead} is better than {behind}"
            return (f"{ahead} is ahead of {behind} over the seeds, but not significantly on "
                    "every seed pair")
        return f"no difference between {a} and {b} that the test set can resolve"


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: under H0 each discordant image is a fair coin flip."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired(a_correct: np.ndarray, b_correct: np.ndarray, resamples: int = 10_000,
           seed: int = 0) -> Paired:
    """Compare A and B from boolean (seeds, images) correctness arrays on the same images.

    Seed i of A is matched with seed i of B for McNemar, one test per pair (pooling the pairs
    would count each image several times); the largest p-value is kept, so a small one means
    every pair agrees. The bootstrap resamples images, keeping every seed's answer for a
    resampled image together, so seed noise and image noise both count.
    """
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"need (seeds, images) arrays over the same images, got {a.shape} "
                         f"and {b.shape}")
    per_image = a.mean(0) - b.mean(0)
    rng = np.random.default_rng(seed)
    n = per_image.size
    gaps = np.empty(resamples)
    for i in range(0, resamples, 1000):  # chunks keep memory at 1000 x images
        idx = rng.integers(0, n, size=(min(1000, resamples - i), n))
        gaps[i:i + len(idx)] = per_image[idx].mean(1)
    low, high = np.quantile(gaps, [0.025, 0.975])
    pairs = min(len(a), len(b))
    a_only = (a[:pairs] & ~b[:pairs]).sum(1)
    b_only = (~a[:pairs] & b[:pairs]).sum(1)
    p = max(mcnemar_p(int(x), int(y)) for x, y in zip(a_only, b_only, strict=True))
    return Paired(float(per_image.mean()), float(low), float(high), float(a_only.mean()),
                  float(b_only.mean()), p)


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


def correctness(predictions: pd.DataFrame, family: str, rank: int = 1) -> np.ndarray:
    """Boolean (seeds, images) array of a finalist's right answers, seeds in run order."""
    df = predictions[(predictions["family"] == family) & (predictions["rank"] == rank)]
    return np.stack([(g.sort_values("index")["pred"] == g.sort_values("index")["label"])
                     .to_numpy() for _, g in df.groupby("seed", sort=False)])


def best_on_validation(finalists: pd.DataFrame) -> str:
    """The family whose rank-1 finalist has the highest mean validation accuracy over its seeds
    (never test: the reference every other family is compared with is chosen without it)."""
    firsts = finalists[finalists["rank"] == 1].groupby("family", sort=False)["val_acc"].mean()
    return str(firsts.idxmax())


def family_verdicts(finalists: pd.DataFrame, predictions: pd.DataFrame,
                    alpha: float = 0.05) -> tuple[pd.DataFrame, str]:
    """Each family's rank-1 finalist on test against the best family on validation.

    Returns the table (family, test mean and std over seeds, gap to the best with its 95% paired
    bootstrap interval, Holm-adjusted McNemar p, verdict) and the one-line answer.
    """
    best = best_on_validation(finalists)
    scored = finalists[(finalists["rank"] == 1) & finalists["test_acc"].notna()]
    families = [f for f in dict.fromkeys(scored["family"]) if f != best]
    reference = correctness(predictions, best)
    pairs = {f: paired(reference, correctness(predictions, f)) for f in families}
    adjusted = dict(zip(families, holm([pairs[f].p_value for f in families]), strict=True))
    rows = []
    for family in [best, *families]:
        acc = scored.loc[scored["family"] == family, "test_acc"]
        row = {"family": family, "seeds": len(acc), "test acc": acc.mean(),
               "test acc std": acc.std(ddof=1) if len(acc) > 1 else np.nan}
        if family == best:
            rows.append({**row, "verdict": "best on validation (the reference)"})
            continue
        p = pairs[family]
        rows.append({**row, "gap pp": -p.gap * 100, "CI low pp": -p.high * 100,
                     "CI high pp": -p.low * 100, "p Holm": adjusted[family],
                     "verdict": p.verdict(best, family, alpha, adjusted[family])})
    table = pd.DataFrame(rows, columns=["family", "seeds", "test acc", "test acc std", "gap pp",
                                        "CI low pp", "CI high pp", "p Holm", "verdict"])
    tied = [f for f in families if pairs[f].low <= 0 <= pairs[f].high
            or adjusted[f] >= alpha]
    beats = [f for f in families if pairs[f].high < 0 and adjusted[f] < alpha]
    line = f"test: {best} (best on validation) {table['test acc'].iloc[0]:.2%}; "
    if beats:
        line += f"better on test: {', '.join(beats)}; "
    worse = [f for f in families if f not in tied and f not in beats]
    if worse:
        line += f"worse than {best}: {', '.join(worse)}; "
    line += (f"tied with {best} (not separable on the test set): {', '.join(tied)}" if tied
             else f"no family is tied with {best}")
    return table, line + f" (paired on the same test images, Holm-adjusted over {len(families)} "\
        f"comparison{'s' if len(families) != 1 else ''})"
