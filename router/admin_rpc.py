"""The Admin gRPC service: cache invalidation, tier health, budget usage (stored keys: ``key_rpc``)."""

from __future__ import annotations

from typing import Any

import grpc

from tierwise.cache.errors import CacheStoreError
from tierwise.router.auth import Authenticator, Caller, Unauthenticated
from tierwise.router.auth_throttle import source_address
from tierwise.router.field_checks import InvalidRequest, check_printable
from tierwise.router.pricing import usd_str
from tierwise.router.rpc import Context, reject_undecodable, unary
from tierwise.router.rpc import abort as _abort
from tierwise.router.service import Service
from tierwise.v1 import tierwise_pb2 as pb

ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name


class AdminServicer:
    def __init__(self, service: Service, authenticator: Authenticator) -> None:
        self._service = service
        self._auth = authenticator

    async def _caller(self, request: Any, context: Context) -> Caller:
        try:
            caller = await self._auth.authenticate(
                context.invocation_metadata() or (), source_address(context.peer())
            )
        except Unauthenticated as exc:
            await _abort(context, exc.code, str(exc))
        await reject_undecodable(request, context)
        return caller

    async def InvalidateCache(self, request: Any, context: Context) -> pb.InvalidateCacheResponse:
        caller = await self._caller(request, context)
        try:
            for name in ("entry_id", "partition_key", "tenant"):
                check_printable(name, getattr(request, name))
        except InvalidRequest as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        tenant = request.tenant or caller.tenant
        if tenant != caller.tenant and not caller.admin:
            await _abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "tenant: only admin keys reach other tenants"
            )
        older = request.older_than_s if request.HasField("older_than_s") else None
        if older is not None and not older >= 0:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"older_than_s: must be >= 0; got {older}"
            )
        if not (request.entry_id or request.partition_key or older is not None or request.all):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "entry_id: say what to remove (entry_id, partition_key, older_than_s, or all)",
            )
        cache = self._service.cache
        if cache is None:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "cache: the cache is off in this server"
            )
        # The tenant filter always applies, so an entry id or partition of another tenant removes nothing.
        try:
            removed = await cache.cache.invalidate(
                entry_id=request.entry_id or None,
                tenant=tenant,
                partition_key=request.partition_key or None,
                older_than_s=older,
            )
        except CacheStoreError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"cache store: {exc}")
        return pb.InvalidateCacheResponse(removed=removed)

    async def TierStatus(self, request: Any, context: Context) -> pb.TierStatusResponse:
        caller = await self._caller(request, context)
        if not caller.admin:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, "tier status is for admin keys only")
        tiers = []
        for snap in self._service.health.snapshot():
            breaker, latency = snap.breaker, snap.latency
            status = pb.TierStatus(
                tier=breaker.tier,
                circuit=breaker.state.value,
                calls_in_window=breaker.calls,
                failure_rate=breaker.failure_rate,
                slow_call_rate=breaker.slow_call_rate,
                cold=latency.total is None,
            )
            if latency.total is not None:
                status.latency_p50_ms, status.latency_p95_ms = latency.total.p50_ms, latency.total.p95_ms
            if latency.ttft is not None:
                status.ttft_p50_ms, status.ttft_p95_ms = latency.ttft.p50_ms, latency.ttft.p95_ms
            tiers.append(status)
        return pb.TierStatusResponse(tiers=tiers)

    async def BudgetStatus(self, request: Any, context: Context) -> pb.BudgetStatusResponse:
        caller = await self._caller(request, context)
        try:
            usage = await self._service.budgets.usage()
        except Exception as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"budget store: {exc}")
        out = []
        for u in usage:
            tenant = self._service.budgets.tenant_of(u.budget)  # stored keys' budgets too
            if tenant != caller.tenant and not caller.admin:
                continue
            out.append(
                pb.BudgetStatus(
                    budget=u.budget,
                    tenant=tenant,
                    period=u.period,
                    used_usd=usd_str(u.used_usd),
                    in_flight_usd=usd_str(u.in_flight_usd),
                    limit_usd="" if u.limit_usd is None else usd_str(u.limit_usd),
                    used_tokens=u.used_tokens,
                    limit_tokens=u.limit_tokens or 0,
                    resets_at=u.resets_at.isoformat(),
                )
            )
        return pb.BudgetStatusResponse(budgets=out)


def admin_handlers(
    servicer: AdminServicer, more: dict[str, grpc.RpcMethodHandler[Any, Any]]
) -> grpc.GenericRpcHandler[Any, Any]:
    """``more``: the Admin methods other modules serve (``key_rpc``)."""
    return grpc.method_handlers_generic_handler(
        ADMIN_SERVICE,
        {
            **more,
            "InvalidateCache": unary(
                servicer.InvalidateCache, pb.InvalidateCacheRequest, pb.InvalidateCacheResponse
            ),
            "TierStatus": unary(servicer.TierStatus, pb.TierStatusRequest, pb.TierStatusResponse),
            "BudgetStatus": unary(servicer.BudgetStatus, pb.BudgetStatusRequest, pb.BudgetStatusResponse),
        },
    )
