"""The classifier policy's operating points over evaluated prompts, as the server would decide them.

One prediction per prompt through ``ClassifierPolicy`` over the ONNX model (and the unfamiliar guard the
config would run it with), then the policy's ``decide`` for every quality target or cost weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from tierwise.classifier.model import ClassifierModel
from tierwise.router.config import Config, UnfamiliarConfig
from tierwise.router.policies.base import RoutingContext
from tierwise.router.policies.classifier import RULES, ClassifierPolicy, Rule
from tierwise.router.policies.unfamiliar import Judgement

Choices = npt.NDArray[np.int64]  # per prompt, the index of the chosen tier (in the data's tier order)

QUALITY_TARGETS: tuple[float, ...] = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 201), 4))
# lambda (per USD) of the utility rule: 30 steps a decade, so no router's curve skips an operating point
COST_WEIGHTS: tuple[float, ...] = (0.0, *(float(x) for x in np.logspace(-1, 6, 211)))


@dataclass(frozen=True)
class _FixedSource:
    model: ClassifierModel


@dataclass(frozen=True)
class Sweep:
    """A router's operating points: one choice vector per parameter value."""

    name: str
    runs: list[tuple[float, Choices]]


def classifier_sweeps(
    model: ClassifierModel,
    contexts: Sequence[RoutingContext],
    tier_names: Sequence[str],
    rules: Sequence[Rule] = RULES,
    targets: Sequence[float] = QUALITY_TARGETS,
    via_calibration: bool = False,
    unfamiliar: UnfamiliarConfig | None = None,
) -> list[Sweep]:
    """``ClassifierPolicy``'s decision rules, one prediction per prompt: the threshold rule over the
    quality ``targets``; the utility rule over ``COST_WEIGHTS`` (as the baselines' utility rule), or over
    ``targets`` through the model's calibration table when ``via_calibration``. ``unfamiliar``: the guard
    the server would apply (``serving_guard``); None judges the model alone."""
    index = {name: i for i, name in enumerate(tier_names)}
    policies = {
        rule: ClassifierPolicy(_FixedSource(model), list(tier_names), rule, unfamiliar=unfamiliar)
        for rule in rules
    }
    first = next(iter(policies.values()))
    judgements: list[Judgement] = []
    for context in contexts:
        judged = first.p_adequate(context)
        if judged is None:
            raise ValueError("an evaluation context has no embedding")
        judgements.append(judged)
    sweeps = []
    for rule, policy in policies.items():
        runs = []
        if rule == "utility" and not via_calibration:
            # The rule over the same lambda grid as every baseline's utility sweep: the calibration
            # table only maps a quality target to one of these lambdas.
            for weight in COST_WEIGHTS:
                chosen = [
                    index[policy.decide(context, judged, cost_weight=weight).tier]
                    for context, judged in zip(contexts, judgements, strict=True)
                ]
                runs.append((weight, np.array(chosen, dtype=np.int64)))
        else:
            for target in targets:
                choices = [
                    index[policy.decide(replace(context, quality_target=target), judged).tier]
                    for context, judged in zip(contexts, judgements, strict=True)
                ]
                runs.append((target, np.array(choices, dtype=np.int64)))
        sweeps.append(Sweep(f"classifier-{rule}", runs))
    return sweeps


def serving_guard(model: ClassifierModel, config: Config) -> UnfamiliarConfig | None:
    """The unfamiliar guard the server would run this model with: the config's, unless it trusts the model or the
    model has no calibration (which the server would refuse; an evaluation judges the model alone)."""
    guard = config.routing.classifier.unfamiliar
    return None if guard.action == "trust_model" or model.unfamiliarity is None else guard


def trusting(config: Config) -> Config:
    """``config`` with ``routing.classifier.unfamiliar.action: trust_model`` (the model alone decides)."""
    classifier = config.routing.classifier.model_copy(
        update={"unfamiliar": UnfamiliarConfig(action="trust_model")}
    )
    routing = config.routing.model_copy(update={"classifier": classifier})
    return config.model_copy(update={"routing": routing})


def guard_summary(
    model: ClassifierModel, config: Config, features: npt.NDArray[np.float32]
) -> dict[str, Any]:
    """Which guard the classifier's curves ran with, and the share of the evaluated prompts it flagged."""
    guard = serving_guard(model, config)
    if guard is None or model.unfamiliarity is None:
        why = (
            "trust_model in the config" if model.unfamiliarity is not None else "the model has no calibration"
        )
        return {"action": "trust_model", "why": why}
    _, scores = model.assess_matrix(features)
    assert scores is not None
    strengths = np.array([model.unfamiliarity.strength(float(x)) for x in scores])
    return {
        "action": guard.action,
        "measure": model.unfamiliarity.measure,
        "threshold": model.unfamiliarity.threshold,
        "unfamiliar_share": round(float((strengths > 0).mean()), 6),
        "mean_strength": round(float(strengths.mean()), 6),
    }
