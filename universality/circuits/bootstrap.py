"""Bootstrap over prompts: percentile confidence intervals and how often a key component wins.

Every circuit effect is a mean over prompts of a per-prompt change (patched - clean logit). The
prompts of one distance (or one IOI prompt set) are resampled with replacement, ``n_boot`` times,
with ONE index matrix shared by every row of that set: the rows are paired (the same prompts go
through every layer / position), so a statistic that compares rows (which layer lowers B's logit
most) is resampled consistently. Sets of different distances are resampled independently. The
interval is the percentile interval of the resampled means at ``level`` (e.g. 0.95 -> 2.5% and
97.5%). Seeded: the same seed and set key give the same intervals.
"""
from __future__ import annotations

import numpy as np

__all__ = ["indices", "resampled_means", "interval", "win_share"]


def indices(n: int, n_boot: int, seed: int, key: int) -> np.ndarray:
    """[n_boot, n] int64 prompt indices drawn with replacement (``key``: the prompt set, e.g. its
    distance). ``n_boot`` 0 gives an empty [0, n] matrix (no intervals)."""
    rng = np.random.default_rng([seed, 7919, key])
    return rng.integers(0, n, size=(n_boot, n))


def resampled_means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values [..., n] per prompt, idx [n_boot, n] -> the resampled means [..., n_boot]."""
    return np.asarray(values, dtype=np.float64)[..., idx].mean(-1)


def interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of resampled means [n_boot] (NaN, NaN without resamples)."""
    if boot.size == 0:
        return float("nan"), float("nan")
    q = (1 - level) / 2
    lo, hi = np.quantile(boot, [q, 1 - q])
    return float(lo), float(hi)


def win_share(stats: np.ndarray, lowest: bool = True) -> np.ndarray:
    """stats [candidates, n_boot] -> the share of resamples [candidates] in which each candidate
    has the lowest (``lowest``) or the highest statistic (ties: the first candidate wins)."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.shape[1] == 0:
        return np.full(stats.shape[0], np.nan)
    best = stats.argmin(0) if lowest else stats.argmax(0)
    return np.bincount(best, minlength=stats.shape[0]) / stats.shape[1]
