"""Paired comparisons of two classifiers on the same test images.

Two models scored on the same 10k images are not independent samples: most images are right for
both. Comparing them image by image (McNemar's exact test on the discordant pairs, a bootstrap
over images of the accuracy gap) resolves differences of ~0.1-0.2 pp that two separate
confidence intervals would call a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np


@dataclass(frozen=True)
class Paired:
    """A minus B on the same images; `a_only`/`b_only` count images only one of them gets right."""

    gap: float  # accuracy of A minus accuracy of B, as a fraction, averaged over seeds
    low: float  # 95% paired-bootstrap interval of `gap`
    high: float
    a_only: float  # images only A gets right, mean over matched seed pairs
    b_only: float  # images only B gets right, mean over matched seed pairs
    p_value: float  # the largest exact McNemar p-value over the matched seed pairs

    def verdict(self, a: str, b: str, alpha: float = 0.05) -> str:
        """Better only when the interval excludes 0 and every seed pair's McNemar test agrees."""
        if self.low > 0 or self.high < 0:
            ahead, behind = (a, b) if self.low > 0 else (b, a)
            if self.p_value < alpha:
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
