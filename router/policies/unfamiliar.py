"""The classifier policy's guard for prompts its model does not know (``routing.classifier.unfamiliar``).

The model's version carries an unfamiliarity calibration (``tierwise.classifier.unfamiliarity``):
a score per prompt, the threshold past which the prompt is unfamiliar, and each tier's base rate.
Past the threshold the policy leans on that safe prior instead of the model:

- ``shrink``: P(adequate) moves toward the base rates, the more the further past the threshold
  (all the way at the calibration's ``full`` score), and the decision rule reads that;
- ``quality_target``: the decision reads the base rates alone, with the configured target;
- ``tier``: the configured tier, or the cheapest stronger candidate when it cannot take the request.

Every such decision's reason starts with ``unfamiliar:`` (the metric label is ``unfamiliar``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from tierwise.classifier.model import Assessment
from tierwise.classifier.unfamiliarity import UnfamiliarityCalibration
from tierwise.router.config import UnfamiliarConfig
from tierwise.router.outcome import UNFAMILIAR_PREFIX
from tierwise.router.policies.base import RoutingContext

if TYPE_CHECKING:
    from tierwise.router.policies.classifier import AdequacyModel

__all__ = ["UNFAMILIAR_PREFIX", "AssessingModel", "Judgement", "UnfamiliarGuard"]


class AssessingModel(Protocol):
    @property
    def tiers(self) -> tuple[str, ...]: ...

    @property
    def unfamiliarity(self) -> UnfamiliarityCalibration | None: ...

    def assess(self, features: npt.NDArray[np.float32]) -> Assessment: ...


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the decision rule reads for one request, and what the model said of the prompt."""

    p_adequate: dict[str, float]  # after the guard: shrunk toward the base rates when unfamiliar
    model: AdequacyModel
    unfamiliarity: float | None = None  # the calibrated score; None when the guard is off
    strength: float = 0.0  # how far P(adequate) was moved toward the base rates (0..1)

    @property
    def unfamiliar(self) -> bool:
        return self.strength > 0.0


class UnfamiliarGuard:
    def __init__(self, config: UnfamiliarConfig, configured_tiers: Sequence[str]) -> None:
        if config.action == "trust_model":
            raise ValueError("the unfamiliar guard is not built with action trust_model")
        self.config = config
        self._order = {name: i for i, name in enumerate(configured_tiers)}

    def judge(self, model: AdequacyModel, features: npt.NDArray[np.float32]) -> Judgement:
        """The model's P(adequate), moved toward the base rates as far as the prompt is unfamiliar."""
        assessment = model.assess(features)
        calibration = model.unfamiliarity
        if calibration is None or assessment.unfamiliarity is None:
            raise ValueError(f"classifier model {model.version!r} has no unfamiliarity calibration")
        strength = calibration.strength(assessment.unfamiliarity)
        p = assessment.p_adequate
        if strength > 0.0 and self.config.action != "tier":
            moved = 1.0 if self.config.action == "quality_target" else strength
            p = dict(zip(model.tiers, calibration.shrink([p[t] for t in model.tiers], moved), strict=True))
        return Judgement(p, model, assessment.unfamiliarity, strength)

    def decide(self, context: RoutingContext, p_adequate: Mapping[str, float]) -> tuple[str, str] | None:
        """(tier, reason) where the action decides by itself (``tier``, ``quality_target``); None for shrink,
        whose decision is the rule's on the shrunk P."""
        from tierwise.router.policies.classifier import cheapest_adequate

        if self.config.action == "quality_target":
            target = self.config.quality_target
            assert target is not None  # the config requires it with this action
            tier, _ = cheapest_adequate(p_adequate, context.candidates, target)
            return tier, UNFAMILIAR_PREFIX + "quality-target"
        if self.config.action == "tier":
            return self._tier_or_stronger(context), UNFAMILIAR_PREFIX + "tier"
        return None

    def _tier_or_stronger(self, context: RoutingContext) -> str:
        wanted = self.config.tier
        assert wanted is not None  # the config requires it with this action
        floor = self._order.get(wanted, len(self._order))
        for option in context.candidates:  # cheapest first
            if self._order.get(option.name, -1) >= floor:
                return option.name
        return context.candidates[-1].name  # none as strong can take it: the strongest that can
