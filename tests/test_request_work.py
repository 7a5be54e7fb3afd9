"""A request's CPU-bound steps run on the bounded request workers: a prompt over
server.max_prompt_tokens is refused naming the field (without counting when its length says so),
the event loop goes on while a worker counts or classifies, a job cancelled before a worker took it
never runs, and past the queue a request is refused with RESOURCE_EXHAUSTED and a retry hint."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.harness import AUTH, build_config, config_dict, rpc_error, running_server
from tests.upstream import ScriptedUpstream
from tierwise.cache.semantic_query import CacheQuery
from tierwise.classifier.features import prompt_statistics
from tierwise.router.config import Config, ConfigError
from tierwise.router.cpu_workers import CpuWorkers
from tierwise.router.errors import PromptTooLong, WorkersBusy
from tierwise.router.policies.base import RoutingContext, TierChoice, TierOption
from tierwise.router.policies.classifier import context_features, conversation_turns
from tierwise.router.request_work import INLINE_CHARS, ISOLATE_CHARS, MAX_CHARS_PER_TOKEN, RequestWork
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.v1 import tierwise_pb2 as pb

WAIT_S = 30.0  # only reached when the test fails: nothing here waits on time otherwise


def spec_of(text: str) -> RequestSpec:
    return RequestSpec(tenant="acme", messages=(ChatMessage("user", text),))


def config(tmp_path: Path, **server: object) -> Config:
    data = config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1")
    data["server"].update(server)
    return build_config(data)


class GatedCounter(TokenCounter):
    """Counts once ``proceed`` is set; records every count it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.proceed = threading.Event()
        self.counted = 0

    def count_messages(
        self, messages: Sequence[ChatMessage], model: str, *, encoding: str | None = None
    ) -> int:
        self.counted += 1
        assert self.proceed.wait(WAIT_S), "the counter was never let through"
        return super().count_messages(messages, model, encoding=encoding)


def test_the_config_bounds_are_validated(tmp_path: Path) -> None:
    for field, bad in (("max_prompt_tokens", 0), ("work_threads", 0), ("work_queue", 0)):
        with pytest.raises(ConfigError, match=field):
            config(tmp_path, **{field: bad})


def test_the_cheap_bound_holds_for_every_token_of_both_encodings() -> None:
    counter = TokenCounter()
    for name in ("cl100k_base", "o200k_base"):
        encoding = counter.encoding(name)
        longest = max(len(encoding.decode_single_token_bytes(t)) for t in encoding._mergeable_ranks.values())
        assert longest <= MAX_CHARS_PER_TOKEN


@pytest.mark.asyncio
async def test_a_prompt_longer_than_any_count_could_fit_is_refused_without_counting(tmp_path: Path) -> None:
    counter = GatedCounter()
    work = RequestWork(config(tmp_path, max_prompt_tokens=10), counter, CpuWorkers(1, 4))
    with pytest.raises(PromptTooLong, match=r"^messages: .*server\.max_prompt_tokens") as refused:
        await work.prompt(spec_of("x" * (10 * MAX_CHARS_PER_TOKEN + 1)))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert counter.counted == 0


@pytest.mark.asyncio
async def test_the_loop_runs_other_coroutines_while_a_worker_counts_a_long_prompt(tmp_path: Path) -> None:
    counter = GatedCounter()
    workers = CpuWorkers(1, 4)
    work = RequestWork(config(tmp_path), counter, workers)
    huge = spec_of("word " * 8_000)  # counted in a thread: longer than INLINE_CHARS, up to ISOLATE_CHARS
    counting = asyncio.ensure_future(work.prompt(huge))

    async def tiny() -> None:
        counter.proceed.set()  # counting on the loop would wait for this forever: the test would fail

    await tiny()
    prompt = await asyncio.wait_for(counting, WAIT_S)
    assert prompt.of(config(tmp_path).tiers[0]) > 8_000
    await workers.aclose()


@pytest.mark.asyncio
async def test_a_huge_prompt_is_counted_in_the_worker_process_as_on_the_loop(tmp_path: Path) -> None:
    workers = CpuWorkers(1, 4)
    huge = spec_of("Which office reported the largest growth? " * 2_000)
    assert len(huge.messages[0].content) > ISOLATE_CHARS
    in_process = await RequestWork(config(tmp_path), TokenCounter(), workers).prompt(huge)
    on_the_loop = await RequestWork(config(tmp_path), TokenCounter()).prompt(huge)
    for tier in config(tmp_path).tiers:
        assert in_process.of(tier) == on_the_loop.of(tier) > 12_000
    with pytest.raises(PromptTooLong, match=r"^messages: the prompt is \d+ tokens, over the limit of 1000"):
        await RequestWork(config(tmp_path, max_prompt_tokens=1_000), TokenCounter(), workers).prompt(huge)
    await workers.aclose()


@pytest.mark.asyncio
async def test_a_counted_prompt_over_the_limit_names_the_field(tmp_path: Path) -> None:
    work = RequestWork(config(tmp_path, max_prompt_tokens=100), TokenCounter(), CpuWorkers(1, 4))
    with pytest.raises(PromptTooLong, match=r"^messages: the prompt is \d+ tokens, over the limit of 100"):
        await work.prompt(spec_of("word " * (INLINE_CHARS // 2)))  # counted by a worker
    with pytest.raises(PromptTooLong, match=r"server\.max_prompt_tokens"):
        await work.prompt(spec_of("word " * 150))  # counted on the loop


class RecordingCache:
    """Makes the real cache query of a request (``ResponseCache.use``'s keys) and records the thread."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def use(self, spec: RequestSpec, embedding: np.ndarray, arm: str) -> CacheQuery:
        self.threads.append(threading.current_thread().name)
        messages = [(m.role, m.content) for m in spec.messages]
        return CacheQuery.create(tenant=spec.tenant, namespace=arm, messages=messages, embedding=embedding)


@pytest.mark.asyncio
async def test_a_long_prompts_cache_keys_are_made_in_a_worker_as_on_the_loop(tmp_path: Path) -> None:
    workers = CpuWorkers(1, 4)
    cache, vector = RecordingCache(), np.ones(4, dtype=np.float32)
    long, short = spec_of("The quarterly report lists revenue. " * 100), spec_of("hi")
    assert len(long.messages[0].content) > INLINE_CHARS
    work = RequestWork(config(tmp_path), TokenCounter(), workers)
    in_worker = await work.cache_use(cache, long, vector, "arm")  # type: ignore[arg-type]
    await work.cache_use(cache, short, vector, "arm")  # type: ignore[arg-type]
    on_the_loop = await RequestWork(config(tmp_path), TokenCounter()).cache_use(cache, long, vector, "arm")  # type: ignore[arg-type]
    main = threading.current_thread().name
    assert cache.threads[0].startswith("tierwise-cpu") and cache.threads[1:] == [main, main]
    assert in_worker == on_the_loop and in_worker is not None
    await workers.aclose()


class GatedPolicy:
    """A learned policy (it reads the embedding) that decides once ``proceed`` is set."""

    name = "gated"
    needs_embedding = True

    def __init__(self) -> None:
        self.proceed = threading.Event()
        self.thread = ""

    def choose(self, context: RoutingContext) -> TierChoice:
        self.thread = threading.current_thread().name
        assert self.proceed.wait(WAIT_S), "the policy was never let through"
        return TierChoice(context.candidates[0].name, "gated")


@pytest.mark.asyncio
async def test_a_learned_policy_decides_in_a_worker_while_the_loop_goes_on(tmp_path: Path) -> None:
    policy = GatedPolicy()
    workers = CpuWorkers(1, 4)
    work = RequestWork(config(tmp_path), TokenCounter(), workers)
    context = RoutingContext(spec_of("hi"), 3, [TierOption("small", "small-model", Decimal(0), 512)], 0.8)
    choosing = asyncio.ensure_future(work.choose(policy, context))
    await asyncio.sleep(0)
    policy.proceed.set()  # from the loop, while the policy waits in its worker
    assert (await asyncio.wait_for(choosing, WAIT_S)).tier == "small"
    assert policy.thread.startswith("tierwise-cpu")
    await workers.aclose()


@pytest.mark.asyncio
async def test_a_job_cancelled_before_a_worker_took_it_never_runs() -> None:
    workers = CpuWorkers(1, 4)
    gate = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(workers.run(gate.wait, WAIT_S))
    doomed = asyncio.ensure_future(workers.run(ran.append, "cancelled text"))
    kept = asyncio.ensure_future(workers.run(ran.append, "kept text"))
    await asyncio.sleep(0)
    doomed.cancel()
    # The cancel reaches the queued job through the loop: let it land before the worker frees up.
    await asyncio.wait([doomed], timeout=WAIT_S)
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, kept), WAIT_S)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert ran == ["kept text"]
    assert workers.skipped == 1 and workers.in_flight == 0
    await workers.aclose()


@pytest.mark.asyncio
async def test_past_the_queue_a_job_is_refused_with_a_retry_hint() -> None:
    workers = CpuWorkers(1, 1)
    gate = threading.Event()
    running = asyncio.ensure_future(workers.run(gate.wait, WAIT_S))
    waiting = asyncio.ensure_future(workers.run(gate.wait, WAIT_S))
    await asyncio.sleep(0)
    with pytest.raises(WorkersBusy, match=r"server\.work_queue") as refused:
        await workers.run(gate.wait, WAIT_S)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.retry_after_ms is not None and refused.value.retry_after_ms > 0
    gate.set()
    await asyncio.wait_for(asyncio.gather(running, waiting), WAIT_S)
    assert await workers.run(len, "room again") == 10
    await workers.aclose()


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    trailing = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == int(trailing["retry-after-ms"]) > 0
    return info


@pytest.mark.asyncio
async def test_the_server_sheds_past_its_workers_and_refuses_long_prompts(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["server"].update(max_prompt_tokens=1_000, work_threads=1, work_queue=1)
        async with running_server(build_config(data)) as svc:
            too_long = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="word " * 1_500)])
            error = await rpc_error(svc.stub.Complete(too_long, metadata=AUTH))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (error.details() or "").startswith("messages: ")
            assert "server.max_prompt_tokens" in (error.details() or "")
            assert not upstream.requests

            workers = svc.server.service.pipeline.work.workers
            assert workers is not None
            gate = threading.Event()
            held = [asyncio.ensure_future(workers.run(gate.wait, WAIT_S)) for _ in range(2)]
            await asyncio.sleep(0)
            long_enough = pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="word " * 500)])
            error = await rpc_error(svc.stub.Route(long_enough, metadata=AUTH))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "server.work_queue" in (error.details() or "")
            retry_info(error)
            gate.set()
            await asyncio.wait_for(asyncio.gather(*held), WAIT_S)
            decision = await svc.stub.Route(long_enough, metadata=AUTH)
            assert decision.tier


@pytest.mark.asyncio
async def test_a_long_prompts_statistics_are_made_in_the_worker_process_as_in_a_thread() -> None:
    workers = CpuWorkers(1, 4)
    text = "Example: what is 2 + 2?\nAnswer: 4\n\n" * 2_000 + "Which is larger, 7 or 9?"
    assert len(text) > ISOLATE_CHARS
    assert await workers.run_isolated(prompt_statistics, text, 20_000, 1) == prompt_statistics(
        text, 20_000, 1
    )
    await workers.aclose()


def test_features_from_statistics_made_beforehand_equal_the_policys_own() -> None:
    embedding = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    spec = RequestSpec(
        tenant="acme",
        messages=(
            ChatMessage("user", "Name a prime."),
            ChatMessage("assistant", "7"),
            ChatMessage("user", "Why?"),
        ),
    )
    option = TierOption("small", "small-model", Decimal(0), 512)
    context = RoutingContext(spec, 30, [option], 0.8, embedding)
    made = replace(context, statistics=prompt_statistics(spec.prompt_text, 30, conversation_turns(context)))
    own, given = context_features(context), context_features(made)
    assert own is not None and given is not None
    assert np.array_equal(own, given)
