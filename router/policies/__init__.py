"""Routing policies: which tier answers a request. Baselines (cheapest, strongest, random, length)
and the classifier policy over P(adequate | tier), built from the config by ``build_policy``."""

from tierwise.router.policies.base import RoutingContext, RoutingPolicy, TierOption
from tierwise.router.policies.baselines import LengthPolicy
from tierwise.router.policies.classifier import (
    RULES,
    AdequacyModel,
    ClassifierPolicy,
    ModelSource,
    Rule,
    cheapest_adequate,
    max_utility,
)
from tierwise.router.policies.factory import build_policy, load_model_version, load_serving_model

__all__ = [
    "RULES",
    "AdequacyModel",
    "ClassifierPolicy",
    "LengthPolicy",
    "ModelSource",
    "RoutingContext",
    "RoutingPolicy",
    "Rule",
    "TierOption",
    "build_policy",
    "cheapest_adequate",
    "load_model_version",
    "load_serving_model",
    "max_utility",
]
