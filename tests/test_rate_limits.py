"""Issue 20's rate limits through real gRPC servers: requests and tokens per minute, per API key and
per tenant, in process (embedded) and shared by two replicas on one real redis-server.

The limiter's clock is frozen (``TierwiseServer(rate_clock=...)``), so a burst arrives at one
instant and the counts are exact: GCRA admits a minute's limit at once and refuses the rest with the
delay until the next one fits. RPM has no in-flight allowance (a request is counted when admitted);
TPM charges the estimate (prompt + max_tokens) when admitted, so here too the burst admits exactly
what fits the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, config_dict
from tests.redis_server import RedisServer, redis_server_factory
from tests.test_ledger import until
from tests.upstream import ScriptedUpstream
from tierwise.router.auth import sha256_hex
from tierwise.router.call_progress import PromptTokens
from tierwise.router.config import ConfigError
from tierwise.router.output_bound import worst_case
from tierwise.router.rate_limits.limiter import Admitted, Charge, MemoryRateLimiter, RateLimiter, Refusal
from tierwise.router.rate_limits.redis_limiter import RedisRateLimiter
from tierwise.router.server import TierwiseServer
from tierwise.router.service import build_service
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

__all__ = ["redis_server_factory"]

pytestmark = pytest.mark.timeout(120)

BURST = 64
PROMPT = "Summarise the quarterly report."
MAX_TOKENS = 100


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def estimate() -> int:
    """The TPM charge of one request (prompt + output bound), counted as the server counts it."""
    spec = RequestSpec(
        tenant="acme", messages=(ChatMessage("user", PROMPT),), tier="small", max_tokens=MAX_TOKENS
    )
    data = config_dict(Path("/nonexistent"), "http://127.0.0.1:1", "http://127.0.0.1:2")
    small = build_config(data).tier("small")
    return worst_case([small], spec, PromptTokens(TokenCounter(), spec))[1]


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        # Usage equal to the estimate: no correction, so the counts do not depend on when answers land.
        scripted.script(text="ok", input_tokens=estimate() - MAX_TOKENS, output_tokens=MAX_TOKENS)
        yield scripted


def limits_config(
    store: Path, upstream: ScriptedUpstream, redis: RedisServer | None, **sections: Any
) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    data["auth"] = {
        "api_keys": [
            {"key_sha256": sha256_hex(AUTH[0][1].split()[1]), "tenant": "acme", "name": "acme-app"},
            {"key_sha256": sha256_hex(OTHER_AUTH[0][1].split()[1]), "tenant": "globex"},
        ]
    }
    if redis is not None:
        data["store"] = {"kind": "redis", "url": redis.url, "path": str(store)}
    # Redis gets 5 s a check unless a test says otherwise (the outage tests do): on a loaded machine a
    # burst kept one check past the default 0.25 s, and the gate failed open, as configured, mid-count.
    data["rate_limits"] = {"redis_timeout_s": 5.0, **sections.pop("rate_limits", {})}
    data.update(sections)
    return data


def key_limit(data: dict[str, Any], **limit: int) -> dict[str, Any]:
    data["auth"]["api_keys"][0].update(limit)
    return data


@contextlib.asynccontextmanager
async def replicas(
    configs: list[dict[str, Any]], clock: Callable[[], float] | None
) -> AsyncIterator[list[Running]]:
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for data in configs:
            config = build_config(data)
            server = TierwiseServer(await build_service(config), rate_clock=clock)
            port = await server.start()
            stack.push_async_callback(server.stop, 1)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stack.push_async_callback(channel.close, None)
            running.append(Running(server, channel, pb_grpc.RouterStub(channel), config))
        yield running


async def complete(svc: Running, auth: Any = AUTH) -> pb.CompleteResponse | grpc.aio.AioRpcError:
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content=PROMPT)], tier="small", max_tokens=MAX_TOKENS
    )
    try:
        response: pb.CompleteResponse = await svc.stub.Complete(request, metadata=auth, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc
    return response


async def burst(servers: list[Running]) -> tuple[int, list[grpc.aio.AioRpcError]]:
    results = await asyncio.gather(*(complete(servers[i % len(servers)]) for i in range(BURST)))
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    return len(results) - len(refused), refused


def retry_after_ms(error: grpc.aio.AioRpcError) -> int:
    """The delay in the trailing metadata, checked against the google.rpc RetryInfo beside it."""
    trailing = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    millis = int(trailing["retry-after-ms"])
    assert info.retry_delay.ToMilliseconds() == millis
    return millis


def refused_count(servers: list[Running], scope: str, name: str, kind: str) -> float:
    labels = {"tenant": "acme", "scope": scope, "name": name, "kind": kind}
    registries = [s.server.service.accounting.metrics.registry for s in servers]
    return sum(r.get_sample_value("tierwise_rate_limited_total", labels) or 0.0 for r in registries)


@pytest.mark.asyncio
async def test_a_key_over_its_rpm_on_two_replicas_gets_resource_exhausted_with_the_delay(
    tmp_path: Path, upstream: ScriptedUpstream, redis_server_factory: Callable[[], RedisServer]
) -> None:
    redis, clock = redis_server_factory(), FrozenClock()
    configs = [key_limit(limits_config(tmp_path / n, upstream, redis), rpm=60) for n in "ab"]
    async with replicas(configs, clock) as servers:
        admitted, refused = await burst(servers)
        assert (admitted, len(refused)) == (60, BURST - 60)
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "API key 'acme-app' is over its limit of 60 requests per minute" in (error.details() or "")
            assert retry_after_ms(error) == 1000  # one emission interval: 60 s / 60
        assert refused_count(servers, "key", "acme-app", "rpm") == BURST - 60
        # Another tenant's key has no limit and is not slowed by acme's.
        assert isinstance(await complete(servers[0], OTHER_AUTH), pb.CompleteResponse)
        clock.now += 1.0  # the delay it named: exactly one more fits
        assert isinstance(await complete(servers[1]), pb.CompleteResponse)
        assert isinstance(await complete(servers[0]), grpc.aio.AioRpcError)


@pytest.mark.asyncio
async def test_a_tenant_over_its_tpm_on_two_replicas_is_refused_once_the_estimates_fill_it(
    tmp_path: Path, upstream: ScriptedUpstream, redis_server_factory: Callable[[], RedisServer]
) -> None:
    redis, clock, tokens = redis_server_factory(), FrozenClock(), estimate()
    tenant_limits = {"tenants": {"acme": {"tpm": 10 * tokens}}}
    configs = [limits_config(tmp_path / n, upstream, redis, rate_limits=tenant_limits) for n in "ab"]
    async with replicas(configs, clock) as servers:
        admitted, refused = await burst(servers)
        assert (admitted, len(refused)) == (10, BURST - 10)
        for error in refused:
            assert "tenant 'acme' is over its limit of" in (error.details() or "")
            assert "tokens per minute" in (error.details() or "")
            assert retry_after_ms(error) == 6000  # one request's tokens refill in 60 s / 10
        assert refused_count(servers, "tenant", "acme", "tpm") == BURST - 10


@pytest.mark.asyncio
async def test_the_token_estimate_is_corrected_with_the_usage_after_the_call(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    """Embedded: answers that use 2 tokens of an estimate of ~110 give the rest back, so many more
    calls pass than the limit's estimates would admit; a refused call is booked in the ledger."""
    upstream.script(text="ok", input_tokens=1, output_tokens=1)
    clock, tokens = FrozenClock(), estimate()
    data = key_limit(limits_config(tmp_path, upstream, None), tpm=2 * tokens)
    async with replicas([data], clock) as servers:
        results = [await complete(servers[0]) for _ in range(6)]
        assert all(isinstance(r, pb.CompleteResponse) for r in results), results
        upstream.script(text="ok", input_tokens=tokens - MAX_TOKENS, output_tokens=MAX_TOKENS)
        assert isinstance(await complete(servers[0]), pb.CompleteResponse)
        error = await complete(servers[0])  # 6 x 2 tokens + one full estimate: no room for another
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ledger = servers[0].server.service.accounting.ledger
        assert ledger is not None and await ledger.flush(10)
    with contextlib.closing(sqlite3.connect(tmp_path / "spend.sqlite3")) as conn:
        rows = conn.execute("SELECT status, error_type FROM tierwise_spend WHERE status != 'OK'").fetchall()
    assert rows == [("RESOURCE_EXHAUSTED", "RateLimited")]


@pytest.mark.asyncio
async def test_route_counts_against_the_rpm_but_a_request_larger_than_the_tpm_is_refused_for_good(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    data = key_limit(limits_config(tmp_path, upstream, None), rpm=2, tpm=MAX_TOKENS)
    async with replicas([data], FrozenClock()) as servers:
        stub = servers[0].stub
        route = pb.RouteRequest(messages=[pb.ChatMessage(role="user", content=PROMPT)])
        await stub.Route(route, metadata=AUTH)  # no tier is called: RPM only
        error = await complete(servers[0])
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceed the" in (error.details() or "") and "lower max_tokens" in (error.details() or "")
        assert "retry-after-ms" not in dict(error.trailing_metadata() or ())  # waiting would not help
        await stub.Route(route, metadata=AUTH)  # a refused request takes nothing, its RPM share neither
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # 2 RPM: the two Routes
            await stub.Route(route, metadata=AUTH)
        assert "requests per minute" in (caught.value.details() or "")


@pytest.mark.asyncio
async def test_a_stream_over_the_rpm_is_refused_before_any_chunk(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    data = key_limit(limits_config(tmp_path, upstream, None), rpm=1)
    async with replicas([data], FrozenClock()) as servers:
        request = pb.CompleteRequest(
            messages=[pb.ChatMessage(role="user", content=PROMPT)], max_tokens=MAX_TOKENS
        )
        chunks = [c async for c in servers[0].stub.CompleteStream(request, metadata=AUTH)]
        assert chunks[-1].HasField("end")
        call = servers[0].stub.CompleteStream(request, metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [c async for c in call]
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_ms(caught.value) == 60_000
        assert refused_count(servers, "key", "acme-app", "rpm") == 1


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
@pytest.mark.asyncio
async def test_an_unanswering_redis_fails_open_by_default_or_closed_when_configured(
    tmp_path: Path,
    upstream: ScriptedUpstream,
    redis_server_factory: Callable[[], RedisServer],
    fail_mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = redis_server_factory()
    settings = {"redis_timeout_s": 0.2, "reconnect_min_s": 0.05, "reconnect_max_s": 0.1}
    sections = {"rate_limits": {**settings, **({"fail_mode": "closed"} if fail_mode == "closed" else {})}}
    data = key_limit(limits_config(tmp_path, upstream, redis, **sections), rpm=1)
    async with replicas([data], None) as servers:  # Redis's own clock
        assert isinstance(await complete(servers[0]), pb.CompleteResponse)
        assert isinstance(await complete(servers[0]), grpc.aio.AioRpcError)  # the limit holds
        # A hung host: the first check waits one redis_timeout_s, then the fail mode decides; later
        # ones skip Redis until reconnect_min_s has passed.
        redis.pause()
        try:
            results = [await complete(servers[0]) for _ in range(3)]
        finally:
            redis.resume()
        registry = servers[0].server.service.accounting.metrics.registry
        if fail_mode == "open":
            assert all(isinstance(r, pb.CompleteResponse) for r in results), results
        else:
            for result in results:
                assert isinstance(result, grpc.aio.AioRpcError)
                assert result.code() == grpc.StatusCode.UNAVAILABLE
                assert "fail_mode is closed" in (result.details() or "")
        decision = "admitted" if fail_mode == "open" else "refused"
        failures = registry.get_sample_value(
            "tierwise_rate_limit_store_failures_total", {"decision": decision}
        )
        assert failures == 3
        outage_logs = [r for r in caplog.records if "rate-limit store unreachable" in r.getMessage()]
        assert len(outage_logs) == 1, outage_logs  # once per outage, not per request
        for _ in range(100):  # enforced again once the gate lets a check through to Redis
            result = await complete(servers[0])
            if (
                isinstance(result, grpc.aio.AioRpcError)
                and result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the limit was not enforced again after Redis came back")


@pytest.mark.asyncio
async def test_a_correction_redis_cannot_take_is_counted_as_lost(
    tmp_path: Path, upstream: ScriptedUpstream, redis_server_factory: Callable[[], RedisServer]
) -> None:
    redis, release = redis_server_factory(), asyncio.Event()
    upstream.script(text="ok", input_tokens=1, output_tokens=1, release=release)
    sections = {"rate_limits": {"redis_timeout_s": 0.2}}
    data = key_limit(limits_config(tmp_path, upstream, redis, **sections), tpm=10 * estimate())
    async with replicas([data], None) as servers:
        call = asyncio.ensure_future(complete(servers[0]))  # admitted while Redis answers
        await until(lambda: len(upstream.requests_for("small-model")) == 1)
        redis.pause()
        try:
            release.set()
            assert isinstance(await call, pb.CompleteResponse)  # the answer does not wait on the correction
            registry = servers[0].server.service.accounting.metrics.registry
            labels = {"decision": "correction_lost"}
            await until(
                lambda: registry.get_sample_value("tierwise_rate_limit_store_failures_total", labels) == 1
            )
        finally:
            redis.resume()


def test_rate_limit_config_names_the_bad_field(tmp_path: Path) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    data["auth"]["api_keys"][0]["rpm"] = 0
    with pytest.raises(ConfigError, match=r"auth\.api_keys\.0\.rpm: Input should be greater than 0"):
        build_config(data)
    data = config_dict(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    data["rate_limits"] = {"tenants": {"acme": {"rps": 5}}}
    with pytest.raises(ConfigError, match=r"rate_limits\.tenants\.acme\.rps"):
        build_config(data)
    data = config_dict(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    for key in data["auth"]["api_keys"]:
        key["name"] = "same"
    with pytest.raises(ConfigError, match=r"auth\.api_keys: names .*'same'"):
        build_config(data)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.asyncio
async def test_a_late_correction_gives_back_only_what_is_left_of_its_own_charge(
    redis_server_factory: Callable[[], RedisServer], shared: bool
) -> None:
    """A call whose charge half drained before its correction landed gives back that half only:
    the rest of the bucket is other requests' charges, never credited to it."""
    clock = FrozenClock()
    limiter: RateLimiter = (
        RedisRateLimiter.from_url(redis_server_factory().url, 2.0, clock)
        if shared
        else MemoryRateLimiter(clock)
    )
    try:
        first = Charge("tenant", "acme", "acme", "tpm", 600, 600)  # a full minute's 600 tokens
        admitted = await limiter.acquire([first])
        assert isinstance(admitted, Admitted)
        clock.now += 30.0  # half of it drained
        assert isinstance(await limiter.acquire([replace(first, cost=300)]), Admitted)  # fills the bucket
        await limiter.adjust(first, -600, admitted.tats[0])  # the first used nothing: 300 undrained
        refusal = await limiter.acquire([first])
        assert isinstance(refusal, Refusal)
        assert refusal.retry_after_s == pytest.approx(30.0)  # 300 given back, not 600
        assert isinstance(await limiter.acquire([replace(first, cost=300)]), Admitted)
        clock.now += 10.0  # room for 100 tokens again ...
        await limiter.adjust(first, 100, admitted.tats[0])  # ... which a call that used more takes
        assert isinstance(await limiter.acquire([replace(first, cost=1)]), Refusal)
    finally:
        await limiter.aclose()
