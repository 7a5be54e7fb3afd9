"""Confidence intervals for an arm's difference from the control arm.

- means of roughly symmetric quantities (judged quality): Welch's t interval,
  which does not assume equal variances;
- cost per request (skewed: a few long answers on a strong tier dominate):
  a percentile bootstrap of the difference of means, each arm resampled on its own;
- shares (cache hit rate): the normal (Wald) interval of a difference of proportions.

Each returns None when an arm has too few observations for an interval. SciPy (the
``analytics`` extra) is imported when an interval is computed: reports are offline jobs, and
the serving install does without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierwise.cache.extras import needs_extra


def _scipy_stats() -> Any:
    with needs_extra("analytics", "an experiment's confidence intervals"):
        from scipy import stats
    return stats


@dataclass(frozen=True, slots=True)
class Interval:
    """``estimate`` = treatment - control, with its confidence interval [low, high]."""

    estimate: float
    low: float
    high: float
    method: str
    p_value: float | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0


def welch_interval(
    treatment: Sequence[float], control: Sequence[float], confidence: float = 0.95
) -> Interval | None:
    n1, n0 = len(treatment), len(control)
    if n1 < 2 or n0 < 2:
        return None
    a, b = np.asarray(treatment, dtype=np.float64), np.asarray(control, dtype=np.float64)
    diff = float(a.mean() - b.mean())
    v1, v0 = float(a.var(ddof=1)) / n1, float(b.var(ddof=1)) / n0
    se = math.sqrt(v1 + v0)
    if se == 0:  # both arms constant: the difference is known exactly
        return Interval(diff, diff, diff, "welch", 1.0 if diff == 0 else 0.0)
    # Welch-Satterthwaite degrees of freedom
    stats = _scipy_stats()
    df = (v1 + v0) ** 2 / (v1**2 / (n1 - 1) + v0**2 / (n0 - 1))
    t = float(stats.t.ppf(0.5 + confidence / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Interval(diff, diff - t * se, diff + t * se, "welch", p)


def bootstrap_mean_difference(
    treatment: Sequence[float],
    control: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> Interval | None:
    n1, n0 = len(treatment), len(control)
    if n1 < 2 or n0 < 2:
        return None
    a, b = np.asarray(treatment, dtype=np.float64), np.asarray(control, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # Resampled means without materialising resamples x n index arrays for big arms.
    means_a = np.array([a[rng.integers(0, n1, n1)].mean() for _ in range(resamples)])
    means_b = np.array([b[rng.integers(0, n0, n0)].mean() for _ in range(resamples)])
    diffs = means_a - means_b
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Interval(float(a.mean() - b.mean()), float(low), float(high), "bootstrap")


def proportion_difference(
    hits1: int, n1: int, hits0: int, n0: int, confidence: float = 0.95
) -> Interval | None:
    if n1 < 1 or n0 < 1:
        return None
    p1, p0 = hits1 / n1, hits0 / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    stats = _scipy_stats()
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    pooled = (hits1 + hits0) / (n1 + n0)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p = 1.0 if pooled_se == 0 else float(2 * stats.norm.sf(abs(diff) / pooled_se))
    return Interval(diff, diff - z * se, diff + z * se, "wald", p)
