"""Config sections of A/B experiments: the experiment, its arms, and how they are named."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from tierwise.router.config.server import PolicyName
from tierwise.router.config.strict import TIER_NAME, StrictSection, duplicate_names

EXPERIMENT_NAME = TIER_NAME  # experiments and arms are named as tiers are


def _experiment_name(what: str, value: str) -> str:
    if not EXPERIMENT_NAME.match(value):
        raise ValueError(f"{what} names are 1-64 characters: letters, digits, '_', '.', '-'")
    return value


ArmName = Annotated[str, AfterValidator(functools.partial(_experiment_name, "arm"))]
ExperimentName = Annotated[str, AfterValidator(functools.partial(_experiment_name, "experiment"))]


class ArmConfig(StrictSection):
    """One arm of an experiment; every setting left unset is the service's own."""

    name: ArmName
    weight: float = Field(gt=0, description="share of units, relative to the other arms' weights")
    policy: PolicyName | None = Field(None, description="routing policy of this arm")
    quality_target: float | None = Field(
        None, ge=0, le=1, description="replaces routing.default_quality_target (a request's own target wins)"
    )
    model_version: str | None = Field(
        None, description="classifier registry version this arm routes with (policy classifier)"
    )
    cache: bool | None = Field(None, description="false: this arm neither reads nor fills the cache")


class ExperimentConfig(StrictSection):
    """A deterministic A/B experiment: each unit (user, else tenant) hashes into one arm for good."""

    name: ExperimentName
    unit: Literal["user", "tenant"] = Field(
        "user", description="user: the request's user, else its tenant; tenant: always the tenant"
    )
    salt: str = Field("", description="hash salt; default: the experiment name")
    arms: tuple[ArmConfig, ...] = Field(min_length=2)
    control: str = Field(description="the arm the others are compared with")
    tenants: tuple[str, ...] = Field((), description="only these tenants take part (empty: all)")
    features: tuple[str, ...] = Field((), description="only these features take part (empty: all)")
    force: bool = Field(
        False, description="accept changed weights, arms or salt of a running experiment (reshuffles units)"
    )

    @model_validator(mode="after")
    def _arms_consistent(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        duplicates = duplicate_names(names)
        if duplicates:
            raise ValueError(f"arms: duplicate arm names {duplicates}")
        if self.control not in names:
            raise ValueError(f"control: {self.control!r} is not one of the arms {names}")
        return self

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    def arm(self, name: str) -> ArmConfig:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)
