"""Budget store failures (Redis killed or hung, SQLite gone), fail modes, backoff, alert delivery."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from tests.budget_support import Clock, make_manager
from tests.redis_server import RedisServer, redis_server_factory, require_redis_server
from tierwise.router.budgets.alerts import BudgetAlert
from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.manager import BudgetManager, build_budget_manager
from tierwise.router.budgets.redis_store import RedisBudgetStore
from tierwise.router.budgets.sqlite_store import SqliteBudgetStore
from tierwise.router.config import parse_config
from tierwise.router.errors import BudgetExhausted

__all__ = ["redis_server_factory"]

D = Decimal
DAY = {"tenant": "acme", "window": "day", "usd": "1.00"}


class StoreErrors:
    def __init__(self, manager: BudgetManager) -> None:
        self.seen: list[tuple[str, str]] = []
        manager.add_store_error_listener(lambda op, error: self.seen.append((op, error.message)))


@pytest.fixture
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


def redis_manager(server: RedisServer, clock: Clock, **settings: Any) -> BudgetManager:
    return make_manager(RedisBudgetStore.from_url(server.url, timeout_s=0.25), [DAY], clock, **settings)


@pytest.mark.asyncio
async def test_redis_killed_fail_open_admits_unmetered_then_recovers(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    manager = redis_manager(redis, clock, fail_mode="open")
    errors = StoreErrors(manager)
    before = await manager.reserve("acme", "", D("0.9"), 10)
    assert before.enforced

    redis.kill()
    with caplog.at_level(logging.WARNING, logger="tierwise.budgets"):
        during = await manager.reserve("acme", "", D("0.9"), 10)  # would be over the limit
    assert not during.enforced and during.degrade is None
    assert (
        errors.seen[0][0] == "reserve"
        and f"Redis at 127.0.0.1:{redis.port}/0 unavailable" in errors.seen[0][1]
    )
    assert "(during reserve); next try in 0.5 s" in caplog.text
    assert "tenant 'acme''s request admitted by the budget fail mode (closed: none)" in caplog.text

    # Within the backoff the store is not tried at all; settling does not raise.
    again = await manager.reserve("acme", "", D("5"), 10)
    assert not again.enforced and "backing off" in errors.seen[1][1]
    await manager.settle(before, D("0.9"), 10)
    await manager.release(during)
    assert [op for op, _ in errors.seen] == ["reserve", "reserve", "settle", "release"]

    redis.restart()  # same port, empty: no ledger to rebuild from here, so the period restarts at zero
    clock.advance(0.5)
    with caplog.at_level(logging.WARNING, logger="tierwise.budgets"):
        after = await manager.reserve("acme", "", D("0.9"), 10)
    assert after.enforced and "reachable again" in caplog.text
    with pytest.raises(BudgetExhausted):
        await manager.reserve("acme", "", D("0.9"), 10)
    await manager.aclose()


@pytest.mark.asyncio
async def test_redis_killed_fail_closed_refuses_naming_redis(redis: RedisServer) -> None:
    manager = redis_manager(redis, Clock())  # closed: the default for a hard limit
    await manager.reserve("acme", "", D("0.1"), 1)
    redis.kill()
    for _ in range(2):  # the first try and the backed-off one
        with pytest.raises(BudgetStoreUnavailable) as refused:
            await manager.reserve("acme", "", D("0.1"), 1)
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        assert f"Redis at 127.0.0.1:{redis.port}/0" in refused.value.message
        assert "fail_mode is closed for budget acme/*/day" in refused.value.message
    # Tenants without budgets never need the store.
    assert (await manager.reserve("globex", "", D("0.1"), 1)).enforced
    await manager.aclose()


@pytest.mark.asyncio
async def test_hung_redis_times_out_into_the_fail_mode(redis: RedisServer) -> None:
    manager = redis_manager(redis, Clock(), fail_mode="open")
    errors = StoreErrors(manager)
    redis.pause()
    try:
        reservation = await manager.reserve("acme", "", D("0.1"), 1)
    finally:
        redis.resume()
    assert not reservation.enforced and "TimeoutError" in errors.seen[0][1]
    await manager.aclose()


@pytest.mark.asyncio
async def test_backoff_doubles_to_the_cap_and_resets_on_success(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteBudgetStore(tmp_path / "b.sqlite3")
    manager = make_manager(store, [DAY], clock, reconnect_min_s=1, reconnect_max_s=4, fail_mode="open")
    errors = StoreErrors(manager)
    await store.aclose()  # every real call now fails
    tried = []
    for _ in range(12):
        await manager.reserve("acme", "", D("0.1"), 1)
        tried.append("backing off" not in errors.seen[-1][1])
        clock.advance(1)
    # Real tries at t = 0, 1, 3, 7, 11 (waits 1, 2, 4, 4).
    assert [t for t, real in enumerate(tried) if real] == [0, 1, 3, 7, 11]
    assert "SQLite at" in errors.seen[0][1]


@pytest.mark.asyncio
async def test_redis_keys_live_until_after_their_period(redis: RedisServer) -> None:
    clock = Clock()
    manager = redis_manager(redis, clock)
    reservation = await manager.reserve("acme", "", D("0.5"), 1)
    await manager.settle(reservation, D("0.5"), 1)
    await manager.reserve("acme", "", D("0.1"), 1)  # one left in flight: its hash and set exist too
    await manager.drain()
    client = RedisBudgetStore.from_url(redis.url)._client
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys("tw:budget:*"))
    by_kind = {k.rsplit(":", 1)[1]: k for k in keys}
    assert sorted(by_kind) == ["alerts", "exp", "finished", "res", "state"]
    assert len({k.split("}")[0] for k in keys}) == 1  # one hash tag: one cluster slot per tenant
    # Noon on 2025-03-04: the period ends in 12 h, and is kept 2 days more.
    expected_ms = (12 + 48) * 3600 * 1000
    for key in keys:
        if key != by_kind["finished"]:
            assert expected_ms - 5000 < await client.pttl(key) <= expected_ms
    # Settled reservation ids are kept for the reservation TTL (the default 600 s): bounded memory.
    assert 595_000 < await client.pttl(by_kind["finished"]) <= 600_000
    await client.aclose()
    await manager.aclose()


# -- alert delivery ---------------------------------------------------------------


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.url = ""


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()

    async def receive(request: web.Request) -> web.Response:
        hook.received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app.router.add_post("/hook", receive)
    app.router.add_post("/broken", broken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield hook
    await runner.cleanup()


def _with_webhook(url: str) -> dict[str, Any]:
    return {**DAY, "webhook_url": url, "alerts": [0.5]}


@pytest.mark.asyncio
async def test_alert_posts_to_the_webhook_off_the_request_path(tmp_path: Path, webhook: Webhook) -> None:
    store = SqliteBudgetStore(tmp_path / "b.sqlite3")
    manager = make_manager(store, [_with_webhook(webhook.url + "/hook")], Clock())
    reservation = await manager.reserve("acme", "chat", D("0.6"), 1)
    await manager.settle(reservation, D("0.6"), 1)
    await manager.drain()
    [body] = webhook.received
    assert {k: body[k] for k in ("budget", "kind", "unit", "level", "used", "limit", "resets_at")} == {
        "budget": "acme/*/day",
        "kind": "threshold",
        "unit": "usd",
        "level": 0.5,
        "used": "0.6 USD",
        "limit": "1 USD",
        "resets_at": "2025-03-05T00:00:00+00:00",
    }
    assert body["message"].startswith("budget acme/*/day reached 50% of its limit")
    await manager.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/broken", None])
async def test_failing_webhooks_and_listeners_are_logged_not_raised(
    tmp_path: Path, webhook: Webhook, caplog: pytest.LogCaptureFixture, path: str | None
) -> None:
    url = webhook.url + path if path else "http://127.0.0.1:9/nothing-listens"
    seen: list[BudgetAlert] = []
    manager = make_manager(SqliteBudgetStore(tmp_path / "b.sqlite3"), [_with_webhook(url)], Clock())

    def broken_listener(alert: BudgetAlert) -> None:
        raise RuntimeError("metrics exporter bug")

    manager.alerts.add_listener(broken_listener)
    manager.alerts.add_listener(seen.append)
    with caplog.at_level(logging.WARNING, logger="tierwise.budgets"):
        reservation = await manager.reserve("acme", "", D("0.6"), 1)
        await manager.settle(reservation, D("0.6"), 1)
        await manager.drain()
    assert len(seen) == 1  # the broken listener did not stop the next one
    assert "budget alert listener failed" in caplog.text
    assert "budget alert webhook failed" in caplog.text
    await manager.aclose()


# -- building from the config ----------------------------------------------------------


def _config(tmp_path: Path, **store: Any) -> Any:
    return parse_config(
        {
            "tiers": [{"name": "small", "provider": "openai", "base_url": "http://x", "model": "m"}],
            "store": {"path": str(tmp_path), **store},
            "budgets": [{**DAY, "soft_usd": "0.5", "degrade": {"max_tier": "small"}}],
        }
    )


@pytest.mark.asyncio
async def test_built_from_config_on_sqlite_and_redis(tmp_path: Path, redis: RedisServer) -> None:
    for config in (_config(tmp_path), _config(tmp_path, kind="redis", url=redis.url)):
        manager = await build_budget_manager(config)
        reservation = await manager.reserve("acme", "", D("0.6"), 1)
        assert reservation.degrade is not None and reservation.degrade.max_tier == "small"
        with pytest.raises(BudgetExhausted):
            await manager.reserve("acme", "", D("0.6"), 1)
        await manager.aclose()
    assert (tmp_path / "budgets.sqlite3").is_file()


@pytest.mark.asyncio
async def test_a_manager_that_cannot_be_built_closes_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    close = SqliteBudgetStore.aclose

    async def closing(store: SqliteBudgetStore) -> None:
        await close(store)
        closed.append(store.name)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError("the manager cannot be built")

    monkeypatch.setattr(SqliteBudgetStore, "aclose", closing)
    monkeypatch.setattr(BudgetManager, "__init__", refuse)
    with pytest.raises(ValueError, match="cannot be built"):
        await build_budget_manager(_config(tmp_path))
    assert closed == [f"SQLite at {tmp_path / 'budgets.sqlite3'}"]


def test_config_rejects_bad_budgets(tmp_path: Path) -> None:
    base = _config(tmp_path).model_dump(mode="json")
    for budgets, message in [
        ([{**DAY, "usd": None}], "a budget needs usd, tokens, soft_usd or soft_tokens"),
        ([{**DAY, "soft_usd": "2"}], "soft_usd must be below usd"),
        ([DAY, DAY], "a second budget for acme/\\*/day"),
        ([{**DAY, "degrade": {"max_tier": "huge"}}], "unknown tier 'huge'"),
        ([{**DAY, "alerts": [1.5]}], "alerts are shares of the limit"),
        ([{**DAY, "window": "week"}], "budgets.0.window"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_config({**base, "budgets": budgets})


def test_missing_redis_server_skips_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        require_redis_server()
