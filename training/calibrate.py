"""Calibration on the validation split.

- ``utility_calibration``: for the utility rule, the lambda that goes with each
  quality target: the largest lambda (cheapest routing) whose validation
  adequacy still reaches the target. Stored in the manifest; the policy reads it.
- ``choose_quality_target``: the default quality target that reaches a
  requested share of strongest-tier calls, or a requested mean quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tierwise.classifier.manifest import UtilityCalibration
from tierwise.classifier.model import ClassifierModel
from tierwise.router.config import Config
from tierwise.router.policies.base import RoutingContext
from tierwise.router.policies.classifier import Rule, max_utility
from tierwise.training.dataset import RoutingData
from tierwise.training.evaluate import Scorer, routing_contexts
from tierwise.training.policy_sweeps import COST_WEIGHTS, classifier_sweeps

FloatMatrix = npt.NDArray[np.float64]
CALIBRATION_TARGETS: tuple[float, ...] = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 101), 4))


def utility_adequacy(
    probabilities: FloatMatrix, contexts: Sequence[RoutingContext], adequate: FloatMatrix, weight: float
) -> float:
    """Mean adequacy of the tiers ``max_utility`` picks at ``weight`` (rows and columns aligned)."""
    names = [o.name for o in contexts[0].candidates]
    index = {n: i for i, n in enumerate(names)}
    hits = []
    for row, context in enumerate(contexts):
        p = dict(zip(names, (float(v) for v in probabilities[row]), strict=True))
        hits.append(adequate[row, index[max_utility(p, context.candidates, weight)[0]]])
    return float(np.mean(hits))


def utility_calibration(
    probabilities: FloatMatrix, contexts: Sequence[RoutingContext], adequate: FloatMatrix
) -> UtilityCalibration:
    """Target -> the largest lambda whose validation adequacy reaches it (0 where none does)."""
    reached = [
        (weight, utility_adequacy(probabilities, contexts, adequate, weight)) for weight in COST_WEIGHTS
    ]
    lambdas = []
    for target in CALIBRATION_TARGETS:
        passing = [weight for weight, quality in reached if quality >= target]
        lambdas.append(max(passing) if passing else 0.0)
    # Larger targets need at least as much quality: keep lambda non-increasing along the targets.
    lambdas = list(np.minimum.accumulate(lambdas))
    return UtilityCalibration(CALIBRATION_TARGETS, tuple(float(x) for x in lambdas))


@dataclass(frozen=True)
class TargetChoice:
    rule: Rule
    quality_target: float
    strongest_share: float
    quality: float
    cost: float
    requested: dict[str, Any]


def choose_quality_target(
    model: ClassifierModel,
    data: RoutingData,
    config: Config,
    rule: Rule = "threshold",
    strongest_share: float | None = None,
    quality: float | None = None,
    relative_to_strongest: bool = False,
) -> TargetChoice:
    """On the validation split: the largest target whose strongest-tier share stays within
    ``strongest_share``, or the smallest target whose mean score reaches ``quality``
    (a share of the strongest tier's mean score when ``relative_to_strongest``)."""
    if (strongest_share is None) == (quality is None):
        raise ValueError("ask for exactly one of strongest_share or quality")
    validation = data.split("validation")
    validation = validation.subset(validation.complete())
    if len(validation) == 0:
        raise ValueError("the validation split has no prompt scored for every tier")
    candidates = list(range(len(config.tiers)))
    strongest = candidates[-1]
    scorer = Scorer(validation.scores, validation.realized_costs(), strongest)
    contexts = routing_contexts(validation, config, candidates)
    (sweep,) = classifier_sweeps(model, contexts, config.tier_names, rules=(rule,), via_calibration=True)
    points = scorer.curve(sweep)
    if strongest_share is not None:
        fitting = [p for p in points if p.strong_share <= strongest_share]
        if not fitting:
            raise ValueError(f"no quality target keeps the strongest tier's share within {strongest_share}")
        chosen = max(fitting, key=lambda p: p.parameter)
        requested: dict[str, Any] = {"strongest_share": strongest_share}
    else:
        assert quality is not None
        wanted = quality * float(validation.scores[:, strongest].mean()) if relative_to_strongest else quality
        reaching = [p for p in points if p.quality >= wanted]
        if not reaching:
            best = max(p.quality for p in points)
            raise ValueError(f"no quality target reaches a mean score of {wanted:.4f} (best: {best:.4f})")
        chosen = min(reaching, key=lambda p: p.parameter)
        requested = {"quality": quality, "relative_to_strongest": relative_to_strongest, "mean_score": wanted}
    return TargetChoice(rule, chosen.parameter, chosen.strong_share, chosen.quality, chosen.cost, requested)
