"""Build the configured routing policy."""

from __future__ import annotations

from router.config import RoutingConfig
from router.policies.base import RoutingPolicy
from router.policies.baselines import CheapestPolicy, LengthPolicy, RandomPolicy, StrongestPolicy


def build_policy(routing: RoutingConfig) -> RoutingPolicy:
    if routing.policy == "cheapest":
        return CheapestPolicy()
    if routing.policy == "strongest":
        return StrongestPolicy()
    if routing.policy == "random":
        return RandomPolicy(routing.seed)
    if routing.policy == "length":
        return LengthPolicy(routing.length_thresholds)
    raise ValueError(f"routing.policy: unknown policy {routing.policy!r}")
