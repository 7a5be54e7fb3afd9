"""The learning loop's side of a running server: after a response is returned, keep a traffic
sample of the request (``router.traffic``) and, for a sampled share, judge the answer
(``router.sampling``).

``observe`` is the one call the request path makes (from accounting, once the
answer is final); it only queues. Everything else runs in background tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.config import Config, ConfigError
from router.feedback import FeedbackStore
from router.judge import Judge, LlmJudge, ReplayJudge
from router.ledger import SpendLedger
from router.ledger_builder import load_user_salt
from router.outcome import Completion
from router.providers.base import Provider
from router.sampling import Sampler
from router.tokens import TokenCounter
from router.traffic import TrafficRecorder, build_traffic_recorder
from router.types import RequestSpec


@dataclass
class LearningLoop:
    traffic: TrafficRecorder | None = None
    sampler: Sampler | None = None

    def observe(self, spec: RequestSpec, completion: Completion) -> None:
        if self.traffic is not None:
            self.traffic.observe(spec, completion)
        if self.sampler is not None:
            self.sampler.offer(spec, completion)

    async def start(self) -> None:
        if self.traffic is not None:
            await self.traffic.start()
        if self.sampler is not None:
            await self.sampler.start()

    async def aclose(self) -> None:
        if self.sampler is not None:
            await self.sampler.aclose()
        if self.traffic is not None:
            await self.traffic.aclose()


def build_judge(config: Config, providers: Mapping[str, Provider], tokens: TokenCounter) -> Judge:
    settings = config.learning.judge
    if settings.kind == "replay":
        from router.replay import RecordedAnswers
        from router.routerbench import RouterBenchFormatError, csv_files, load_rows

        assert settings.replay_data is not None  # the config requires it
        try:
            return ReplayJudge(RecordedAnswers(load_rows(csv_files(settings.replay_data))))
        except (OSError, RouterBenchFormatError, ValueError) as exc:
            raise ConfigError(f"learning.judge.replay_data: {exc}") from None
    tier = config.tier(settings.tier) if settings.tier else config.tiers[-1]
    return LlmJudge(
        tier,
        providers[tier.name],
        tokens,
        prompt_version=settings.prompt_version,
        max_output_tokens=settings.max_output_tokens,
        timeout_s=config.learning.sampling.timeout_s,
    )


def build_learning(
    config: Config,
    providers: Mapping[str, Provider],
    feedback: FeedbackStore,
    ledger: SpendLedger | None,
    tokens: TokenCounter,
) -> LearningLoop:
    sampling = config.learning.sampling
    sampler = None
    if sampling.rate > 0 or any(sampling.rate_by_tier.values()) or any(sampling.rate_by_arm.values()):
        sampler = Sampler(config, providers, build_judge(config, providers, tokens), feedback, ledger, tokens)
    salt = load_user_salt(config.ledger.user_salt_env, config.store.path / "user_salt")
    return LearningLoop(build_traffic_recorder(config.learning.traffic, config.store.path, salt), sampler)
