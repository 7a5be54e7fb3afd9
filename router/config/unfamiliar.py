"""``routing.classifier.unfamiliar``: what the classifier policy does with a prompt its model finds
unfamiliar (past the threshold calibrated on validation and pinned in the model's manifest)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tierwise.router.config.strict import StrictSection

UnfamiliarAction = Literal["shrink", "quality_target", "tier", "trust_model"]


class UnfamiliarConfig(StrictSection):
    action: UnfamiliarAction = Field(
        "shrink",
        description="shrink: move P(adequate) toward each tier's base rate, the further the more unfamiliar; "
        "quality_target: decide on the base rates with this target instead of the request's; "
        "tier: send it to this tier (or the next stronger one that can take it); "
        "trust_model: use the model's P everywhere (models without a calibration load only then)",
    )
    quality_target: float | None = Field(
        None, ge=0, le=1, description="action quality_target: the target unfamiliar prompts are routed with"
    )
    tier: str | None = Field(None, description="action tier: the tier unfamiliar prompts go to")

    @model_validator(mode="after")
    def _fields_of_the_action(self) -> UnfamiliarConfig:
        for name in ("quality_target", "tier"):
            given = getattr(self, name) is not None
            if self.action == name and not given:
                raise ValueError(f"{name}: action {name} needs it")
            if self.action != name and given:
                raise ValueError(f"{name}: only action {name} takes it (the action is {self.action})")
        return self
