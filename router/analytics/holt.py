"""Holt's linear exponential smoothing (additive trend), fitted with numpy.

statsmodels is not a dependency of tierwise (it would pull pandas and patsy into the
server's environment for one small model), and Holt's method is a few lines: a level
and a trend, each updated by a share (alpha, beta) of the latest one-step error. The
shares are chosen by grid search on the one-step-ahead squared error. The interval
uses the model's innovations form, ETS(A,A,N): the error of the forecast k steps
ahead is e[k] + sum_j alpha * (1 + j * beta) * e[k - j], so the variance of any
weighted sum of future days follows exactly from the one-step error variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_GRID = np.round(np.arange(0.05, 1.0, 0.05), 2)
MIN_HOLT_POINTS = 4  # fewer: the level is the mean, with no trend


@dataclass(frozen=True, slots=True)
class HoltFit:
    level: float  # at the last observation
    trend: float  # per step
    alpha: float
    beta: float
    sigma: float  # standard deviation of the one-step-ahead errors
    points: int
    method: str  # "holt" | "mean"

    def path(self, steps: int) -> FloatArray:
        """The point forecasts 1..steps ahead."""
        return self.level + self.trend * np.arange(1, steps + 1, dtype=np.float64)

    def sum_sigma(self, weights: Sequence[float] | FloatArray) -> float:
        """Standard deviation of sum(weights[k-1] * y[T+k]) over k = 1..len(weights)."""
        w = np.asarray(weights, dtype=np.float64)
        steps = len(w)
        psi = np.ones(steps)  # psi[j]: how much an error j steps back moves today's value
        psi[1:] = self.alpha * (1 + np.arange(1, steps) * self.beta)
        # Innovation i (1-based) reaches days k >= i with weight psi[k - i].
        coefficients = np.array([np.dot(w[i:], psi[: steps - i]) for i in range(steps)])
        return float(self.sigma * np.sqrt(np.sum(coefficients**2)))


def _run(y: FloatArray, alpha: float, beta: float) -> tuple[float, float, float]:
    """One pass from level y[0], trend y[1] - y[0]; returns the final level, trend and the SSE."""
    level, trend = y[0], y[1] - y[0]
    sse = 0.0
    for t in range(1, len(y)):
        error = y[t] - (level + trend)
        sse += error * error
        new_level = level + trend + alpha * error
        trend = trend + alpha * beta * error
        level = new_level
    return float(level), float(trend), sse


def fit_holt(series: Sequence[float] | FloatArray) -> HoltFit:
    y = np.asarray(series, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0 or not np.all(np.isfinite(y)):
        raise ValueError("the series must be a non-empty flat sequence of finite numbers")
    if len(y) < MIN_HOLT_POINTS:
        spread = float(np.std(y, ddof=1)) if len(y) > 1 else 0.0
        return HoltFit(float(np.mean(y)), 0.0, 1.0, 0.0, spread, len(y), "mean")
    best: tuple[float, float, float, float, float] | None = None
    for alpha in _GRID:
        for beta in _GRID:
            level, trend, sse = _run(y, float(alpha), float(beta))
            if best is None or sse < best[0] - 1e-12:
                best = (sse, level, trend, float(alpha), float(beta))
    assert best is not None
    sse, level, trend, alpha, beta = best
    # The first error is zero by construction (the trend starts at y[1] - y[0]).
    sigma = float(np.sqrt(sse / (len(y) - 2)))
    return HoltFit(level, trend, alpha, beta, sigma, len(y), "holt")
