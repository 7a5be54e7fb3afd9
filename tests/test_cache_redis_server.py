"""Two real tierwise gRPC servers sharing one real redis-server: an answer cached through one is served
by the other, and a Redis outage costs cache misses, never failed requests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.redis_server import RedisServer, redis_server_factory
from tests.test_cache_redis_store import until
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

__all__ = ["redis_server_factory"]

QUESTION = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"


def msgs(text: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", content=text)]


def shared_config(store: Path, upstream: ScriptedUpstream, redis: RedisServer) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    data["store"] = {"kind": "redis", "url": redis.url, "path": str(store)}
    data["cache"] = {
        "enabled": True,
        "redis_timeout_s": 1.0,
        "replication_block_s": 0.2,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
    }
    return data


@pytest.fixture
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        scripted.script(text="Settings, then Security, then Reset.", input_tokens=40, output_tokens=20)
        yield scripted


@pytest_asyncio.fixture
async def servers(
    upstream: ScriptedUpstream, redis: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[Running, Running]]:
    async with contextlib.AsyncExitStack() as stack:
        pair = [
            await stack.enter_async_context(
                running_server(build_config(shared_config(tmp_path / name, upstream, redis)))
            )
            for name in ("a", "b")
        ]
        yield pair[0], pair[1]


async def complete(svc: Running, text: str) -> Any:
    response = await svc.stub.Complete(pb.CompleteRequest(messages=msgs(text)), metadata=AUTH)
    assert svc.server.service.cache is not None
    await svc.server.service.cache.drain()  # the insert runs after the answer: wait for it
    return response


async def route_hit(svc: Running, text: str, kind: str) -> bool:
    """Route decides without calling a model or filling the cache, so polling with it changes nothing."""
    decision = await svc.stub.Route(pb.RouteRequest(messages=msgs(text)), metadata=AUTH)
    return bool(decision.cache_hit) and decision.cached.kind == kind


def cache_stats(svc: Running) -> Any:
    assert svc.server.service.cache is not None
    return svc.server.service.cache.cache.stats()


@pytest.mark.asyncio
async def test_an_answer_cached_through_one_server_is_served_by_the_other(
    servers: tuple[Running, Running], upstream: ScriptedUpstream
) -> None:
    a, b = servers
    first = await complete(a, QUESTION)
    assert not first.decision.cache_hit
    assert await route_hit(b, QUESTION, "exact")  # the exact tier reads Redis directly
    await until(lambda: route_hit(b, PARAPHRASE, "semantic"))  # B's index followed the stream
    served = await complete(b, PARAPHRASE)
    assert served.decision.cache_hit and served.decision.cached.kind == "semantic"
    assert served.content == "Settings, then Security, then Reset." and served.cost_usd == 0
    assert served.decision.saved_cost_usd > 0
    assert len(upstream.requests) == 1
    assert cache_stats(b).replication_lag_s is not None


@pytest.mark.asyncio
async def test_requests_succeed_while_redis_is_down_and_sharing_resumes(
    servers: tuple[Running, Running], upstream: ScriptedUpstream, redis: RedisServer
) -> None:
    a, b = servers
    await complete(a, QUESTION)
    await until(lambda: route_hit(b, PARAPHRASE, "semantic"))

    redis.kill()
    for svc in (a, b):
        for text in (QUESTION, PARAPHRASE, "Where is my order?"):
            answered = await complete(svc, text)
            assert answered.content == "Settings, then Security, then Reset."
            assert not answered.decision.cache_hit
        assert cache_stats(svc).store_errors >= 1
    assert len(upstream.requests) == 7

    redis.restart()  # empty: what was cached before is gone

    async def shared_again() -> bool:
        await complete(a, "Where is my order?")  # a miss until A's store reconnects and stores it
        return await route_hit(b, "Where is my order?", "exact")

    await until(shared_again)
    assert not await route_hit(b, QUESTION, "exact")
