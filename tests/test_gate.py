"""The retrain gate: paired bootstrap over held-out rows, against the plain point comparison."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.training.gate import Decisions, HeldOut, judge
from tierwise.training.metrics import aiq, apgr

ROWS = 300


def held_out(metric: str = "apgr", seed: int = 0) -> HeldOut:
    rng = np.random.default_rng(seed)
    weak = (rng.random(ROWS) < 0.6).astype(float)
    strong = np.maximum(weak, (rng.random(ROWS) < 0.7).astype(float))
    costs = np.column_stack([np.full(ROWS, 0.001), np.full(ROWS, 0.01)])
    return HeldOut(np.column_stack([weak, strong]), costs, [0, 1], metric)  # type: ignore[arg-type]


def ranked(order: np.ndarray) -> Decisions:
    """A router that sends the first k rows of ``order`` to the strong tier, for k = 0, 10%, ..., 100%."""
    runs = []
    for share in np.linspace(0, 1, 11):
        choices = np.zeros(ROWS, dtype=np.int64)
        choices[order[: round(share * ROWS)]] = 1
        runs.append(choices)
    return Decisions(runs)


def informed(rows: HeldOut, noise: float, seed: int) -> Decisions:
    """Strong calls first where the weak tier fails, blurred by ``noise``."""
    rng = np.random.default_rng(seed)
    gain = rows.scores[:, 1] - rows.scores[:, 0]
    return ranked(np.argsort(-(gain + noise * rng.standard_normal(ROWS)), kind="stable"))


def test_value_is_the_metric_of_the_curve() -> None:
    rows = held_out()
    decisions = informed(rows, 0.5, 1)
    points = [(float(c.mean()), float(rows.scores[np.arange(ROWS), c].mean())) for c in decisions.runs]
    weak, strong = rows.scores.mean(axis=0)
    assert rows.value(decisions) == pytest.approx(apgr(points, weak, strong))
    as_aiq = held_out("aiq")
    costs = [
        (float(as_aiq.costs[np.arange(ROWS), c].mean()), q)
        for c, (_, q) in zip(decisions.runs, points, strict=True)
    ]
    expected = aiq([(0.001, weak), *costs], 0.001, 0.01)
    assert as_aiq.value(decisions) == pytest.approx(expected)


def test_a_resample_reweights_rows() -> None:
    rows = held_out()
    decisions = informed(rows, 0.5, 1)
    assert rows.value(decisions, np.arange(ROWS)) == pytest.approx(rows.value(decisions))
    doubled = np.concatenate([np.arange(ROWS), np.arange(ROWS)])
    assert rows.value(decisions, doubled) == pytest.approx(rows.value(decisions))


def test_a_clearly_worse_candidate_is_kept_out() -> None:
    rows = held_out()
    good, random = informed(rows, 0.2, 1), ranked(np.random.default_rng(5).permutation(ROWS))
    verdict = judge(rows, random, good, rule="bootstrap", tolerance=0.0, confidence=0.95, samples=400)
    assert not verdict.promote
    assert verdict.p_worse >= 0.95 and verdict.difference_high < 0
    assert "worse by more than 0.0 in" in verdict.explanation


def test_a_candidate_within_noise_of_the_serving_model_is_promoted_where_a_point_gate_is_not() -> None:
    rows = held_out()
    serving, candidate = informed(rows, 1.0, 1), informed(rows, 1.0, 2)  # equally good, different draws
    point = judge(rows, candidate, serving, rule="point", tolerance=0.0, confidence=0.95, samples=400)
    flipped = judge(rows, serving, candidate, rule="point", tolerance=0.0, confidence=0.95, samples=400)
    assert point.promote != flipped.promote  # one of the two equally good models loses the point gate
    loser_first = point if not point.promote else flipped
    boot = judge(
        rows,
        *((candidate, serving) if loser_first is point else (serving, candidate)),
        rule="bootstrap",
        tolerance=0.0,
        confidence=0.95,
        samples=400,
    )
    assert boot.promote and boot.candidate < boot.serving
    assert boot.difference_low < 0 < boot.difference_high


def test_the_same_decisions_differ_by_nothing() -> None:
    rows = held_out()
    decisions = informed(rows, 0.5, 1)
    verdict = judge(rows, decisions, decisions, rule="bootstrap", tolerance=0.0, confidence=0.95, samples=100)
    assert verdict.promote and verdict.p_worse == 0.0
    assert verdict.difference_low == verdict.difference_high == 0.0


@pytest.mark.parametrize("rule", ["bootstrap", "point"])
def test_rows_where_the_strong_tier_does_not_outscore_the_weak_one_decide_nothing(rule: str) -> None:
    # A few dozen judged rows can be so; APGR has no gap to recover there, and the gate must not crash.
    both_right = np.ones((ROWS, 2))
    rows = HeldOut(both_right, held_out().costs, [0, 1], "apgr")
    decisions = informed(held_out(), 0.5, 1)
    assert np.isnan(rows.value(decisions))
    verdict = judge(rows, decisions, decisions, rule=rule, tolerance=0.0, confidence=0.95, samples=100)  # type: ignore[arg-type]
    assert not verdict.promote and np.isnan(verdict.p_worse)
    assert "undefined on these 300 rows" in verdict.explanation
