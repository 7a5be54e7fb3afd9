"""Budgets per API key: two keys of tenant acme (alice, bob), a budget on alice's key only.

Through real gRPC servers: alice's burst is refused naming her key's budget once it is spent,
overspending by no more than the reservations in flight (as a tenant budget), while bob's requests
still pass and are not counted; a soft limit on alice's key degrades only her requests. Through the
manager on both real stores: a key budget's usage is kept apart from the tenant's and a feature's.
Config: a key budget must name a configured key of its own tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.budget_support import Clock, StoreFactory, make_manager, redis_server_factory, store_factory
from tests.harness import API_KEY, AUTH, OTHER_KEY, build_config, config_dict, running_server
from tests.redis_server import RedisServer
from tests.test_budgets_rebuild import ledger, outage_then_empty_restart, record_today, redis, replica
from tests.test_budgets_servers import MAX_TOKENS, OUTPUT_TOKENS, burst, check_bound, complete, spent
from tests.upstream import ScriptedUpstream
from tierwise.router.auth import sha256_hex
from tierwise.router.budgets.alerts import BudgetAlert
from tierwise.router.config import ConfigError, parse_config
from tierwise.router.errors import BudgetExhausted
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.v1 import tierwise_pb2 as pb

__all__ = ["ledger", "redis", "redis_server_factory", "store_factory"]

BOB_KEY = "test-key-acme-bob"
BOB_AUTH = (("authorization", f"Bearer {BOB_KEY}"),)
ALICE_BUDGET = "acme/key:alice/day"


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        yield scripted


def keys_config(
    store: Path, upstream: ScriptedUpstream | None, budgets: list[dict[str, Any]]
) -> dict[str, Any]:
    """Alice's and bob's keys for acme, one for globex; no upstream: a config that is never served."""
    urls = (
        ("http://127.0.0.1:9/v1", "http://127.0.0.1:9")
        if upstream is None
        else (upstream.openai_url, upstream.base_url)
    )
    data = config_dict(store, *urls)
    data["auth"] = {
        "api_keys": [
            {"key_sha256": sha256_hex(API_KEY), "tenant": "acme", "name": "alice"},
            {"key_sha256": sha256_hex(BOB_KEY), "tenant": "acme", "name": "bob"},
            {"key_sha256": sha256_hex(OTHER_KEY), "tenant": "globex", "name": "globex-main"},
        ]
    }
    data["budgets"] = budgets
    return data


@pytest.mark.asyncio
async def test_a_spent_key_budget_refuses_that_key_only(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    # Every answer costs more than its estimate and is held until the whole burst has reserved.
    upstream.script(text="ok", input_tokens=12, output_tokens=OUTPUT_TOKENS, latency_s=3.0)
    budgets = [{"tenant": "acme", "key": "alice", "window": "day", "usd": "0.002"}]
    async with running_server(build_config(keys_config(tmp_path, upstream, budgets))) as svc:
        answered, refused = await burst([svc])  # as alice
        check_bound(answered, refused, ALICE_BUDGET)
        assert "API key 'alice'" in (refused[0].details() or "")
        used = await spent(svc)
        assert used == sum(Decimal(r.cost_usd_exact) for r in answered) > Decimal("0.002")
        # Bob, of the same tenant, is still served, and his spend is not alice's.
        upstream.script(text="ok", input_tokens=12, output_tokens=OUTPUT_TOKENS)
        for _ in range(3):
            assert isinstance(await complete(svc, BOB_AUTH), pb.CompleteResponse)
        assert await spent(svc) == used
        assert not isinstance(await complete(svc, AUTH), pb.CompleteResponse)


@pytest.mark.asyncio
async def test_a_soft_key_limit_degrades_that_key_only(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(text="y", input_tokens=10, output_tokens=10)
    budgets = [
        {
            "tenant": "acme",
            "key": "alice",
            "window": "month",
            "soft_usd": "0.000001",  # below any estimate: every request of alice's is over it
            "degrade": {"max_tier": "small"},
        }
    ]
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content="hi")], tier="large", max_tokens=MAX_TOKENS
    )
    async with running_server(build_config(keys_config(tmp_path, upstream, budgets))) as svc:
        alice = await svc.stub.Complete(request, metadata=AUTH)
        assert alice.decision.tier == "small" and alice.decision.reason == "budget-degrade"
        bob = await svc.stub.Complete(request, metadata=BOB_AUTH)
        assert bob.decision.tier == "large" and bob.decision.reason != "budget-degrade"


@pytest.mark.asyncio
async def test_key_tenant_and_feature_budgets_keep_separate_usage(store_factory: StoreFactory) -> None:
    budgets = [
        {"tenant": "acme", "window": "day", "usd": "10"},
        {"tenant": "acme", "feature": "chat", "window": "day", "usd": "10"},
        {"tenant": "acme", "key": "alice", "window": "day", "usd": "10"},
        {"tenant": "acme", "feature": "chat", "key": "alice", "window": "day", "usd": "10"},
    ]
    manager = make_manager(store_factory(), budgets, Clock())
    for key, feature, usd in (("alice", "chat", "1"), ("alice", "search", "2"), ("bob", "chat", "4")):
        reservation = await manager.reserve("acme", feature, Decimal(usd), 10, key=key)
        await manager.settle(reservation, Decimal(usd), 10)
    used = {u.budget: u.used_usd for u in await manager.usage()}
    assert used == {
        "acme/*/day": Decimal(7),
        "acme/chat/day": Decimal(5),
        "acme/key:alice/day": Decimal(3),
        "acme/chat/key:alice/day": Decimal(1),
    }
    await manager.aclose()


@pytest.mark.asyncio
async def test_a_key_budget_alert_names_the_key(store_factory: StoreFactory) -> None:
    alerts: list[BudgetAlert] = []
    budget = {"tenant": "acme", "key": "alice", "window": "day", "usd": "1", "alerts": [0.5]}
    manager = make_manager(store_factory(), [budget], Clock(), alerts=alerts)
    for key in ("bob", "alice"):  # bob's spend does not count towards alice's alert
        reservation = await manager.reserve("acme", "chat", Decimal("0.6"), 10, key=key)
        await manager.settle(reservation, Decimal("0.6"), 10)
    await manager.drain()
    [alert] = alerts
    assert (alert.budget, alert.key, alert.level, alert.used) == (ALICE_BUDGET, "alice", 0.5, Decimal("0.6"))
    assert alert.as_json()["key"] == "alice"
    await manager.aclose()


@pytest.mark.asyncio
async def test_a_key_budget_redis_lost_is_rebuilt_from_its_keys_and_unkeyed_spend(
    redis: RedisServer, ledger: SpendLedger
) -> None:
    clock = Clock()
    budget = {"tenant": "acme", "key": "alice", "window": "day", "usd": "1.00"}
    manager = replica(redis, clock, ledger, budgets=[budget])
    record_today(ledger, 2, "0.2", 200)  # 0.4 USD of acme today recorded without a key (older records)
    record_today(ledger, 2, "0.2", 200, api_key="alice")  # 0.4 with alice's key
    record_today(ledger, 3, "0.2", 200, api_key="bob")  # 0.6 with bob's: not alice's
    await outage_then_empty_restart(redis, clock, [manager], key="alice")
    # Alice's own spend and what carries no key (it may be hers): never less than hers.
    with pytest.raises(BudgetExhausted, match=r"acme/key:alice/day .* used 0\.8"):
        await manager.reserve("acme", "chat", Decimal("0.3"), 10, key="alice")
    assert (await manager.reserve("acme", "chat", Decimal("0.3"), 10, key="bob")).lines == ()
    await manager.aclose()


@pytest.mark.parametrize(
    ("key", "tenant", "problem"),
    [
        ("carol", "acme", "no API key named 'carol' in auth.api_keys"),
        ("globex-main", "acme", "API key 'globex-main' belongs to tenant 'globex'"),
    ],
)
def test_a_key_budget_must_name_a_key_of_its_tenant(
    tmp_path: Path, key: str, tenant: str, problem: str
) -> None:
    data = keys_config(tmp_path, None, [])
    data["budgets"] = [
        {"tenant": "acme", "window": "day", "usd": "1"},
        {"tenant": tenant, "key": key, "window": "day", "usd": "1"},
    ]
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert "budgets[1].key: " + problem in str(refused.value)


def test_a_feature_named_like_a_key_budget_cannot_share_its_name(tmp_path: Path) -> None:
    data = keys_config(tmp_path, None, [])
    data["budgets"] = [
        {"tenant": "acme", "key": "alice", "window": "day", "usd": "1"},
        {"tenant": "acme", "feature": "key:alice", "window": "day", "usd": "1"},
    ]
    with pytest.raises(ConfigError, match=r"budgets\[1\]: a second budget for acme/key:alice/day"):
        parse_config(data)
