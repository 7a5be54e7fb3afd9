"""Issue 20's keys as data through real gRPC servers and the real ``tierwise keys`` command.

Two replicas share Redis (rate limits, budgets) and PostgreSQL (keys, ledger), or Redis alone (keys
in Redis). A key the CLI creates works at once on both; revoked, it is refused on both within 5 s
(the default poll is 2 s) while a stream already open on it finishes; an expired key is refused;
the key store down fails closed (after ``keys.max_stale_s``) or open, per setting, and keys in the
config keep working; ``tierwise report --by key`` shows the key's name. Limits and budgets set on a
stored key hold across both replicas as the config's do.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tests.harness import AUTH, Running, build_config, config_dict
from tests.redis_server import RedisServer, redis_server_factory
from tests.test_budgets_servers import check_bound
from tests.test_ledger_postgres import Database, database
from tests.test_rate_limits import FrozenClock, estimate, replicas, retry_after_ms
from tests.upstream import ScriptedUpstream
from tierwise.router.server import serve_forever
from tierwise.router.service import build_service
from tierwise.training.cli.app import app
from tierwise.training.process import free_port
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

__all__ = ["database", "redis_server_factory"]

pytestmark = pytest.mark.timeout(180)

Metadata = tuple[tuple[str, str], ...]
PROMPT = "Summarise the quarterly report."


def shared_config(
    store: Path, upstream: ScriptedUpstream, redis: RedisServer, dsn: str | None, **sections: Any
) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url, **sections)
    data["store"] = {"kind": "redis", "url": redis.url, "path": str(store)}
    if dsn is not None:
        data["ledger"] = {"postgres_dsn": dsn, "flush_interval_s": 0.2}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


async def run_cli(*args: str) -> tuple[int, str, str]:
    """The command in a thread, as from another process: the servers keep serving meanwhile."""
    return await asyncio.to_thread(cli, *args)


async def create_key(config: Path, *options: str) -> str:
    code, out, err = await run_cli("keys", "create", "--config", str(config), *options)
    assert code == 0, err
    return out.strip().splitlines()[-1]


def bearer(secret: str) -> Metadata:
    return (("authorization", f"Bearer {secret}"),)


def request(max_tokens: int = 100) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content=PROMPT)], tier="small", max_tokens=max_tokens
    )


async def complete(
    svc: Running | pb_grpc.RouterStub, auth: Metadata
) -> pb.CompleteResponse | grpc.aio.AioRpcError:
    stub = svc.stub if isinstance(svc, Running) else svc
    try:
        response: pb.CompleteResponse = await stub.Complete(request(), metadata=auth, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc
    return response


async def refused(svc: Running | pb_grpc.RouterStub, auth: Metadata, code: grpc.StatusCode) -> str:
    answer = await complete(svc, auth)
    assert isinstance(answer, grpc.aio.AioRpcError), "the call was answered"
    assert answer.code() == code, answer.details()
    return answer.details() or ""


@pytest.mark.asyncio
async def test_a_cli_key_works_at_once_on_two_replicas_and_revoked_is_refused_on_both_within_5s(
    tmp_path: Path,
    upstream: ScriptedUpstream,
    redis_server_factory: Callable[[], RedisServer],
    database: Database,
) -> None:
    database.create()
    redis = redis_server_factory()
    upstream.script(text="one two three four five six seven eight", chunk_delay_s=0.4)
    configs = [shared_config(tmp_path / n, upstream, redis, database.dsn) for n in "ab"]
    config_file = write_config(tmp_path / "tierwise.yaml", configs[0])
    async with replicas(configs, None) as servers:
        secret = await create_key(config_file, "--tenant", "acme", "--name", "team-app", "--rpm", "1000")
        assert secret.startswith("twk_")
        for svc in servers:  # no restart, no wait for a poll
            answer = await complete(svc, bearer(secret))
            assert isinstance(answer, pb.CompleteResponse), answer
        stream = servers[0].stub.CompleteStream(request(), metadata=bearer(secret), timeout=30)
        chunks: list[pb.CompleteChunk] = []
        while not any(c.HasField("delta") for c in chunks):  # the answer is under way
            chunk = await stream.read()
            assert isinstance(chunk, pb.CompleteChunk)
            chunks.append(chunk)

        code, _, err = await run_cli("keys", "revoke", "--config", str(config_file), "team-app")
        assert code == 0 and "revoked" in err
        revoked_at = time.monotonic()
        seen: dict[int, float] = {}
        while len(seen) < 2 and time.monotonic() - revoked_at < 5:
            for i, svc in enumerate(servers):
                if i not in seen and isinstance(await complete(svc, bearer(secret)), grpc.aio.AioRpcError):
                    seen[i] = time.monotonic() - revoked_at
            await asyncio.sleep(0.1)
        assert sorted(seen) == [0, 1], f"refused within 5 s on replicas {sorted(seen)}"
        for svc in servers:
            details = await refused(svc, bearer(secret), grpc.StatusCode.UNAUTHENTICATED)
            assert details == "key revoked"  # says which, never whose
        # The stream opened before the revocation runs to its end.
        while isinstance(chunk := await stream.read(), pb.CompleteChunk):
            chunks.append(chunk)
        assert await stream.code() == grpc.StatusCode.OK
        assert "".join(c.delta for c in chunks) == "one two three four five six seven eight"
        assert chunks[-1].HasField("end")

        expiring = await create_key(config_file, "--tenant", "acme", "--name", "short", "--expires", "1s")
        assert isinstance(await complete(servers[1], bearer(expiring)), pb.CompleteResponse)
        await asyncio.sleep(1.1)
        for svc in servers:
            assert await refused(svc, bearer(expiring), grpc.StatusCode.UNAUTHENTICATED) == "key expired"
        # Keys in the config work beside stored ones.
        assert isinstance(await complete(servers[0], AUTH), pb.CompleteResponse)

        # The spend record names the key; the report groups by it (name, never the secret).
        async def keyed() -> dict[str, int]:
            code, out, err = await run_cli(
                "report", "--config", str(config_file), "--by", "key", "--format", "json"
            )
            assert code == 0, err
            assert secret not in out
            return {g["group"]["key"]: g["requests"] for g in json.loads(out)["groups"]}

        deadline = time.monotonic() + 10
        while (await keyed()).get("team-app", 0) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        by_key = await keyed()
        assert by_key["team-app"] >= 3 and by_key["short"] == 1, by_key
        listed = (await run_cli("keys", "list", "--config", str(config_file), "--json"))[1]
        states = {k["name"]: k["state"] for k in json.loads(listed)}
        assert states == {"team-app": "revoked", "short": "expired"} and secret not in listed


@pytest.mark.asyncio
@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_the_key_store_down_fails_per_setting_and_config_keys_keep_working(
    tmp_path: Path,
    upstream: ScriptedUpstream,
    redis_server_factory: Callable[[], RedisServer],
    fail_mode: str,
) -> None:
    redis = redis_server_factory()
    keys = {"poll_interval_s": 0.2, "max_stale_s": 1.0, "timeout_s": 0.3, "fail_mode": fail_mode}
    limits = {"tenants": {"acme": {"rpm": 1000}}, "redis_timeout_s": 0.2}  # checked in the same Redis
    data = shared_config(tmp_path / "a", upstream, redis, None, keys=keys, rate_limits=limits)
    data["server"]["metrics_port"] = free_port()
    config_file = write_config(tmp_path / "tierwise.yaml", data)
    async with replicas([data], None) as [svc], httpx.AsyncClient() as client:
        secret = await create_key(config_file, "--tenant", "acme")
        assert isinstance(await complete(svc, bearer(secret)), pb.CompleteResponse)
        redis.kill()
        await asyncio.sleep(1.5)  # past max_stale_s since the last read
        scrape = await client.get(
            f"http://127.0.0.1:{svc.server.metrics_port}/metrics",
            headers={"Authorization": f"Bearer {secret}"},
        )
        if fail_mode == "closed":
            details = await refused(svc, bearer(secret), grpc.StatusCode.UNAVAILABLE)
            assert "key store cannot be read" in details
            # Over HTTP too the store is at fault, not the key: 503, as UNAVAILABLE over gRPC.
            assert scrape.status_code == 503 and "key store cannot be read" in scrape.text
            page = await client.get(
                f"http://127.0.0.1:{svc.server.metrics_port}/dashboard", auth=("x", secret)
            )
            assert page.status_code == 503 and "key store cannot be read" in page.text
        else:
            assert isinstance(await complete(svc, bearer(secret)), pb.CompleteResponse)
            assert scrape.status_code == 200 and "tierwise_requests_total" in scrape.text
        # A config key needs no store, and the tenant's rate limit fails open (its default).
        assert isinstance(await complete(svc, AUTH), pb.CompleteResponse)
        registry = svc.server.service.accounting.metrics.registry
        unmetered = {"decision": "admitted"}
        assert (registry.get_sample_value("tierwise_rate_limit_store_failures_total", unmetered) or 0) >= 1
        down = registry.get_sample_value("tierwise_auth_failures_total", {"reason": "store_down"})
        assert down == (3.0 if fail_mode == "closed" else 0.0)  # the RPC, the scrape, the page
        code, _, err = await run_cli("keys", "list", "--config", str(config_file))
        assert code == 1 and "key store redis" in err


@pytest.mark.asyncio
async def test_64_callers_against_a_stored_keys_60_rpm_on_two_replicas(
    tmp_path: Path, upstream: ScriptedUpstream, redis_server_factory: Callable[[], RedisServer]
) -> None:
    """At most 60 succeed in the minute (the RPM has no in-flight allowance: a request is counted
    when admitted), the rest get RESOURCE_EXHAUSTED at once with the delay; each call has a 30 s
    deadline, so none waits unboundedly (a limiter that queued would fail it). Redis gets 5 s a check,
    not the default 0.25 s: on a loaded CI machine 64 calls at once once kept a check past 0.25 s, and
    the gate failed open (its fail mode, tested on its own) and admitted all 64."""
    redis, clock = redis_server_factory(), FrozenClock()
    patient = {"redis_timeout_s": 5.0}
    configs = [shared_config(tmp_path / n, upstream, redis, None, rate_limits=patient) for n in "ab"]
    config_file = write_config(tmp_path / "tierwise.yaml", configs[0])
    async with replicas(configs, clock) as servers:
        secret = await create_key(config_file, "--tenant", "acme", "--name", "burst", "--rpm", "60")
        results = await asyncio.gather(*(complete(servers[i % 2], bearer(secret)) for i in range(64)))
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert (64 - len(errors), len(errors)) == (60, 4)
        for error in errors:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "API key 'burst' is over its limit of 60 requests per minute" in (error.details() or "")
            assert retry_after_ms(error) == 1000
        clock.now += 1.0
        assert isinstance(await complete(servers[1], bearer(secret)), pb.CompleteResponse)


@pytest.mark.asyncio
async def test_64_callers_against_a_stored_keys_tpm_on_two_replicas(
    tmp_path: Path, upstream: ScriptedUpstream, redis_server_factory: Callable[[], RedisServer]
) -> None:
    """The TPM holds the same way: each admission charges its estimate (prompt + max_tokens), so
    exactly the estimates that fit are admitted; usage equal to the estimate leaves nothing to correct."""
    upstream.script(text="ok", input_tokens=estimate() - 100, output_tokens=100)
    redis, clock = redis_server_factory(), FrozenClock()
    configs = [shared_config(tmp_path / n, upstream, redis, None) for n in "ab"]
    config_file = write_config(tmp_path / "tierwise.yaml", configs[0])
    async with replicas(configs, clock) as servers:
        tpm = str(10 * estimate())
        secret = await create_key(config_file, "--tenant", "acme", "--name", "tokens", "--tpm", tpm)
        results = await asyncio.gather(*(complete(servers[i % 2], bearer(secret)) for i in range(64)))
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert (64 - len(errors), len(errors)) == (10, 54)
        for error in errors:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert f"API key 'tokens' is over its limit of {tpm} tokens per minute" in (error.details() or "")
            assert retry_after_ms(error) > 0


@pytest.mark.asyncio
async def test_a_stored_keys_budget_holds_across_two_replicas_within_the_in_flight_bound(
    tmp_path: Path, upstream: ScriptedUpstream, redis_server_factory: Callable[[], RedisServer]
) -> None:
    upstream.script(text="ok", input_tokens=12, output_tokens=1000, latency_s=3.0)  # costs > estimates
    redis = redis_server_factory()
    configs = [shared_config(tmp_path / n, upstream, redis, None) for n in "ab"]
    for data in configs:
        data["budget_store"] = {"fail_mode": "closed", "redis_timeout_s": 2.0}
    config_file = write_config(tmp_path / "tierwise.yaml", configs[0])
    async with replicas(configs, None) as servers:
        secret = await create_key(
            config_file, "--tenant", "acme", "--name", "capped", "--budget-usd", "0.002/day"
        )
        results = await asyncio.gather(*(complete(servers[i % 2], bearer(secret)) for i in range(64)))
        answered = [r for r in results if isinstance(r, pb.CompleteResponse)]
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        check_bound(answered, errors, budget="acme/key:capped/day")
        # Another key of the tenant is not held by this key's budget.
        assert isinstance(await complete(servers[0], AUTH), pb.CompleteResponse)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["create", "--tenant", "acme", "--expires", "30x"], "--expires"),
        (["create", "--tenant", "acme", "--budget-usd", "5/week"], "--budget-usd"),
        (["create", "--tenant", "acme", "--rpm", "0"], "--rpm"),
        (["create", "--tenant", "acme", "--name", "no spaces"], "--name"),
        (["create", "--name", "x"], "--tenant"),
        (["create", "--tenant", "acme", "--name", "yaml-key"], "--name"),
        (["revoke", "nobody"], "ID|NAME"),
        (["rotate", "nobody", "--grace", "soon"], "--grace"),
    ],
)
def test_bad_cli_inputs_exit_2_naming_the_option(tmp_path: Path, args: list[str], named: str) -> None:
    data = config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:2")
    data["auth"]["api_keys"][0]["name"] = "yaml-key"
    config_file = write_config(tmp_path / "tierwise.yaml", data)
    code, out, err = cli("keys", args[0], "--config", str(config_file), *args[1:])
    assert code == 2, (out, err)
    assert named in err, err
    assert "twk_" not in out  # nothing was created


@pytest.mark.asyncio
async def test_sighup_makes_tierwise_serve_read_the_stored_keys_now(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    """``serve_forever`` (what ``tierwise serve`` runs) in this process: with an hour between polls,
    a revocation is seen only when SIGHUP asks for a read."""
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    port = free_port()
    data["server"]["port"] = port
    data["keys"] = {"poll_interval_s": 3600, "max_stale_s": 3600}
    config_file = write_config(tmp_path / "tierwise.yaml", data)
    serving = asyncio.create_task(serve_forever(await build_service(build_config(data))))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
        svc = pb_grpc.RouterStub(channel)
        secret = await create_key(config_file, "--tenant", "acme", "--name", "hup")
        assert isinstance(await complete(svc, bearer(secret)), pb.CompleteResponse)
        code, _, err = await run_cli("keys", "revoke", "--config", str(config_file), "hup")
        assert code == 0, err
        assert isinstance(await complete(svc, bearer(secret)), pb.CompleteResponse)  # not read yet
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while isinstance(await complete(svc, bearer(secret)), pb.CompleteResponse):
            assert time.monotonic() < deadline, "SIGHUP did not make the server read the keys"
            await asyncio.sleep(0.05)
        assert await refused(svc, bearer(secret), grpc.StatusCode.UNAUTHENTICATED) == "key revoked"
    finally:
        await channel.close(None)
        os.kill(os.getpid(), signal.SIGTERM)  # serve_forever's own way out
        await asyncio.wait_for(serving, 30)
