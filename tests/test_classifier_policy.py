"""ClassifierPolicy: the two decision rules, fallbacks, and refusing models that do not fit."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.test_classifier_model import EMBEDDER_KEY, TIERS, build_version
from tierwise.classifier import FEATURE_SPEC, ClassifierModel, UtilityCalibration, load_model
from tierwise.router.policies.base import RoutingContext, TierOption
from tierwise.router.policies.baselines import CheapestPolicy
from tierwise.router.policies.classifier import RULES, ClassifierPolicy, cheapest_adequate, max_utility
from tierwise.router.types import ChatMessage, RequestSpec

OPTIONS = (
    TierOption("small", "s", Decimal("0.0001"), 256),
    TierOption("medium", "m", Decimal("0.001"), 256),
    TierOption("large", "l", Decimal("0.01"), 256),
)


@dataclass
class FixedModel:
    """An adequacy model answering fixed probabilities (the decision rules are what is tested)."""

    p: dict[str, float]
    calibration: UtilityCalibration | None = None
    version: str = "fixed-1"
    fail: bool = False

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(self.p)

    def predict(self, features: npt.NDArray[np.float32]) -> dict[str, float]:
        if self.fail:
            raise RuntimeError("onnxruntime exploded")
        assert features.shape == (FEATURE_SPEC.size,)
        return dict(self.p)


@dataclass
class Source:
    model: FixedModel | ClassifierModel


def context(
    target: float, embedding: bool = True, candidates: tuple[TierOption, ...] = OPTIONS
) -> RoutingContext:
    request = RequestSpec(
        tenant="t",
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "What is 2+2?")),
    )
    vector = np.ones(FEATURE_SPEC.embedding_dim, dtype=np.float32) / np.sqrt(FEATURE_SPEC.embedding_dim)
    return RoutingContext(request, 12, candidates, target, vector if embedding else None)


def test_threshold_rule_takes_the_cheapest_adequate_tier() -> None:
    policy = ClassifierPolicy(Source(FixedModel({"small": 0.5, "medium": 0.85, "large": 0.95})), TIERS)
    choice = policy.choose(context(0.8))
    assert (choice.tier, choice.reason) == ("medium", "cheapest-adequate")
    assert choice.p_adequate == {"small": 0.5, "medium": 0.85, "large": 0.95}
    assert choice.model_version == "fixed-1"
    assert policy.choose(context(0.4)).tier == "small"
    assert policy.choose(context(0.9)).tier == "large"


def test_threshold_rule_falls_back_to_the_highest_p() -> None:
    policy = ClassifierPolicy(Source(FixedModel({"small": 0.5, "medium": 0.7, "large": 0.6})), TIERS)
    choice = policy.choose(context(0.9))
    assert (choice.tier, choice.reason) == ("medium", "highest-p")
    # among the candidates only: a tier whose circuit is open is not considered
    assert policy.choose(context(0.9, candidates=(OPTIONS[0], OPTIONS[2]))).tier == "large"
    assert cheapest_adequate({"small": 0.6, "medium": 0.6}, OPTIONS[:2], 0.9) == ("small", "highest-p")


def test_utility_rule_trades_probability_against_cost() -> None:
    p = {"small": 0.5, "medium": 0.8, "large": 0.9}
    assert max_utility(p, OPTIONS, 0.0) == ("large", "utility")
    assert max_utility(p, OPTIONS, 20.0) == ("medium", "utility")  # 0.78 vs 0.7 vs 0.498
    assert max_utility(p, OPTIONS, 1000.0) == ("small", "utility")  # 0.4 vs -0.2 vs -9.1
    # lambda comes from the model's calibration: a higher target, a smaller lambda, a stronger tier
    calibration = UtilityCalibration((0.5, 0.7, 0.9), (1000.0, 20.0, 0.0))
    policy = ClassifierPolicy(Source(FixedModel(p, calibration)), TIERS, rule="utility")
    assert [policy.choose(context(t)).tier for t in (0.5, 0.7, 0.9)] == ["small", "medium", "large"]
    assert policy.choose(context(0.7)).reason == "utility"


def test_without_an_embedding_or_with_a_failing_model_the_fallback_decides() -> None:
    policy = ClassifierPolicy(
        Source(FixedModel({"small": 0.9, "medium": 0.9, "large": 0.9})), TIERS, fallback=CheapestPolicy()
    )
    choice = policy.choose(context(0.5, embedding=False))
    assert (choice.tier, choice.reason) == ("small", "fallback:no-embedding")
    failing = ClassifierPolicy(
        Source(FixedModel({"small": 0.9, "medium": 0.9, "large": 0.9}, fail=True)), TIERS
    )
    choice = failing.choose(context(0.5))
    assert (choice.tier, choice.reason) == ("large", "fallback:model-error")  # the default: strongest


def test_models_that_do_not_fit_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"not the configured tiers \['huge'\]"):
        ClassifierPolicy(Source(FixedModel({"small": 0.5, "medium": 0.5, "large": 0.5})), [*TIERS, "huge"])
    with pytest.raises(ValueError, match="no utility calibration"):
        ClassifierPolicy(
            Source(FixedModel({"small": 0.5, "medium": 0.5, "large": 0.5})), TIERS, rule="utility"
        )
    with pytest.raises(ValueError, match="unknown decision rule"):
        ClassifierPolicy(Source(FixedModel({"small": 0.5})), ["small"], rule="best")  # type: ignore[arg-type]


def test_policy_over_a_real_onnx_model(tmp_path: Path) -> None:
    calibration = UtilityCalibration((0.0, 1.0), (100.0, 0.0))
    model = load_model(build_version(tmp_path, calibration=calibration), TIERS, EMBEDDER_KEY, device="cpu")
    for rule in RULES:
        policy = ClassifierPolicy(Source(model), TIERS, rule=rule)
        low, high = policy.choose(context(0.0)), policy.choose(context(1.0))
        assert low.tier == "small" and low.model_version == model.version
        assert set(low.p_adequate) == set(TIERS)
        # at target 1 no tier is sure enough (threshold) and lambda is 0 (utility): the most likely tier
        assert high.tier == max(high.p_adequate, key=lambda t: high.p_adequate[t])
    # the same request twice: the same decision (no hidden state)
    policy = ClassifierPolicy(Source(model), TIERS)
    assert policy.choose(replace(context(0.6))) == policy.choose(context(0.6))
