"""The Admin RPCs over stored keys (CreateKey, ListKeys, RevokeKey, RotateKey): admin keys only,
the same rules as ``tierwise keys`` (``keys.manage``). A change is read back at once on this
replica; the others see it at their next poll, or at once when the new key first reaches them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import grpc

from tierwise.router.auth import Authenticator, Caller, Unauthenticated
from tierwise.router.auth_throttle import source_address
from tierwise.router.keys import (
    KeyBudget,
    KeyInputError,
    KeyManager,
    KeyStoreUnavailable,
    NewSecret,
    StoredKeys,
)
from tierwise.router.keys.manage import describe
from tierwise.router.rpc import Context, reject_undecodable, unary
from tierwise.router.rpc import abort as _abort
from tierwise.v1 import tierwise_pb2 as pb

T = TypeVar("T")


class KeyAdminServicer:
    def __init__(self, keys: StoredKeys | None, authenticator: Authenticator, config_names: set[str]) -> None:
        self._keys = keys
        self._auth = authenticator
        self._manager = None if keys is None else KeyManager(keys.store, config_names)

    async def _admin(self, request: Any, context: Context) -> KeyManager:
        try:
            caller: Caller = await self._auth.authenticate(
                context.invocation_metadata() or (), source_address(context.peer())
            )
        except Unauthenticated as exc:
            await _abort(context, exc.code, str(exc))
        await reject_undecodable(request, context)
        if not caller.admin:
            await _abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "API keys are managed with admin keys only"
            )
        if self._manager is None:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "auth: stored keys need auth.mode api_key"
            )
        return self._manager

    async def _run(self, context: Context, work: Callable[[], T], *, changes: bool) -> T:
        try:
            result = await asyncio.to_thread(work)
        except KeyInputError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
        except KeyStoreUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        if changes and self._keys is not None:
            await self._keys.refresh()
        return result

    async def CreateKey(self, request: Any, context: Context) -> pb.CreateKeyResponse:
        manager = await self._admin(request, context)
        budget = await _budget(request, context)

        def create() -> NewSecret:
            return manager.create(
                request.tenant,
                name=request.name or None,
                expires_in_s=request.expires_in_s if request.HasField("expires_in_s") else None,
                admin=request.admin,
                rpm=request.rpm if request.HasField("rpm") else None,
                tpm=request.tpm if request.HasField("tpm") else None,
                budget=budget,
            )

        made = await self._run(context, create, changes=True)
        return _created(made)

    async def ListKeys(self, request: Any, context: Context) -> pb.ListKeysResponse:
        manager = await self._admin(request, context)
        records = await self._run(context, lambda: manager.list(request.tenant or None), changes=False)
        now = time.time()
        return pb.ListKeysResponse(keys=[pb.ApiKeyInfo(**describe(r, now)) for r in records])

    async def RevokeKey(self, request: Any, context: Context) -> pb.ApiKeyInfo:
        manager = await self._admin(request, context)
        record = await self._run(context, lambda: manager.revoke(request.key), changes=True)
        return pb.ApiKeyInfo(**describe(record, time.time()))

    async def RotateKey(self, request: Any, context: Context) -> pb.CreateKeyResponse:
        manager = await self._admin(request, context)
        made = await self._run(
            context, lambda: manager.rotate(request.key, grace_s=request.grace_s), changes=True
        )
        return _created(made)


def _created(made: NewSecret) -> pb.CreateKeyResponse:
    return pb.CreateKeyResponse(key=pb.ApiKeyInfo(**describe(made.record, time.time())), secret=made.secret)


async def _budget(request: Any, context: Context) -> KeyBudget | None:
    if not request.budget_usd and not request.budget_window:
        return None
    if request.budget_window not in ("day", "month"):
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"budget_window: must be day or month with budget_usd; got {request.budget_window!r}",
        )
    try:
        usd = Decimal(request.budget_usd)
    except InvalidOperation:
        usd = Decimal(0)
    if not usd.is_finite() or usd <= 0:
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"budget_usd: must be a decimal number above 0; got {request.budget_usd!r}",
        )
    return KeyBudget(usd, request.budget_window)


def key_handlers(servicer: KeyAdminServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The Admin service's key methods, beside ``admin_rpc``'s."""
    return {
        "CreateKey": unary(servicer.CreateKey, pb.CreateKeyRequest, pb.CreateKeyResponse),
        "ListKeys": unary(servicer.ListKeys, pb.ListKeysRequest, pb.ListKeysResponse),
        "RevokeKey": unary(servicer.RevokeKey, pb.RevokeKeyRequest, pb.ApiKeyInfo),
        "RotateKey": unary(servicer.RotateKey, pb.RotateKeyRequest, pb.CreateKeyResponse),
    }
