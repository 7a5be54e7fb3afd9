"""The pipeline's side of the response cache: which requests may use it, how a request
maps to a cache query, and storing answers off the request path.

The cache itself (``cache/``) knows nothing of tiers or money; this module
translates between the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from tierwise.cache.embedder import Vector
from tierwise.cache.partition import GenerationParams, sha256_hex
from tierwise.cache.semantic_cache import CacheHit, CacheQuery, SemanticCache
from tierwise.cache.store import CachedResponse
from tierwise.router.config import CacheConfig
from tierwise.router.outcome import CacheHitInfo, Completion
from tierwise.router.types import CacheMode, ChatMessage, RequestSpec, TokenUsage

log = logging.getLogger("tierwise.cache")

AUTO_TIER = "auto"  # the model class of routed requests: any adequate tier's answer serves them


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What this request may do with the cache."""

    query: CacheQuery
    lookup: bool
    store: bool


class ResponseCache:
    def __init__(self, cache: SemanticCache, config: CacheConfig) -> None:
        self._cache = cache
        self._config = config
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def cache(self) -> SemanticCache:
        return self._cache

    def use(self, spec: RequestSpec, embedding: Vector, arm: str = "") -> CacheUse | None:
        """None when the request bypasses the cache (mode, or a temperature too high to reuse answers).

        ``arm`` ("experiment/arm") keeps each experiment arm's answers apart, so one arm's
        cached answers never stand in for another's in the comparison.
        """
        if spec.cache_mode is CacheMode.BYPASS:
            return None
        if spec.temperature is not None and spec.temperature > self._config.max_temperature:
            return None
        params = GenerationParams(
            model_class=spec.tier or (f"{AUTO_TIER}@{arm}" if arm else AUTO_TIER),
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            stop=spec.stop,
            top_p=spec.top_p,
            seed=spec.seed,
            tool_choice=spec.tool_choice,
            parallel_tool_calls=spec.parallel_tool_calls,
            response_format_json=spec.response_format_json,
        )
        query = CacheQuery.create(
            tenant=spec.tenant,
            namespace=spec.feature,
            messages=[_keyed(m) for m in spec.messages],
            embedding=embedding,
            params=params,
            tools_json=spec.tools_json,
            max_age_s=spec.max_age_s,
            attachments=_images_digest(spec),
        )
        return CacheUse(query, lookup=spec.cache_mode is CacheMode.USE, store=True)

    async def lookup(self, use: CacheUse) -> CacheHitInfo | None:
        if not use.lookup:
            return None
        hit = await self._cache.lookup(use.query)
        return None if hit is None else _info(hit)

    def store(self, use: CacheUse, completion: Completion) -> None:
        """Insert in the background: the caller already has its answer. An answer that calls tools
        is not stored: it is a step of one conversation (its call ids are that conversation's), and
        a cached answer carries text only."""
        if not use.store or completion.decision.cache_hit is not None or completion.tool_calls:
            return
        response = CachedResponse(
            content=completion.content,
            finish_reason=completion.finish_reason,
            model=completion.decision.model,
            input_tokens=completion.usage.input_tokens,
            output_tokens=completion.usage.output_tokens,
        )
        task = asyncio.get_running_loop().create_task(self._insert(use.query, response))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _insert(self, query: CacheQuery, response: CachedResponse) -> None:
        try:
            await self._cache.insert(query, response)
        except Exception:
            log.exception("cache insert failed; the answer was served but not cached")

    def record_saving(self, entry_id: str, amount: float) -> None:
        task = asyncio.get_running_loop().create_task(self._cache.record_saving(entry_id, amount))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self._cache.aclose()


def _keyed(message: ChatMessage) -> tuple[str, str]:
    """A turn as the cache keys it: its tool calls and a tool result's call id are part of it. The
    role is marked too (no caller role has a "+"), so no plain turn's text can spell the same key."""
    if not message.tool_calls and not message.tool_call_id:
        return (message.role, message.content)
    calls = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    tools = json.dumps({"tool_call_id": message.tool_call_id, "tool_calls": calls}, sort_keys=True)
    return (f"{message.role}+tool_use", f"{message.content}\n{tools}")


def _images_digest(spec: RequestSpec) -> str:
    """SHA-256 of every image with its turn's position and detail ("" without images)."""
    if not spec.has_images:
        return ""
    images = [[i, image.url, image.detail] for i, m in enumerate(spec.messages) for image in m.images]
    return sha256_hex(json.dumps(images, separators=(",", ":")))


def _info(hit: CacheHit) -> CacheHitInfo:
    response = hit.response
    return CacheHitInfo(
        entry_id=hit.entry_id,
        kind=hit.kind.value,
        similarity=hit.similarity,
        content=response.content,
        finish_reason=response.finish_reason,
        model=response.model,
        usage=TokenUsage(response.input_tokens, response.output_tokens),
        age_s=hit.age_s,
    )
