"""What each experiment arm changes about routing, built once at start-up.

An arm may replace the routing policy (its own, built with the policy factory;
``model_version`` pins a classifier registry version), the default quality
target, and whether the cache is used. Anything an arm leaves unset is the
service's own setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from tierwise.router.config import ArmConfig, Config, ConfigError
from tierwise.router.experiments.assignment import Assigner, Assignment
from tierwise.router.policies.base import RoutingPolicy
from tierwise.router.policies.classifier import ModelSource
from tierwise.router.policies.factory import build_policy, load_model_version
from tierwise.router.types import RequestSpec


@dataclass(frozen=True, slots=True)
class ArmRoute:
    """A request's arm and what the pipeline does differently for it."""

    assignment: Assignment
    policy: RoutingPolicy | None  # None: the service's policy
    quality_target: float | None  # None: routing.default_quality_target
    cache: bool  # False: neither read nor fill the cache


class ExperimentRouter:
    def __init__(self, assigner: Assigner, arms: Mapping[tuple[str, str], ArmRoute]) -> None:
        self._assigner = assigner
        self._arms = dict(arms)

    @property
    def needs_embedding(self) -> bool:
        return any(a.policy is not None and a.policy.needs_embedding for a in self._arms.values())

    def route_for(self, spec: RequestSpec) -> ArmRoute | None:
        assignment = self._assigner.assign(spec)
        if assignment is None:
            return None
        return replace(self._arms[(assignment.experiment, assignment.arm)], assignment=assignment)


def needs_serving_model(config: Config) -> bool:
    """Whether anything routes with the registry's serving (hot-swapped) classifier version."""
    if config.routing.policy == "classifier":
        return True
    return any(
        a.policy == "classifier" and a.model_version is None for e in config.experiments for a in e.arms
    )


def _arm_policy(config: Config, arm: ArmConfig, serving: ModelSource | None) -> RoutingPolicy | None:
    if arm.policy is None and arm.model_version is None:
        return None
    routing = config.routing.model_copy(update={"policy": arm.policy or config.routing.policy})
    source = serving
    if arm.model_version is not None:
        source = load_model_version(routing, config.tier_names, arm.model_version, config.cache.device)
    return build_policy(routing, config.tier_names, source)


def build_experiment_router(config: Config, serving: ModelSource | None) -> ExperimentRouter | None:
    """Every arm's policy, built now, so a bad model version or policy refuses the start."""
    if not config.experiments:
        return None
    arms: dict[tuple[str, str], ArmRoute] = {}
    for i, experiment in enumerate(config.experiments):
        for j, arm in enumerate(experiment.arms):
            try:
                policy = _arm_policy(config, arm, serving)
            except (ConfigError, ValueError) as exc:
                raise ConfigError(f"experiments[{i}].arms[{j}] ({arm.name}): {exc}") from None
            cache = config.cache.enabled if arm.cache is None else arm.cache
            arms[(experiment.name, arm.name)] = ArmRoute(
                Assignment(experiment.name, arm.name), policy, arm.quality_target, cache
            )
    return ExperimentRouter(Assigner(config.experiments), arms)
