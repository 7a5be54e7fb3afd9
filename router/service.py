"""Everything a running tierwise needs, built from the config, and closed together."""

from __future__ import annotations

from dataclasses import dataclass

from router.budgets import BudgetManager, build_budget_manager
from router.config import Config
from router.feedback import FeedbackStore, SqliteFeedbackStore
from router.pipeline import Pipeline
from router.policies.factory import build_policy
from router.providers.base import Provider
from router.providers.factory import build_provider
from router.resilience import TierHealth
from router.tokens import TokenCounter


@dataclass
class Service:
    config: Config
    pipeline: Pipeline
    providers: dict[str, Provider]
    feedback: FeedbackStore
    budgets: BudgetManager
    health: TierHealth

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.budgets.aclose()
        await self.feedback.aclose()


def build_service(config: Config) -> Service:
    tokens = TokenCounter()
    tokens.preload()  # seed and verify the offline encodings at start-up, not on the first request
    providers = {tier.name: build_provider(tier) for tier in config.tiers}
    budgets = build_budget_manager(config)
    health = TierHealth(config)
    pipeline = Pipeline(
        config, providers, build_policy(config.routing), tokens, budgets=budgets, health=health
    )
    feedback = SqliteFeedbackStore(config.store.path / "feedback.sqlite3")
    return Service(config, pipeline, providers, feedback, budgets, health)
