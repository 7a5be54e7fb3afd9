"""A/B experiments: deterministic arm assignment, each arm's routing policy, the store that pins
an experiment's salt and weights, and the per-arm report with confidence intervals."""

from tierwise.router.experiments.arms import (
    ArmRoute,
    ExperimentRouter,
    build_experiment_router,
    needs_serving_model,
)
from tierwise.router.experiments.assignment import ARM_OVERRIDE_KEY, Assigner, BadArmOverride
from tierwise.router.experiments.stats import (
    Interval,
    bootstrap_mean_difference,
    proportion_difference,
    welch_interval,
)
from tierwise.router.experiments.store import check_and_record, recorded_since

__all__ = [
    "ARM_OVERRIDE_KEY",
    "ArmRoute",
    "Assigner",
    "BadArmOverride",
    "ExperimentRouter",
    "Interval",
    "bootstrap_mean_difference",
    "build_experiment_router",
    "check_and_record",
    "needs_serving_model",
    "proportion_difference",
    "recorded_since",
    "welch_interval",
]
