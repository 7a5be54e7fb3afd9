"""Per-tier latency estimates: p50 / p95 / p99 of total latency and time to first token.

Each metric keeps the most recent ``samples`` values that are younger than
``max_age_s`` and answers quantiles exactly over them (sorted once per new
sample, on demand). A window of a few hundred samples follows a tier that
slows down within that many calls and costs microseconds to query, which a
decayed quantile sketch would not improve on at per-tier call rates; the age
limit lets a tier that was judged too slow go cold, and so be tried again,
instead of being excluded forever on stale numbers.
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

    def record(self, total_ms: float, ttft_ms: float | None = None) -> None:
        """One successful call; ``ttft_ms`` when it streamed (a non-streamed call's TTFT is its total)."""
        now = self._clock()
        with self._lock:
            self._windows["total"].add(now, total_ms)
            self._windows["ttft"].add(now, total_ms if ttft_ms is None else ttft_ms)

    def quantiles(self, metric: Metric = "total") -> Quantiles | None:
        oldest = self._clock() - self._config.max_age_s
        with self._lock:
            window = self._windows[metric]
            window.expire(oldest)
            return window.quantiles(self._config.min_samples)

    def cold(self, metric: Metric = "total") -> bool:
        return self.quantiles(metric) is None

    def fits(self, budget_ms: float, metric: Metric = "total") -> bool:
        """Does the tier's recent p95 fit ``budget_ms``? A cold tier fits: it has to be tried to be known."""
        estimate = self.quantiles(metric)
        return estimate is None or estimate.p95_ms <= budget_ms

    def estimate(self) -> LatencyEstimate:
        return LatencyEstimate(self.tier, self.quantiles("total"), self.quantiles("ttft"))
