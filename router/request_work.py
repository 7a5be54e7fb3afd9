"""A request's CPU-bound steps, run by the bounded request workers (``cpu_workers``) so that the
event loop keeps serving other requests: its token counts (after a refusal that needs no count),
the clip of the text it embeds, its cache keys, and a learned policy's choice (features, the ONNX
model, the kNN vote). Short texts are counted, clipped and hashed on the loop: that takes less than
the hop to a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import Vector
from tierwise.classifier.features import prompt_statistics
from tierwise.router.caching import CacheUse, ResponseCache
from tierwise.router.call_progress import PromptTokens
from tierwise.router.config import Config, TierConfig
from tierwise.router.cpu_workers import CpuWorkers
from tierwise.router.errors import PromptTooLong
from tierwise.router.policies.base import RoutingContext, RoutingPolicy, TierChoice
from tierwise.router.policies.classifier import conversation_turns
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import RequestSpec

log = logging.getLogger("tierwise.work")

MAX_CHARS_PER_TOKEN = 128
"""The longest token of cl100k_base and o200k_base is 128 bytes and a character is at least one, so
a prompt of more than 128 x N characters cannot fit in N tokens: it is refused without counting."""

INLINE_CHARS = 2_000
"""Texts up to this length are counted and clipped on the event loop (tens of microseconds)."""

ISOLATE_CHARS = 50_000
"""Prompts longer than this are counted and get their text statistics in the worker process, at a
lower CPU priority: the statistics would hold the GIL in a thread in stretches of milliseconds (86 ms
at a time for 1M characters), and tiktoken, which releases it, would still take a core from the
loop and the embedder for a few hundred milliseconds."""


def prompt_chars(spec: RequestSpec) -> int:
    """The characters of everything ``PromptTokens`` counts (images aside: they count as tokens)."""
    turns = sum(
        len(m.role)
        + len(m.content)
        + len(m.tool_call_id)
        + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
        for m in spec.messages
    )
    return turns + len(spec.tools_json) + len(spec.tool_choice) + len(spec.response_format_json)


def counted(prompt: PromptTokens, tiers: Sequence[TierConfig], limit: int) -> PromptTokens:
    """``prompt`` counted under every tier's encoding; :class:`PromptTooLong` past ``limit``. Runs in
    the worker process too (``prompt`` and the answer cross by pickle)."""
    needed = max(prompt.of(tier) for tier in tiers)
    if needed > limit:
        raise PromptTooLong(
            f"messages: the prompt is {needed} tokens, over the limit of {limit} (server.max_prompt_tokens)"
        )
    return prompt


class RequestWork:
    """``workers`` None: every step on the caller's thread (tools and tests without a server)."""

    def __init__(self, config: Config, tokens: TokenCounter, workers: CpuWorkers | None = None) -> None:
        self._config = config
        self._tokens = tokens
        self._workers = workers

    @property
    def workers(self) -> CpuWorkers | None:
        return self._workers

    async def prompt(self, spec: RequestSpec) -> PromptTokens:
        """The prompt with its token count under every tier's encoding made; :class:`PromptTooLong`
        over ``server.max_prompt_tokens`` (at once when its length alone says so)."""
        limit = self._config.server.max_prompt_tokens
        chars = prompt_chars(spec)
        if chars > limit * MAX_CHARS_PER_TOKEN:
            raise PromptTooLong(
                f"messages: the prompt's {chars} characters are more than the {limit} tokens of"
                " server.max_prompt_tokens can hold"
            )
        prompt = PromptTokens(self._tokens, spec)
        tiers = self._config.tiers
        if self._workers is None or chars <= INLINE_CHARS:
            return counted(prompt, tiers, limit)
        if chars > ISOLATE_CHARS:
            try:
                return await self._workers.run_isolated(counted, prompt, tiers, limit)
            except BrokenProcessPool:
                log.warning("the worker process died; the prompt's tokens are counted in a thread")
        return await self._workers.run(counted, prompt, tiers, limit)

    async def embedding_text(self, text: str) -> str:
        """The text the request embeds (``embedding_text``: a long one clipped to head and tail)."""
        if self._workers is None or len(text) <= INLINE_CHARS:
            return embedding_text(text)
        return await self._workers.run(embedding_text, text)

    async def cache_use(
        self, cache: ResponseCache, spec: RequestSpec, embedding: Vector, arm: str
    ) -> CacheUse | None:
        """The request's cache query (``ResponseCache.use``): its keys hash every turn, about 2 ms for
        a million characters, in a worker for a long prompt."""
        if self._workers is None or prompt_chars(spec) <= INLINE_CHARS:
            return cache.use(spec, embedding, arm)
        return await self._workers.run(cache.use, spec, embedding, arm)

    async def choose(self, policy: RoutingPolicy, context: RoutingContext) -> TierChoice:
        """A policy that reads the embedding runs a model: in a worker. The baselines decide on the loop.
        A long prompt's text statistics (pure Python, GIL-bound) are made in the worker process first."""
        if self._workers is None or not policy.needs_embedding:
            return policy.choose(context)
        text = context.request.prompt_text
        if len(text) > ISOLATE_CHARS and context.embedding is not None:
            turns = conversation_turns(context)
            try:
                statistics = await self._workers.run_isolated(
                    prompt_statistics, text, context.input_tokens, turns
                )
                context = replace(context, statistics=statistics)
            except BrokenProcessPool:
                log.warning("the worker process died; the prompt's statistics are made in a thread")
        return await self._workers.run(policy.choose, context)
