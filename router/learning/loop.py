"""The learning loop's side of a running server: after a response is returned, keep a traffic
sample of the request (``tierwise.router.learning.traffic``) and, for a sampled share, judge the answer
(``tierwise.router.learning.sampling``).

``observe`` is the one call the request path makes (from accounting, once the
answer is final); it only queues. Everything else runs in background tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from tierwise.router.config import Config, ConfigError
from tierwise.router.feedback.store import FeedbackStore
from tierwise.router.learning.judge import Judge, JudgeFactory, LlmJudge
from tierwise.router.learning.sampling import Sampler
from tierwise.router.learning.traffic import TrafficRecorder, build_traffic_recorder
from tierwise.router.ledger.builder import load_user_salt
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.outcome import Completion
from tierwise.router.providers.base import Provider
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import RequestSpec

# The entry-point group where packages register judges other than the built-in LLM judge.
JUDGE_PLUGINS = "tierwise.judges"


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
    if settings.kind != "llm":
        factory = _judge_plugin(settings.kind)
        try:
            return factory(settings)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"learning.judge ({settings.kind}): {exc}") from None
    tier = config.tier(settings.tier) if settings.tier else config.tiers[-1]
    return LlmJudge(
        tier,
        providers[tier.name],
        tokens,
        prompt_version=settings.prompt_version,
        max_output_tokens=settings.max_output_tokens,
        timeout_s=config.learning.sampling.timeout_s,
    )


def _judge_plugin(kind: str) -> JudgeFactory:
    found = entry_points(group=JUDGE_PLUGINS, name=kind)
    if not found:
        known = sorted({"llm", *(e.name for e in entry_points(group=JUDGE_PLUGINS))})
        raise ConfigError(f"learning.judge.kind: no judge {kind!r} is installed (known: {', '.join(known)})")
    factory: JudgeFactory = next(iter(found)).load()
    return factory


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
