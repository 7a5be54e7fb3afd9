"""Everything a running tierwise needs, built from the config, and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field

from tierwise.cache.batching import BatchingEmbedder, EmbedderBusy
from tierwise.cache.embedder import SentenceEmbedder, TextEmbedder, Vector
from tierwise.cache.extras import MissingExtra
from tierwise.cache.onnx_embedder import OnnxEmbedderError, shared_onnx_embedder
from tierwise.cache.redis_store import RedisEntryStore
from tierwise.cache.semantic_cache import SemanticCache
from tierwise.cache.sqlite_store import SqliteEntryStore
from tierwise.cache.store import EntryStore
from tierwise.cache.verification import CandidateVerifier, CosineOnlyVerifier
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.cache.verifier_model import VerifierModelError
from tierwise.classifier.registry import ServingModel
from tierwise.router.accounting import Accounting
from tierwise.router.budgets.manager import BudgetManager, build_budget_manager
from tierwise.router.caching import ResponseCache
from tierwise.router.config import CacheConfig, Config, ConfigError
from tierwise.router.cpu_workers import CpuWorkers
from tierwise.router.errors import EmbedderOverloaded
from tierwise.router.experiments.arms import build_experiment_router, needs_serving_model
from tierwise.router.experiments.store import check_and_record
from tierwise.router.feedback.factory import open_feedback_store
from tierwise.router.feedback.redis_store import RedisFeedbackStore
from tierwise.router.feedback.store import FeedbackStore
from tierwise.router.learning.loop import build_learning
from tierwise.router.ledger.budget_usage import LedgerBudgetUsage
from tierwise.router.ledger.builder import SpendRecordBuilder
from tierwise.router.ledger.spend_ledger import SpendLedger, build_ledger
from tierwise.router.observability.attempt_spans import traced_providers
from tierwise.router.observability.metrics import Metrics
from tierwise.router.observability.tracing import Tracing
from tierwise.router.pipeline import Pipeline
from tierwise.router.policies.factory import build_policy, load_serving_model
from tierwise.router.providers.base import Provider
from tierwise.router.providers.factory import build_provider
from tierwise.router.request_work import RequestWork
from tierwise.router.resilience import TierHealth
from tierwise.router.tokens import TokenCounter

log = logging.getLogger("tierwise.service")


@functools.cache
def shared_embedder(device: str, torch_threads: int = 0) -> SentenceEmbedder:
    """The model is read-only once loaded: one instance per process and device serves every server."""
    embedder = SentenceEmbedder(device=device)  # first: without the train extra, MissingExtra says so
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)  # process-wide, as torch's setting is
    return embedder


def _text_embedder(settings: CacheConfig) -> TextEmbedder:
    if settings.embedder == "torch":
        try:
            return shared_embedder(settings.device, settings.torch_threads)
        except MissingExtra as exc:
            raise ConfigError(f"cache.embedder: {exc}, or serve embedder onnx (the default)") from None
    try:
        return shared_onnx_embedder(settings.onnx_embedder_dir, settings.device, settings.torch_threads)
    except OnnxEmbedderError as exc:
        raise ConfigError(f"cache.onnx_embedder_dir: {exc}") from None


class ServingEmbedder(BatchingEmbedder):
    """The request path's batcher: a full queue refuses the caller with RESOURCE_EXHAUSTED."""

    async def embed(self, text: str) -> Vector:
        try:
            return await super().embed(text)
        except EmbedderBusy as exc:
            raise EmbedderOverloaded(str(exc), exc.retry_after_s) from None


@dataclass
class Service:
    config: Config
    pipeline: Pipeline
    providers: dict[str, Provider]
    feedback: FeedbackStore
    budgets: BudgetManager
    health: TierHealth
    embedder: BatchingEmbedder | None
    cache: ResponseCache | None
    accounting: Accounting
    serving_model: ServingModel | None = None  # the classifier's model holder, hot-swapped on promotion
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack, repr=False)
    """What ``build_service`` opened, closed in reverse by ``aclose``."""

    async def aclose(self) -> None:
        """Close everything in the reverse order of opening: the learning loop before the ledger and
        feedback store it writes to, the cache before its embedder, tracing last. Idempotent."""
        await self.resources.aclose()


async def _open_cache(
    config: Config, settings: CacheConfig, embedder: BatchingEmbedder, stack: contextlib.AsyncExitStack
) -> ResponseCache:
    """Embedded: entries in SQLite under store.path. Redis: entries shared by every replica at store.url,
    this replica's index following their change stream (its index snapshot stays under store.path)."""
    store: EntryStore
    if config.store.kind == "redis" and config.store.url is not None:
        store = RedisEntryStore.for_cache(config.store.url, settings)
    else:
        store = await SqliteEntryStore.open(config.store.path / "cache.sqlite3")
    # The cache closes its store; this close (idempotent) is for a cache that never opened.
    stack.push_async_callback(store.aclose)
    tuning = settings.model_copy(
        update={"snapshot_path": settings.snapshot_path or config.store.path / "cache.faiss"}
    )
    cache = await SemanticCache.open(store, embedder.info, tuning, _verifier(settings, embedder.info.key))
    response_cache = ResponseCache(cache, settings)
    stack.push_async_callback(response_cache.aclose)
    return response_cache


def _verifier(settings: CacheConfig, embedder_key: str) -> CandidateVerifier:
    if settings.verifier == "cosine":
        return CosineOnlyVerifier(settings.similarity_threshold)
    try:
        if settings.verifier_model is None:
            return GuardedVerifier.load(expected_embedder_key=embedder_key)
        return GuardedVerifier.load(settings.verifier_model, expected_embedder_key=embedder_key)
    except VerifierModelError as exc:
        raise ConfigError(f"cache.verifier_model: {exc}") from None


async def _open_budgets(config: Config, ledger: SpendLedger | None, metrics: Metrics) -> BudgetManager:
    """The budget manager, rebuilding what a shared store (Redis) loses from the ledger."""
    usage = None if ledger is None else LedgerBudgetUsage(ledger)
    if config.store.kind == "redis" and config.budgets:
        if ledger is None:
            log.warning("ledger disabled: budget usage Redis loses cannot be rebuilt (it restarts at zero)")
        elif config.ledger.postgres_dsn is None:
            log.warning(
                "ledger in this replica's SQLite file: budget usage Redis loses is rebuilt from"
                " this replica's spend only (set ledger.postgres_dsn to share the ledger)"
            )
    budgets = await build_budget_manager(config, usage_source=usage)
    budgets.add_store_error_listener(lambda operation, _: metrics.observe_budget_store_error(operation))
    budgets.add_fail_mode_listener(metrics.observe_budget_fail_mode)
    budgets.add_duplicate_listener(lambda operation: metrics.budget_duplicates.labels(operation).inc())
    return budgets


async def build_service(config: Config) -> Service:
    """Open every store, client and background worker in order, each on one exit stack as it opens:
    when a step raises, what the earlier steps opened is closed, in reverse, before the error goes on."""
    async with contextlib.AsyncExitStack() as stack:
        service = await _open_service(config, stack)
        service.resources = stack.pop_all()  # opened in full: the service owns them now
        return service


async def _open_service(config: Config, stack: contextlib.AsyncExitStack) -> Service:
    tokens = TokenCounter()
    tokens.preload()  # seed and verify the offline encodings at start-up, not on the first request
    config.store.path.mkdir(parents=True, exist_ok=True)
    tracing = Tracing(config.tracing)  # first, so closed last: spans from the shutdown still export
    stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
    workers = CpuWorkers(config.server.work_threads, config.server.work_queue)  # the request workers
    stack.push_async_callback(workers.aclose)
    providers: dict[str, Provider] = {}
    for tier in config.tiers:
        providers[tier.name] = provider = build_provider(tier)
        stack.push_async_callback(provider.aclose)
    check_and_record(config.store.path, config.experiments)  # a running experiment's units stay put
    serving = None
    if needs_serving_model(config):
        serving = load_serving_model(config.routing, config.tier_names, config.cache.device)
    policy = build_policy(config.routing, config.tier_names, serving)
    experiments = build_experiment_router(config, serving)
    embedder = None
    if (
        config.cache.enabled
        or policy.needs_embedding
        or (experiments is not None and experiments.needs_embedding)
    ):
        settings = config.cache
        embedder = ServingEmbedder(
            _text_embedder(settings),
            settings.max_batch,
            settings.max_wait_us,
            settings.max_queue,
            settings.max_queue_delay_ms / 1000,
            long_text_chars=settings.long_text_chars,
        )
        stack.push_async_callback(embedder.aclose)
    cache = None
    if config.cache.enabled and embedder:
        cache = await _open_cache(config, config.cache, embedder, stack)
    health = TierHealth(config)
    metrics = Metrics.from_config(config.metrics)
    for tier in config.tiers:
        metrics.set_circuit_state(tier.name, "closed")
    health.add_listener(lambda change: metrics.set_circuit_state(change.tier, change.new.value))
    ledger = build_ledger(config)
    if ledger is not None:
        stack.push_async_callback(ledger.aclose)  # flushes what was recorded; the server starts it
        metrics.watch_ledger(ledger)
    budgets = await _open_budgets(config, ledger, metrics)
    stack.push_async_callback(budgets.aclose)
    feedback = open_feedback_store(config)
    stack.push_async_callback(feedback.aclose)
    if isinstance(feedback, RedisFeedbackStore):
        metrics.watch_feedback(feedback)
    learning = build_learning(config, providers, feedback, ledger, tokens)
    stack.push_async_callback(learning.aclose)  # before the ledger closes: judgments book spend there
    if learning.sampler is not None:
        metrics.watch_sampling(learning.sampler)
    accounting = Accounting(SpendRecordBuilder.from_config(config), ledger, metrics, tracing, learning)
    pipeline = Pipeline(
        config,
        traced_providers(config.tiers, providers, tracing),  # one span per upstream attempt
        policy,
        tokens,
        budgets=budgets,
        health=health,
        embedder=embedder,
        cache=cache,
        experiments=experiments,
        work=RequestWork(config, tokens, workers),
    )
    return Service(
        config, pipeline, providers, feedback, budgets, health, embedder, cache, accounting, serving
    )
