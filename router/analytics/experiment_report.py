"""An experiment's per-arm numbers from the spend ledger and the feedback store, and each arm's
difference from control with a 95 % confidence interval.

Requests whose arm was forced by ``tierwise-arm`` metadata are left out: they
were sent to test an arm, not assigned to it, so they would bias the comparison.
So are ``Route`` decisions that called no model (nothing was spent or answered:
they would count as free requests).
Quality is the mean judged score (feedback joined to the request by its id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from tierwise.router.analytics.quality import JudgedScores
from tierwise.router.analytics.report import CACHE_HITS, CacheHitRate
from tierwise.router.config import ExperimentConfig
from tierwise.router.experiments.assignment import ARM_OVERRIDE_KEY
from tierwise.router.experiments.stats import (
    Interval,
    bootstrap_mean_difference,
    proportion_difference,
    welch_interval,
)
from tierwise.router.ledger.record import STATUS_OK
from tierwise.router.ledger.reports import SpendSource
from tierwise.router.ledger.sql import Sample, SampleQuery

FORCED = f"tag:{ARM_OVERRIDE_KEY}"
COLUMNS = ("tenant", "request_id", "cost_usd", "total_ms", "cache_result", "status", "attempts")


@dataclass(frozen=True, slots=True)
class ArmSummary(CacheHitRate):
    arm: str
    requests: int
    errors: int
    cost_usd: Decimal
    cost_per_request_usd: Decimal
    judged: int  # requests with at least one score
    quality: float | None  # mean judged score
    p50_ms: float | None  # over successful requests
    p95_ms: float | None
    cache_hits: int


@dataclass(frozen=True, slots=True)
class ArmComparison:
    arm: str
    cost_per_request: Interval | None
    quality: Interval | None
    cache_hit_rate: Interval | None


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    control: str
    since: float
    until: float
    arms: tuple[ArmSummary, ...]
    comparisons: tuple[ArmComparison, ...]
    forced_excluded: int


@dataclass
class _ArmData:
    costs: list[Decimal]
    latencies: list[float]
    scores: list[float]
    errors: int = 0
    hits: int = 0


def _summary(arm: str, data: _ArmData) -> ArmSummary:
    n = len(data.costs)
    total = sum(data.costs, Decimal(0))
    p50, p95 = (float(v) for v in np.percentile(data.latencies, [50, 95])) if data.latencies else (None, None)
    return ArmSummary(
        arm=arm,
        requests=n,
        errors=data.errors,
        cost_usd=total,
        cost_per_request_usd=total / n if n else Decimal(0),
        judged=len(data.scores),
        quality=sum(data.scores) / len(data.scores) if data.scores else None,
        p50_ms=p50,
        p95_ms=p95,
        cache_hits=data.hits,
    )


async def load_experiment(
    source: SpendSource, scores: JudgedScores, experiment: ExperimentConfig, since: float, until: float
) -> ExperimentReport:
    """The experiment's requests in [since, until) from the ledger, joined with their judged scores."""
    samples = await source.samples(
        SampleQuery(since, until, ("arm", FORCED), {"experiment": experiment.name}, COLUMNS)
    )
    judged = await scores.mean_scores((s.values[0], s.values[1]) for s in samples)
    return build_report(experiment, samples, judged, since=since, until=until)


def build_report(
    experiment: ExperimentConfig,
    samples: Sequence[Sample],
    scores: Mapping[tuple[str, str], float],
    *,
    since: float,
    until: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> ExperimentReport:
    """``samples``: the experiment's requests grouped by arm and forced arm, with ``COLUMNS``;
    ``scores``: mean judged score per (tenant, request_id)."""
    arms: dict[str, _ArmData] = {a.name: _ArmData([], [], []) for a in experiment.arms}
    forced = 0
    for sample in samples:
        tenant, request_id, cost, total_ms, cache_result, status, attempts = sample.values
        if sample.group[FORCED]:
            forced += 1
            continue
        if status == STATUS_OK and attempts == 0 and cache_result not in CACHE_HITS:
            continue  # a Route decision: no tier called, nothing answered or spent
        data = arms.setdefault(sample.group["arm"], _ArmData([], [], []))  # an arm since removed still shows
        data.costs.append(cost)
        data.hits += cache_result in CACHE_HITS
        if status == STATUS_OK:
            data.latencies.append(total_ms)
        else:
            data.errors += 1
        score = scores.get((tenant, request_id))
        if score is not None:
            data.scores.append(score)
    control = arms[experiment.control]
    comparisons = []
    for name, data in arms.items():
        if name == experiment.control:
            continue
        comparisons.append(
            ArmComparison(
                arm=name,
                cost_per_request=bootstrap_mean_difference(
                    [float(c) for c in data.costs], [float(c) for c in control.costs], confidence, seed=seed
                ),
                quality=welch_interval(data.scores, control.scores, confidence),
                cache_hit_rate=proportion_difference(
                    data.hits, len(data.costs), control.hits, len(control.costs), confidence
                ),
            )
        )
    return ExperimentReport(
        experiment=experiment.name,
        control=experiment.control,
        since=since,
        until=until,
        arms=tuple(_summary(name, data) for name, data in arms.items()),
        comparisons=tuple(comparisons),
        forced_excluded=forced,
    )


def _interval_json(interval: Interval | None) -> dict[str, Any] | None:
    if interval is None:
        return None
    return {
        "difference": interval.estimate,
        "ci95": [interval.low, interval.high],
        "method": interval.method,
        "p_value": interval.p_value,
        "significant": interval.significant,
    }


def report_json(report: ExperimentReport) -> dict[str, Any]:
    return {
        "experiment": report.experiment,
        "control": report.control,
        "since": report.since,
        "until": report.until,
        "forced_excluded": report.forced_excluded,
        "arms": [
            {
                "arm": a.arm,
                "requests": a.requests,
                "errors": a.errors,
                "cost_usd": str(a.cost_usd),
                "cost_per_request_usd": str(a.cost_per_request_usd),
                "judged": a.judged,
                "quality": a.quality,
                "p50_ms": a.p50_ms,
                "p95_ms": a.p95_ms,
                "cache_hit_rate": a.cache_hit_rate,
            }
            for a in report.arms
        ],
        "vs_control": [
            {
                "arm": c.arm,
                "cost_per_request_usd": _interval_json(c.cost_per_request),
                "quality": _interval_json(c.quality),
                "cache_hit_rate": _interval_json(c.cache_hit_rate),
            }
            for c in report.comparisons
        ],
    }
