"""The Admin service: tenant-scoped cache invalidation, tier status, budget status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.auth import sha256_hex
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

ADMIN_AUTH = (("authorization", "Bearer admin-key"),)


@pytest_asyncio.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Running]:
    async with ScriptedUpstream() as upstream:
        upstream.script(text="cached answer", input_tokens=10, output_tokens=5)
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["cache"] = {"enabled": True}
        data["auth"]["api_keys"].append(
            {"key_sha256": sha256_hex("admin-key"), "tenant": "ops", "admin": True}
        )
        data["budgets"] = [
            {"tenant": "acme", "window": "day", "usd": "5"},
            {"tenant": "globex", "window": "day", "usd": "7"},
        ]
        async with running_server(build_config(data)) as running:
            yield running


async def ask(
    svc: Running, auth: tuple[tuple[str, str], ...], text: str = "What are your hours?"
) -> pb.CompleteResponse:
    request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)])
    response: pb.CompleteResponse = await svc.stub.Complete(request, metadata=auth)
    assert svc.server.service.cache is not None
    await svc.server.service.cache.drain()
    return response


@pytest.mark.asyncio
async def test_invalidation_is_scoped_to_the_callers_tenant(svc: Running) -> None:
    admin = pb_grpc.AdminStub(svc.channel)
    await ask(svc, AUTH)
    await ask(svc, OTHER_AUTH)
    # globex's key cannot remove acme's entries, by tenant or by acme's entry id
    error = await rpc_error(
        admin.InvalidateCache(pb.InvalidateCacheRequest(tenant="acme", all=True), metadata=OTHER_AUTH)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    acme_entry = (await ask(svc, AUTH)).decision.cached.entry_id
    removed = await admin.InvalidateCache(pb.InvalidateCacheRequest(entry_id=acme_entry), metadata=OTHER_AUTH)
    assert removed.removed == 0
    assert (await ask(svc, AUTH)).decision.cache_hit
    # acme removes its own
    removed = await admin.InvalidateCache(pb.InvalidateCacheRequest(all=True), metadata=AUTH)
    assert removed.removed == 1
    assert not (await ask(svc, AUTH)).decision.cache_hit
    assert (await ask(svc, OTHER_AUTH)).decision.cache_hit
    # an admin key reaches any tenant
    removed = await admin.InvalidateCache(
        pb.InvalidateCacheRequest(tenant="globex", all=True), metadata=ADMIN_AUTH
    )
    assert removed.removed == 1


@pytest.mark.asyncio
async def test_invalidation_needs_a_target_and_a_key(svc: Running) -> None:
    admin = pb_grpc.AdminStub(svc.channel)
    error = await rpc_error(admin.InvalidateCache(pb.InvalidateCacheRequest(), metadata=AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(admin.InvalidateCache(pb.InvalidateCacheRequest(all=True)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_tier_status_is_for_admins(svc: Running) -> None:
    admin = pb_grpc.AdminStub(svc.channel)
    error = await rpc_error(admin.TierStatus(pb.TierStatusRequest(), metadata=AUTH))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await ask(svc, AUTH)
    status = await admin.TierStatus(pb.TierStatusRequest(), metadata=ADMIN_AUTH)
    assert [(t.tier, t.circuit) for t in status.tiers] == [("small", "closed"), ("large", "closed")]
    assert status.tiers[0].calls_in_window == 1 and status.tiers[0].cold


@pytest.mark.asyncio
async def test_budget_status_shows_only_the_callers_budgets(svc: Running) -> None:
    admin = pb_grpc.AdminStub(svc.channel)
    await ask(svc, AUTH)
    mine = await admin.BudgetStatus(pb.BudgetStatusRequest(), metadata=AUTH)
    assert [(b.tenant, b.limit_usd) for b in mine.budgets] == [("acme", "5")]
    assert float(mine.budgets[0].used_usd) == pytest.approx((10 * 0.5 + 5 * 1.5) / 1e6)
    everyone = await admin.BudgetStatus(pb.BudgetStatusRequest(), metadata=ADMIN_AUTH)
    assert sorted(b.tenant for b in everyone.budgets) == ["acme", "globex"]
