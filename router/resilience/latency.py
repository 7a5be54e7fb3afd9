"""Per-tier latency estimates: p50 / p95 / p99 of total latency and time to first token.

Each metric keeps the most recent ``samples`` values that are younger than
``max_age_s`` and answers quantiles exactly over them (sorted once per new
sample, on demand). A window of a few hundred samples follows a tier that
slows down within that many calls and costs microseconds to query, which a
decayed quantile sketch would not improve on at per-tier call rates; the age
limit lets a tier that was judged too slow go cold, and so be tried again,
instead of being excluded forever on stale numbers.

For the unary timeout (``resilience.timeouts``) the same window of calls is also
kept with each call's output tokens and fixed part (time to first token when it
streamed), so its duration can be projected to a request's output bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tierwise.router.config import LatencyWindowConfig

Metric = Literal["total", "ttft"]


@dataclass(frozen=True, slots=True)
class Quantiles:
    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float  # what the tier's adaptive timeout follows (resilience.timeouts)


@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    tier: str
    total: Quantiles | None  # None: cold, too few recent samples
    ttft: Quantiles | None


class _Window:
    def __init__(self, size: int) -> None:
        self._values: deque[tuple[float, float]] = deque(maxlen=size)
        self._sorted: np.ndarray[tuple[int], np.dtype[np.float64]] | None = None

    def add(self, at: float, value_ms: float) -> None:
        self._values.append((at, value_ms))
        self._sorted = None

    def expire(self, oldest: float) -> None:
        while self._values and self._values[0][0] < oldest:
            self._values.popleft()
            self._sorted = None

    def quantiles(self, min_samples: int) -> Quantiles | None:
        if len(self._values) < min_samples:
            return None
        if self._sorted is None:
            self._sorted = np.sort(np.fromiter((v for _, v in self._values), dtype=np.float64))
        p50, p95, p99 = np.quantile(self._sorted, [0.5, 0.95, 0.99])
        return Quantiles(len(self._values), float(p50), float(p95), float(p99))


class _Calls:
    """Recent successful calls as (when, fixed part, generating part, output tokens or 0: unknown)."""

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[float, float, float, int]] = deque(maxlen=size)
        self._arrays: np.ndarray[tuple[int, int], np.dtype[np.float64]] | None = None

    def add(self, at: float, fixed_ms: float, generating_ms: float, output_tokens: int) -> None:
        self._calls.append((at, fixed_ms, generating_ms, output_tokens))
        self._arrays = None

    def expire(self, oldest: float) -> None:
        while self._calls and self._calls[0][0] < oldest:
            self._calls.popleft()
            self._arrays = None

    def projected_p99_ms(self, output_bound: int, min_samples: int) -> float | None:
        """p99 over the calls of each one's fixed part plus its generating part scaled to
        ``output_bound`` tokens (never scaled down; a call of unknown output is taken as it is)."""
        if len(self._calls) < min_samples:
            return None
        if self._arrays is None:
            self._arrays = np.array([c[1:] for c in self._calls], dtype=np.float64)
        fixed, generating, tokens = self._arrays[:, 0], self._arrays[:, 1], self._arrays[:, 2]
        scale = np.where(tokens > 0, np.maximum(1.0, output_bound / np.maximum(tokens, 1.0)), 1.0)
        return float(np.quantile(fixed + generating * scale, 0.99))


class LatencyTracker:
    def __init__(
        self, tier: str, config: LatencyWindowConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tier = tier
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Metric, _Window] = {
            "total": _Window(config.samples),
            "ttft": _Window(config.samples),
        }
        self._calls = _Calls(config.samples)

    def record(self, total_ms: float, ttft_ms: float | None = None, output_tokens: int | None = None) -> None:
        """One successful call; ``ttft_ms`` when it streamed (a non-streamed call's TTFT is its total);
        ``output_tokens`` when counted. A unary call's fixed part is unknown: all of it counts as
        generating, which errs on the long side when it is projected to a larger output."""
        now = self._clock()
        with self._lock:
            self._windows["total"].add(now, total_ms)
            self._windows["ttft"].add(now, total_ms if ttft_ms is None else ttft_ms)
            fixed_ms = 0.0 if ttft_ms is None else min(ttft_ms, total_ms)
            self._calls.add(now, fixed_ms, total_ms - fixed_ms, output_tokens or 0)

    def quantiles(self, metric: Metric = "total") -> Quantiles | None:
        oldest = self._clock() - self._config.max_age_s
        with self._lock:
            window = self._windows[metric]
            window.expire(oldest)
            return window.quantiles(self._config.min_samples)

    def projected_p99_ms(self, output_bound: int) -> float | None:
        """The recent p99 of the calls' durations, each projected to ``output_bound`` output tokens
        (``_Calls.projected_p99_ms``); None while cold."""
        oldest = self._clock() - self._config.max_age_s
        with self._lock:
            self._calls.expire(oldest)
            return self._calls.projected_p99_ms(output_bound, self._config.min_samples)

    def cold(self, metric: Metric = "total") -> bool:
        return self.quantiles(metric) is None

    def fits(self, budget_ms: float, metric: Metric = "total") -> bool:
        """Does the tier's recent p95 fit ``budget_ms``? A cold tier fits: it has to be tried to be known."""
        estimate = self.quantiles(metric)
        return estimate is None or estimate.p95_ms <= budget_ms

    def estimate(self) -> LatencyEstimate:
        return LatencyEstimate(self.tier, self.quantiles("total"), self.quantiles("ttft"))
