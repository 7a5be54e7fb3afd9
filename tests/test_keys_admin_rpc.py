"""The Admin key RPCs (CreateKey, ListKeys, RevokeKey, RotateKey) through a real server on its
embedded SQLite key store: admin keys only; the secret comes back once and works at once; a stored
admin key may manage keys in turn; rotation with a grace period; bad fields named; a stored key's
budget shows in BudgetStatus under its tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.test_metrics_access import series, serving
from tests.upstream import ScriptedUpstream
from tierwise.router.auth import sha256_hex
from tierwise.router.keys import KeyBudget, KeyManager
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

ADMIN_AUTH = (("authorization", "Bearer admin-key"),)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


@pytest_asyncio.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Running]:
    async with ScriptedUpstream() as upstream:
        upstream.script(text="ok", input_tokens=10, output_tokens=5)
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["auth"]["api_keys"].append(
            {"key_sha256": sha256_hex("admin-key"), "tenant": "ops", "admin": True, "name": "root"}
        )
        async with running_server(build_config(data)) as running:
            yield running


async def works(svc: Running, secret: str) -> bool:
    request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="hi")])
    try:
        await svc.stub.Complete(request, metadata=bearer(secret))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
        return False
    return True


@pytest.mark.asyncio
async def test_admin_keys_create_list_rotate_and_revoke_keys(svc: Running) -> None:
    admin = pb_grpc.AdminStub(svc.channel)
    made = await admin.CreateKey(
        pb.CreateKeyRequest(
            tenant="acme", name="app", rpm=100, budget_usd="2.5", budget_window="month", admin=True
        ),
        metadata=ADMIN_AUTH,
    )
    assert made.secret.startswith("twk_") and made.key.state == "active" and made.key.rpm == 100
    assert await works(svc, made.secret)
    # A stored admin key manages keys too; listing shows no secret.
    listed = await admin.ListKeys(pb.ListKeysRequest(tenant="acme"), metadata=bearer(made.secret))
    assert [k.name for k in listed.keys] == ["app"] and made.secret not in str(listed)
    [usage] = (await admin.BudgetStatus(pb.BudgetStatusRequest(), metadata=ADMIN_AUTH)).budgets
    assert (usage.budget, usage.tenant, usage.limit_usd) == ("acme/key:app/month", "acme", "2.5")

    rotated = await admin.RotateKey(pb.RotateKeyRequest(key="app", grace_s=600), metadata=ADMIN_AUTH)
    assert rotated.key.id == made.key.id and rotated.key.previous_secret_until
    assert await works(svc, rotated.secret) and await works(svc, made.secret)  # within the grace
    revoked = await admin.RevokeKey(pb.RevokeKeyRequest(key=made.key.id), metadata=ADMIN_AUTH)
    assert revoked.state == "revoked" and revoked.revoked_at
    assert not await works(svc, rotated.secret) and not await works(svc, made.secret)


@pytest.mark.asyncio
async def test_tenant_keys_are_refused_and_bad_fields_are_named(svc: Running) -> None:
    admin = pb_grpc.AdminStub(svc.channel)
    error = await rpc_error(admin.ListKeys(pb.ListKeysRequest(), metadata=AUTH))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    for request, field in [
        (pb.CreateKeyRequest(tenant=""), "tenant"),
        (pb.CreateKeyRequest(tenant="acme", name="root"), "name"),  # a config key's name
        (pb.CreateKeyRequest(tenant="acme", rpm=0), "rpm"),
        (pb.CreateKeyRequest(tenant="acme", expires_in_s=-5), "expires_in_s"),
        (pb.CreateKeyRequest(tenant="acme", budget_usd="lots", budget_window="day"), "budget_usd"),
        (pb.CreateKeyRequest(tenant="acme", budget_usd="5", budget_window="week"), "budget_window"),
    ]:
        error = await rpc_error(admin.CreateKey(request, metadata=ADMIN_AUTH))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(f"{field}: "), error.details()
    error = await rpc_error(admin.RevokeKey(pb.RevokeKeyRequest(key="nobody"), metadata=ADMIN_AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and (error.details() or "").startswith("key: ")
    error = await rpc_error(admin.RotateKey(pb.RotateKeyRequest(key="x", grace_s=-1), metadata=ADMIN_AUTH))
    assert (error.details() or "").startswith("grace_s: ")


@pytest.mark.asyncio
async def test_a_tenant_scraping_metrics_sees_its_stored_keys_budget_and_no_other_tenant_does(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (svc, base), httpx.AsyncClient() as client:
        keys = svc.server.keys
        assert keys is not None
        KeyManager(keys.store).create("acme", name="app", budget=KeyBudget(Decimal(3), "month"))
        await keys.refresh()
        own = series((await client.get(f"{base}/metrics", headers=dict(AUTH))).text)
        assert {s["budget"] for s in own if "budget" in s} == {"acme/*/month", "acme/key:app/month"}
        other = (await client.get(f"{base}/metrics", headers=dict(OTHER_AUTH))).text
        assert "key:app" not in other
