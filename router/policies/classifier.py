"""The learned policy: P(adequate) per tier from the serving classifier, then a decision rule.

Two rules read the same probabilities:

- ``threshold``: the cheapest candidate whose P(adequate) reaches the quality
  target; when none does, the candidate with the highest P.
- ``utility``: the candidate maximising P(adequate) - lambda * expected cost,
  lambda looked up from the quality target in the model's calibration (the
  largest lambda that still reached that adequacy on the validation split).

Without an embedding, or when the model fails, the fallback policy decides and
the reason says so. With ``routing.classifier.unfamiliar`` on, the model also
says how unfamiliar the prompt is, and past its calibrated threshold the
policy leans on the safe prior (``unfamiliar.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from tierwise.classifier import UtilityCalibration, prompt_features
from tierwise.classifier.features import features_of
from tierwise.classifier.model import Assessment
from tierwise.classifier.registry import NoModelServing
from tierwise.classifier.unfamiliarity import UnfamiliarityCalibration
from tierwise.router.config import UnfamiliarConfig
from tierwise.router.policies.base import RoutingContext, RoutingPolicy, TierChoice, TierOption
from tierwise.router.policies.baselines import StrongestPolicy
from tierwise.router.policies.unfamiliar import UNFAMILIAR_PREFIX, Judgement, UnfamiliarGuard

log = logging.getLogger(__name__)

Rule = Literal["threshold", "utility"]
RULES: tuple[Rule, ...] = ("threshold", "utility")


class AdequacyModel(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def tiers(self) -> tuple[str, ...]: ...

    @property
    def calibration(self) -> UtilityCalibration | None: ...

    @property
    def unfamiliarity(self) -> UnfamiliarityCalibration | None: ...

    def predict(self, features: npt.NDArray[np.float32]) -> dict[str, float]: ...

    def assess(self, features: npt.NDArray[np.float32]) -> Assessment: ...


class ModelSource(Protocol):
    """Where the policy takes the model from for each request (``ServingModel`` swaps it on reload)."""

    @property
    def model(self) -> AdequacyModel: ...


def _covered(p_adequate: Mapping[str, float], candidates: Sequence[TierOption]) -> list[TierOption]:
    known = [c for c in candidates if c.name in p_adequate]
    if not known:
        raise ValueError("no candidate tier has a probability")
    return known


def cheapest_adequate(
    p_adequate: Mapping[str, float], candidates: Sequence[TierOption], quality_target: float
) -> tuple[str, str]:
    """(tier, reason) by the threshold rule over the candidates the probabilities cover."""
    known = _covered(p_adequate, candidates)
    for option in known:
        if p_adequate[option.name] >= quality_target:
            return option.name, "cheapest-adequate"
    best = max(known, key=lambda c: p_adequate[c.name])  # the first (cheapest) among equals
    return best.name, "highest-p"


def max_utility(
    p_adequate: Mapping[str, float], candidates: Sequence[TierOption], cost_weight: float
) -> tuple[str, str]:
    """(tier, reason) maximising P(adequate) - cost_weight * expected cost; the cheapest among equals."""
    known = _covered(p_adequate, candidates)
    best = max(known, key=lambda c: p_adequate[c.name] - cost_weight * float(c.expected_cost_usd))
    return best.name, "utility"


def conversation_turns(context: RoutingContext) -> int:
    return sum(1 for m in context.request.messages if m.role != "system")


def context_features(context: RoutingContext) -> npt.NDArray[np.float32] | None:
    """The feature vector of the request, from its shared embedding; None without one."""
    if context.embedding is None:
        return None
    if context.statistics is not None:
        return features_of(context.embedding, context.statistics)
    return prompt_features(
        context.embedding, context.request.prompt_text, context.input_tokens, conversation_turns(context)
    )


class ClassifierPolicy:
    name = "classifier"
    needs_embedding = True

    def __init__(
        self,
        source: ModelSource,
        configured_tiers: Sequence[str],
        rule: Rule = "threshold",
        fallback: RoutingPolicy | None = None,
        unfamiliar: UnfamiliarConfig | None = None,
        cold_start: RoutingPolicy | None = None,
    ) -> None:
        """``cold_start``: the policy deciding while ``source`` has no model yet (checked on each request);
        without it a source with no model is refused here."""
        if rule not in RULES:
            raise ValueError(f"unknown decision rule {rule!r}; choose one of {RULES}")
        self._source = source
        self.rule: Rule = rule
        self._fallback = fallback or StrongestPolicy()
        self._cold_start = cold_start
        guarded = unfamiliar is not None and unfamiliar.action != "trust_model"
        self._guard = UnfamiliarGuard(unfamiliar, configured_tiers) if guarded and unfamiliar else None
        try:
            model = source.model
        except NoModelServing:
            if cold_start is None:
                raise
            return  # a version loaded later passed the registry's checks for these tiers
        unknown = [t for t in configured_tiers if t not in model.tiers]
        if unknown:
            raise ValueError(
                f"classifier model {model.version!r} knows tiers {list(model.tiers)}, "
                f"not the configured tiers {unknown}"
            )
        if rule == "utility" and model.calibration is None:
            raise ValueError(
                f"classifier model {model.version!r} has no utility calibration; use rule 'threshold'"
            )
        if guarded and model.unfamiliarity is None:
            raise ValueError(
                f"classifier model {model.version!r} has no unfamiliarity calibration; retrain it, or set "
                "unfamiliar.action: trust_model"
            )

    def p_adequate(self, context: RoutingContext) -> Judgement | None:
        """P(adequate) for every tier the model knows (moved toward the base rates when the prompt is
        unfamiliar), and the model that said so; None without an embedding."""
        features = context_features(context)
        if features is None:
            return None
        model = self._source.model  # held for the whole request, whatever a reload does meanwhile
        if self._guard is not None:
            return self._guard.judge(model, features)
        return Judgement(model.predict(features), model)

    def decide(
        self, context: RoutingContext, judged: Judgement, cost_weight: float | None = None
    ) -> TierChoice:
        """The rule's choice on ``judged``; ``cost_weight`` replaces the utility rule's calibrated lambda."""
        model, p_adequate = judged.model, judged.p_adequate
        acted = self._guard.decide(context, p_adequate) if self._guard and judged.unfamiliar else None
        if acted is not None:
            tier, reason = acted
        elif self.rule == "threshold" and cost_weight is None:
            tier, reason = cheapest_adequate(p_adequate, context.candidates, context.quality_target)
        else:
            weight = cost_weight
            if weight is None:
                calibration = model.calibration
                if calibration is None:
                    raise ValueError(f"classifier model {model.version!r} has no utility calibration")
                weight = calibration.lambda_for(context.quality_target)
            tier, reason = max_utility(p_adequate, context.candidates, weight)
        if judged.unfamiliar and acted is None:
            reason = UNFAMILIAR_PREFIX + reason
        return TierChoice(tier, reason, dict(p_adequate), model.version)

    def choose(self, context: RoutingContext) -> TierChoice:
        try:
            judged = self.p_adequate(context)
            if judged is None:
                return self._fall_back(context, "no-embedding")
            return self.decide(context, judged)
        except NoModelServing:
            if self._cold_start is None:
                return self._fall_back(context, "no-model")
            choice = self._cold_start.choose(context)
            return TierChoice(choice.tier, f"cold-start:{self._cold_start.name}", choice.p_adequate)
        except Exception as exc:  # the model must never take a request down with it
            log.warning("classifier policy failed, falling back to %s: %s", self._fallback.name, exc)
            return self._fall_back(context, "model-error")

    def _fall_back(self, context: RoutingContext, why: str) -> TierChoice:
        choice = self._fallback.choose(context)
        return TierChoice(choice.tier, f"fallback:{why}", choice.p_adequate, choice.model_version)
