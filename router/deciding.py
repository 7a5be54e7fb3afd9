"""Steps 8-9 of the pipeline: the quality target that applies, the tier (pinned, or the routing
policy's choice, made by the request workers) and the ``Decision`` that says why."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from tierwise.cache.embedder import Vector
from tierwise.router.budgets.manager import Degrade
from tierwise.router.config import Config, TierConfig
from tierwise.router.experiments.arms import ArmRoute
from tierwise.router.outcome import Decision
from tierwise.router.policies.base import RoutingContext, RoutingPolicy, TierOption
from tierwise.router.request_work import RequestWork
from tierwise.router.types import RequestSpec


def quality_target(config: Config, spec: RequestSpec, arm: ArmRoute | None, degrade: Degrade | None) -> float:
    """The request's, else its experiment arm's, else the config's; a soft budget limit may lower it."""
    target = config.routing.default_quality_target
    if arm is not None and arm.quality_target is not None:
        target = arm.quality_target
    if spec.quality_target is not None:
        target = spec.quality_target
    if degrade is not None and degrade.quality_target is not None:
        target = min(target, degrade.quality_target)
    return target


async def decide(
    work: RequestWork,
    config: Config,
    routing_policy: RoutingPolicy,
    expected_cost: Callable[[TierConfig], Decimal],
    spec: RequestSpec,
    request_id: str,
    input_tokens: int,
    candidates: Sequence[TierOption],
    degrade: Degrade | None,
    embedding: Vector | None,
    arm: ArmRoute | None,
) -> Decision:
    p_adequate: dict[str, float] = {}
    version, policy = "", "pinned"
    if spec.tier is not None and (degrade is None or any(o.name == spec.tier for o in candidates)):
        tier_name, reason = spec.tier, "pinned"
    else:
        target = quality_target(config, spec, arm, degrade)
        context = RoutingContext(spec, input_tokens, candidates, target, embedding)
        choice = await work.choose(routing_policy, context)
        tier_name, reason, policy = choice.tier, choice.reason, routing_policy.name
        p_adequate, version = dict(choice.p_adequate), choice.model_version
    if degrade is not None:
        reason = degrade.reason
    tier = config.tier(tier_name)
    return Decision(
        request_id=request_id,
        tier=tier.name,
        model=tier.model,
        provider=tier.provider,
        reason=reason,
        policy=policy,
        estimated_input_tokens=input_tokens,
        estimated_cost_usd=expected_cost(tier),
        p_adequate=p_adequate,
        model_version=version,
        experiment=arm.assignment.experiment if arm is not None else "",
        arm=arm.assignment.arm if arm is not None else "",
    )
