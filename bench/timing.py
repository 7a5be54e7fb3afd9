"""Percentiles of timing samples, printed the same way by every benchmark."""

from __future__ import annotations


def p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def percentiles(samples: list[float]) -> str:
    """``samples`` in seconds, as "p50 … ms  p99 … ms"."""
    p50, p99 = p50_p99(samples)
    return f"p50 {p50 * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms"
