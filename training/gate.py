"""The retrain gate: is the candidate worse than the serving model on the held-out rows?

A point comparison of two APGR or AIQ values over a few hundred prompts is decided
by noise: models trained on the same labels differ by about 0.03 there, and an
incumbent that was promoted on a lucky draw then blocks every later candidate,
however much more it learnt from. So the gate resamples the held-out rows
(paired: both models are scored on the same resample each time) and asks how
likely the candidate is to be worse than the serving model by more than the
tolerance. Each model's routing decisions are computed once on the held-out rows
(a decision depends on its own row only); a resample only reweights the rows, so
a thousand resamples cost milliseconds.

``rule="bootstrap"`` (the default) keeps the serving model when that probability
reaches ``confidence``: the candidate is then worse beyond doubt. ``rule="point"``
is the plain comparison of the two values, kept for callers who want it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tierwise.training.metrics import aiq, apgr

GateRule = Literal["bootstrap", "point"]
Choices = npt.NDArray[np.int64]
FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Decisions:
    """One model's routing decisions on the held-out rows: a choice vector per operating point."""

    runs: list[Choices]


@dataclass(frozen=True)
class HeldOut:
    """The rows both models are scored on: recorded scores and costs of the compared tiers."""

    scores: FloatMatrix
    costs: FloatMatrix
    candidates: Sequence[int]  # compared tiers, cheapest first; the last is the strong one
    metric: Literal["apgr", "aiq"]

    def points(
        self, decisions: Decisions, rows: npt.NDArray[np.intp] | None = None
    ) -> tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]:
        """(cost, quality, strong share) of every compared tier alone and of each operating point of
        ``decisions``, on ``rows`` (indices, repeats allowed; None: every row)."""
        picked = np.arange(len(self.scores)) if rows is None else rows
        scores, costs = self.scores[picked], self.costs[picked]
        index = np.arange(len(picked))

        def point(choices: Choices) -> tuple[float, float, float]:
            chosen = choices[picked]
            return (
                float(costs[index, chosen].mean()),
                float(scores[index, chosen].mean()),
                float((chosen == self.candidates[-1]).mean()),
            )

        singles = [point(np.full(len(self.scores), j, dtype=np.int64)) for j in self.candidates]
        return singles, [point(choices) for choices in decisions.runs]

    def curve(self, decisions: Decisions) -> list[tuple[float, float]]:
        """The curve the metric is the area of: (strong share, quality) for APGR, (cost, quality) for AIQ."""
        _, points = self.points(decisions)
        if self.metric == "apgr":
            return [(share, quality) for _, quality, share in points]
        return [(cost, quality) for cost, quality, _ in points]

    def value(self, decisions: Decisions, rows: npt.NDArray[np.intp] | None = None) -> float:
        """The metric of ``decisions`` on ``rows`` (indices, repeats allowed; None: every row); NaN for
        APGR on rows where the strong tier does not outscore the weak one (it has no gap to recover:
        a few dozen judged rows can be so)."""
        singles, points = self.points(decisions, rows)
        if self.metric == "apgr":
            if singles[-1][1] <= singles[0][1]:
                return float("nan")
            return apgr([(share, quality) for _, quality, share in points], singles[0][1], singles[-1][1])
        cost_range = [cost for cost, _, _ in singles]
        curve = [(singles[0][0], singles[0][1]), *((cost, quality) for cost, quality, _ in points)]
        return aiq(curve, min(cost_range), max(cost_range))


def tiers_alone(held_out: HeldOut) -> Decisions:
    """Every compared tier alone, one operating point each: for APGR the chord between them, which is
    what routing at random between them draws in expectation (APGR 0.5 on any rows)."""
    return Decisions([np.full(len(held_out.scores), j, dtype=np.int64) for j in held_out.candidates])


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    candidate: float
    serving: float
    difference_low: float  # the two-sided interval of candidate - serving at ``confidence``
    difference_high: float
    p_worse: float  # share of resamples where the candidate trails by more than the tolerance
    explanation: str

    def summary(self) -> dict[str, Any]:
        return {
            "difference": round(self.candidate - self.serving, 6),
            "interval": [round(self.difference_low, 6), round(self.difference_high, 6)],
            "p_worse": round(self.p_worse, 4),
        }


def judge(
    held_out: HeldOut,
    candidate: Decisions,
    serving: Decisions,
    *,
    rule: GateRule,
    tolerance: float,
    confidence: float,
    samples: int,
    seed: int = 0,
) -> GateVerdict:
    """Compare the two models on ``held_out`` and decide whether the candidate may serve."""
    candidate_value, serving_value = held_out.value(candidate), held_out.value(serving)
    if np.isnan(candidate_value) or np.isnan(serving_value):
        explanation = (
            f"{held_out.metric} is undefined on these {len(held_out.scores)} rows (the strong tier does not "
            "outscore the weak one there): no comparison, nothing promoted"
        )
        nan = float("nan")
        return GateVerdict(False, candidate_value, serving_value, nan, nan, nan, explanation)
    rng = np.random.default_rng(seed)
    count = len(held_out.scores)
    differences = []
    for _ in range(samples):
        rows = rng.integers(0, count, size=count)
        difference = held_out.value(candidate, rows) - held_out.value(serving, rows)
        # APGR is undefined on a resample where the strong tier does not outscore the weak one:
        # such draws are left out (a few rows make them common; most held-out sets never do).
        if not np.isnan(difference):
            differences.append(difference)
    if not differences:
        differences = [candidate_value - serving_value]
    alpha = (1.0 - confidence) / 2
    low, high = (float(q) for q in np.quantile(differences, [alpha, 1 - alpha]))
    p_worse = float(np.mean(np.asarray(differences) < -tolerance))
    observed = f"candidate {candidate_value:.4f} vs serving {serving_value:.4f}"
    if rule == "point":
        promote = candidate_value >= serving_value - tolerance
        sign = ">=" if promote else "<"
        explanation = f"{observed}: candidate {sign} serving - tolerance {tolerance}"
    else:
        promote = p_worse < confidence
        interval = f"difference {candidate_value - serving_value:+.4f}, {confidence:.0%} interval [{low:+.4f}, {high:+.4f}]"
        explanation = (
            f"{observed} ({interval}): worse by more than {tolerance} in {p_worse:.0%} of "
            f"{len(differences)} paired resamples" + (f", under {confidence:.0%}" if promote else "")
        )
    return GateVerdict(promote, candidate_value, serving_value, low, high, p_worse, explanation)
