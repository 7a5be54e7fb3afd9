"""Build the configured routing policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tierwise.router.config import RoutingConfig
from tierwise.router.policies.base import RoutingPolicy
from tierwise.router.policies.baselines import CheapestPolicy, LengthPolicy, RandomPolicy, StrongestPolicy

if TYPE_CHECKING:
    from tierwise.classifier import ClassifierModel
    from tierwise.classifier.registry import ServingModel
    from tierwise.router.policies.classifier import ModelSource


def build_baseline(routing: RoutingConfig) -> RoutingPolicy:
    if routing.policy == "cheapest":
        return CheapestPolicy()
    if routing.policy == "strongest":
        return StrongestPolicy()
    if routing.policy == "random":
        return RandomPolicy(routing.seed)
    if routing.policy == "length":
        return LengthPolicy(routing.length_thresholds)
    raise ValueError(f"routing.policy: {routing.policy!r} is not a baseline policy")


def load_serving_model(routing: RoutingConfig, tiers: Sequence[str], device: str = "auto") -> ServingModel:
    """Load the registry's serving version now: a missing, tampered or mismatched model refuses the start."""
    from tierwise.classifier.registry import ModelRegistry, ServingModel
    from tierwise.router.config import ConfigError

    serving = ServingModel(
        ModelRegistry(routing.classifier.registry),
        tiers,
        device=device,
        require_unfamiliarity=routing.classifier.unfamiliar.action != "trust_model",
    )
    loaded = serving.reload()
    if not serving.loaded:
        if routing.classifier.cold_start is not None and _no_serving_version(serving):
            return serving  # the cold-start policy serves until the watcher loads the first promoted version
        raise ConfigError(f"routing.classifier.registry: no usable model version: {loaded.error}")
    return serving


def _no_serving_version(serving: ServingModel) -> bool:
    from tierwise.classifier.registry import RegistryError

    try:
        return serving.registry.serving_version() is None
    except RegistryError:
        return False


def cold_start_policy(routing: RoutingConfig) -> RoutingPolicy | None:
    """The baseline serving while no classifier version is promoted (``routing.classifier.cold_start``)."""
    name = routing.classifier.cold_start
    return None if name is None else build_baseline(routing.model_copy(update={"policy": name}))


class PinnedModel:
    """One registry version, never swapped: what an experiment arm that names a version routes with."""

    def __init__(self, model: ClassifierModel) -> None:
        self.model = model


def load_model_version(
    routing: RoutingConfig, tiers: Sequence[str], version: str, device: str = "auto"
) -> PinnedModel:
    """Load ``version`` from the registry now: a missing, tampered or mismatched one refuses the start."""
    from tierwise.classifier import ModelRefused, ModelRegistry, RegistryError, load_model
    from tierwise.router.config import ConfigError

    registry = ModelRegistry(routing.classifier.registry)
    try:
        required = routing.classifier.unfamiliar.action != "trust_model"
        model = load_model(
            registry.version_dir(version), tiers, device=device, require_unfamiliarity=required
        )
        return PinnedModel(model)
    except (ModelRefused, RegistryError, OSError) as exc:
        raise ConfigError(f"model version {version!r} in {registry.root}: {exc}") from None


def build_policy(
    routing: RoutingConfig, tiers: Sequence[str], serving: ModelSource | None = None
) -> RoutingPolicy:
    """The configured policy; ``classifier`` needs the ``serving`` model holder."""
    if routing.policy != "classifier":
        return build_baseline(routing)
    from tierwise.router.config import ConfigError
    from tierwise.router.policies.classifier import ClassifierPolicy

    if serving is None:
        raise ValueError("the classifier policy needs a serving model (load_serving_model)")
    try:
        return ClassifierPolicy(
            serving,
            tiers,
            routing.classifier.rule,
            unfamiliar=routing.classifier.unfamiliar,
            cold_start=cold_start_policy(routing),
        )
    except ValueError as exc:
        raise ConfigError(f"routing.classifier: {exc}") from None
