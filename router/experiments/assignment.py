"""Step 4: which experiment arm a request belongs to (ARCHITECTURE.md, "The request's way through").

Assignment works as feature-flag systems do: SHA-256 of (experiment salt, unit id)
picks one of ``BUCKETS`` buckets, and the arms own consecutive bucket ranges sized
by their weights. The same unit always lands in the same arm, on every replica and
after every restart, as long as the salt and the weights stay the same (which
``tierwise.router.experiments.store`` enforces). A request's metadata may force an arm
(``tierwise-arm: NAME``) for testing.

This module is pure: no I/O, no policies; the pipeline and the spend records both
ask it, so a failed request is still counted in its arm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from tierwise.router.config import ExperimentConfig
from tierwise.router.types import RequestSpec

BUCKETS = 10_000
ARM_OVERRIDE_KEY = "tierwise-arm"


class BadArmOverride(ValueError):
    """The request's ``tierwise-arm`` metadata names no arm it could be in."""


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    arm: str
    forced: bool = False  # chosen by the request's metadata, not by the hash


def bucket(salt: str, unit_id: str) -> int:
    """The unit's bucket in [0, BUCKETS): stable across processes, machines and Python versions."""
    digest = hashlib.sha256(f"{salt}\x00{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def bucket_bounds(weights: Sequence[float]) -> tuple[int, ...]:
    """Each arm's exclusive upper bucket, by cumulative weight; the last is always BUCKETS."""
    total = sum(weights)
    bounds, running = [], 0.0
    for weight in weights:
        running += weight
        bounds.append(round(running / total * BUCKETS))
    bounds[-1] = BUCKETS
    return tuple(bounds)


def unit_id(experiment: ExperimentConfig, spec: RequestSpec) -> str:
    # Scoped by tenant: two tenants' users with the same id are different people.
    if experiment.unit == "user" and spec.user:
        return f"user\x00{spec.tenant}\x00{spec.user}"
    return f"tenant\x00{spec.tenant}"


def _applies(experiment: ExperimentConfig, spec: RequestSpec) -> bool:
    return (not experiment.tenants or spec.tenant in experiment.tenants) and (
        not experiment.features or spec.feature in experiment.features
    )


class Assigner:
    """The configured experiments; a request takes part in the first one whose filters it passes."""

    def __init__(self, experiments: Sequence[ExperimentConfig]) -> None:
        self._experiments = tuple(experiments)
        self._bounds = {e.name: bucket_bounds([a.weight for a in e.arms]) for e in self._experiments}

    def __bool__(self) -> bool:
        return bool(self._experiments)

    def experiment_for(self, spec: RequestSpec) -> ExperimentConfig | None:
        for experiment in self._experiments:
            if _applies(experiment, spec):
                return experiment
        return None

    def arm_for_unit(self, experiment: ExperimentConfig, unit: str) -> str:
        b = bucket(experiment.hash_salt, unit)
        for arm, upper in zip(experiment.arms, self._bounds[experiment.name], strict=True):
            if b < upper:
                return arm.name
        raise AssertionError("the last bound is BUCKETS")

    def assign(self, spec: RequestSpec) -> Assignment | None:
        """The request's experiment and arm; None when no experiment applies to it."""
        experiment = self.experiment_for(spec)
        forced = self.forced_arm(spec)
        if experiment is None:
            return None
        if forced is not None:
            return Assignment(experiment.name, forced, forced=True)
        return Assignment(experiment.name, self.arm_for_unit(experiment, unit_id(experiment, spec)))

    def forced_arm(self, spec: RequestSpec) -> str | None:
        """The arm the request's metadata forces, checked; None when it forces none."""
        wanted = spec.metadata.get(ARM_OVERRIDE_KEY)
        if wanted is None:
            return None
        experiment = self.experiment_for(spec)
        if experiment is None:
            raise BadArmOverride(
                "no experiment applies to this request (tenant and feature), so no arm can be forced"
            )
        arms = [a.name for a in experiment.arms]
        if wanted not in arms:
            raise BadArmOverride(
                f"experiment {experiment.name!r} has no arm {wanted[:64]!r}; its arms: {arms}"
            )
        return wanted
