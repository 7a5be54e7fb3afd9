"""The gRPC front door: authentication, validation, status mapping, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierwise.router.admin_rpc import ADMIN_SERVICE, AdminServicer, admin_handlers
from tierwise.router.analytics.dashboard_http import Dashboard
from tierwise.router.auth import Authenticator, Caller, Unauthenticated
from tierwise.router.auth_throttle import source_address
from tierwise.router.calls import Call, Calls, log_failure
from tierwise.router.config import ConfigError, LimitsConfig, TlsConfig
from tierwise.router.errors import RetryLater, ServiceError
from tierwise.router.feedback.store import SOURCES, FeedbackRecord
from tierwise.router.field_checks import check_printable, check_tags
from tierwise.router.key_rpc import KeyAdminServicer, key_handlers
from tierwise.router.keys import open_stored_keys
from tierwise.router.observability.admin_http import AdminServer
from tierwise.router.observability.anomaly import AnomalyChecker
from tierwise.router.observability.metrics import AuthFailureCounter
from tierwise.router.observability.scrape_access import ScrapeAccess
from tierwise.router.openai_http import OpenAIFront
from tierwise.router.outcome import Decision, StreamDelta
from tierwise.router.rate_limiting import RequestLimits
from tierwise.router.rate_limits import RateLimitGate
from tierwise.router.rpc import abort as _abort
from tierwise.router.rpc import reject_undecodable, safe_deserializer, unary
from tierwise.router.service import Service
from tierwise.router.types import RequestSpec
from tierwise.router.validation import InvalidRequest, WireRequest, validate_request
from tierwise.router.wire import decision_pb, delta_chunk, response_pb, stream_end_pb
from tierwise.v1 import tierwise_pb2 as pb

log = logging.getLogger("tierwise.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Router"].full_name


class RouterServicer:
    def __init__(self, service: Service, authenticator: Authenticator, limits: RequestLimits) -> None:
        self._service = service
        self._auth = authenticator
        self._limits = limits
        self.calls = Calls(service, limits)
        self._clock = time.perf_counter

    # -- shared prologue ----------------------------------------------------

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        try:
            return await self._auth.authenticate(
                context.invocation_metadata() or (), source_address(context.peer())
            )
        except Unauthenticated as exc:
            await _abort(context, exc.code, str(exc))

    async def _accept(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Caller, RequestSpec]:
        caller = await self._caller(context)
        await reject_undecodable(request, context)
        wire: WireRequest = request
        try:
            spec = validate_request(wire, caller.tenant, self._service.config)
            return caller, replace(spec, api_key=caller.key)  # the key's own budgets
        except InvalidRequest as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _call(
        self,
        name: str,
        context: grpc.aio.ServicerContext[Any, Any],
        caller: Caller,
        spec: RequestSpec,
        request_id: str,
        started: float,
    ) -> Call:
        deadline = self.calls.deadline(started, context.time_remaining())
        fail = functools.partial(self._fail, context)
        return Call(name, context.invocation_metadata(), caller, spec, request_id, started, deadline, fail)

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], request_id: str, exc: BaseException
    ) -> NoReturn:
        log_failure(request_id, exc)
        if not isinstance(exc, ServiceError):
            await _abort(context, grpc.StatusCode.INTERNAL, f"internal error (request_id={request_id})")
        if exc.attempts:
            context.set_trailing_metadata((("tierwise-attempts", json.dumps(exc.attempts_summary())),))
        if isinstance(exc, RetryLater):  # the delay after which the request would be admitted
            context.set_trailing_metadata(exc.trailing_metadata())
        await _abort(context, exc.code, f"{exc.public} (request_id={request_id})")

    # -- RPCs ---------------------------------------------------------------

    async def Route(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> pb.RouteDecision:
        started = self._clock()
        caller, spec = await self._accept(request, context)
        request_id = uuid.uuid4().hex
        accounting = self._service.accounting
        with accounting.request_span("Route", context.invocation_metadata()) as span:
            try:
                await self._limits.admission(caller, spec, None).acquire()  # RPM only
                prompt = await self._service.pipeline.prompt(spec)
                decision = await self._service.pipeline.route(spec, request_id, prompt)
            except Exception as exc:
                accounting.failed(spec, request_id, exc, started, span)
                await self._fail(context, request_id, exc)
            accounting.routed(spec, decision, started, span)
        return decision_pb(decision)

    async def Complete(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CompleteResponse:
        started = self._clock()
        caller, spec = await self._accept(request, context)
        call = self._call("Complete", context, caller, spec, uuid.uuid4().hex, started)
        return response_pb(await self.calls.complete(call))

    async def CompleteStream(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CompleteChunk]:
        started = self._clock()
        caller, spec = await self._accept(request, context)
        request_id = uuid.uuid4().hex
        stream = self.calls.stream(self._call("CompleteStream", context, caller, spec, request_id, started))
        async with contextlib.aclosing(stream):  # a caller that leaves closes it: what streamed is billed
            async for item in stream:
                if isinstance(item, Decision):
                    yield pb.CompleteChunk(request_id=request_id, decision=decision_pb(item))
                elif isinstance(item, StreamDelta):
                    yield delta_chunk(request_id, item)
                else:
                    yield pb.CompleteChunk(request_id=request_id, end=stream_end_pb(item))

    async def Feedback(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> pb.FeedbackAck:
        tenant = (await self._caller(context)).tenant
        await reject_undecodable(request, context)
        try:
            record = _feedback_record(request, tenant, self._service.config.limits)
        except InvalidRequest as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ledger = self._service.accounting.ledger
        if ledger is not None and await ledger.lookup(record.request_id, tenant) is None:
            await _abort(
                context, grpc.StatusCode.NOT_FOUND, "request_id: no request with this id for your tenant"
            )
        try:
            feedback_id = await self._service.feedback.record(record)
        except Exception as exc:
            await self._fail(context, record.request_id, exc)
        return pb.FeedbackAck(feedback_id=feedback_id, request_id=record.request_id)


def _feedback_record(request: pb.FeedbackRequest, tenant: str, limits: LimitsConfig) -> FeedbackRecord:
    if not request.request_id or len(request.request_id) > 128:
        raise InvalidRequest("request_id", "must be the request_id of an earlier response (1-128 characters)")
    check_printable("request_id", request.request_id)
    if not (math.isfinite(request.score) and 0.0 <= request.score <= 1.0):
        raise InvalidRequest("score", f"must be in [0, 1]; got {request.score}")
    if not 1 <= request.source <= len(SOURCES):  # proto3 enums are open: any int32 can arrive
        raise InvalidRequest("source", "must be APP, HUMAN or JUDGE")
    if len(request.comment) > 4096:
        raise InvalidRequest("comment", f"is {len(request.comment)} characters; the limit is 4096")
    check_printable("comment", request.comment, prose=True)
    max_metadata = limits.max_metadata_entries
    if len(request.metadata) > max_metadata:
        raise InvalidRequest("metadata", f"has {len(request.metadata)} entries; the limit is {max_metadata}")
    check_tags("metadata", request.metadata, limits.max_metadata_chars)
    return FeedbackRecord(
        request_id=request.request_id,
        tenant=tenant,
        score=request.score,
        source=SOURCES[request.source - 1],
        comment=request.comment,
        metadata=dict(request.metadata),
    )


def _handlers(servicer: RouterServicer) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Route": unary(servicer.Route, pb.RouteRequest, pb.RouteDecision),
            "Complete": unary(servicer.Complete, pb.CompleteRequest, pb.CompleteResponse),
            "Feedback": unary(servicer.Feedback, pb.FeedbackRequest, pb.FeedbackAck),
            "CompleteStream": grpc.unary_stream_rpc_method_handler(
                servicer.CompleteStream,
                request_deserializer=safe_deserializer(pb.CompleteRequest),
                response_serializer=pb.CompleteChunk.SerializeToString,
            ),
        },
    )


async def _stop_watcher(stop: asyncio.Event, watcher: asyncio.Task[None]) -> None:
    stop.set()
    await watcher


def _tls_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    try:
        key, cert = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
        ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    except OSError as exc:
        raise ConfigError(f"server.tls: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _scrape_access(service: Service, authenticator: Authenticator) -> ScrapeAccess:
    config = service.config
    return ScrapeAccess(
        config.metrics.scrape_key_sha256,
        authenticator if config.auth.mode == "api_key" else None,
        service.budgets.budget_tenants,  # the stored keys' budgets too
    )


class TierwiseServer:
    """A running gRPC server over a built ``Service``."""

    def __init__(self, service: Service, *, rate_clock: Callable[[], float] | None = None) -> None:
        """``rate_clock`` (seconds) is the rate limits' clock: tests freeze it (see ``RateLimitGate``)."""
        self.service = service
        config = service.config.server
        # The limit guards what callers send. An answer is paid for before it is sent, so a long
        # one is delivered rather than failed after the spend; a caller bounds it with max_tokens.
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        auth_failures = AuthFailureCounter(service.accounting.metrics.registry)
        self.keys = open_stored_keys(service.config, service.budgets)
        authenticator = Authenticator(service.config.auth, auth_failures.count, self.keys)
        config_keys = {key.label for key in service.config.auth.api_keys}
        registry = service.accounting.metrics.registry
        limits = RequestLimits(
            service.config, RateLimitGate.from_config(service.config, registry, rate_clock)
        )
        servicer = RouterServicer(service, authenticator, limits)
        self.http = (
            None if config.http_port is None else OpenAIFront(service.config, authenticator, servicer.calls)
        )
        self._server.add_generic_rpc_handlers(
            (
                _handlers(servicer),
                admin_handlers(
                    AdminServicer(service, authenticator),
                    key_handlers(KeyAdminServicer(self.keys, authenticator, config_keys)),
                ),
            )
        )
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                ADMIN_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0
        self._stopped = False
        self._grace_s = 0.0  # a failed start waits for no call: none was taken
        # The server owns the service from here: it is the first thing in, the last out.
        self._stack = contextlib.AsyncExitStack()
        self._stack.push_async_callback(service.aclose)
        self._stack.push_async_callback(limits.aclose)
        if self.keys is not None:
            self._stack.push_async_callback(self.keys.aclose)
        self.admin = (
            AdminServer(service.accounting.metrics, _scrape_access(service, authenticator))
            if config.metrics_port
            else None
        )
        if self.admin is not None:
            self.admin.add_refresher(self._refresh_budget_gauges)
            if service.accounting.ledger is not None:  # the dashboard reads the spend ledger
                traffic = service.accounting.learning.traffic
                dashboard = Dashboard(
                    service.accounting.ledger,
                    service.config,
                    authenticator,
                    service.feedback,
                    None if traffic is None else traffic.store,
                )
                dashboard.install(self.admin.app)

    async def _refresh_budget_gauges(self) -> None:
        metrics = self.service.accounting.metrics
        for usage in await self.service.budgets.usage():
            if usage.limit_usd is not None:
                metrics.set_budget(
                    usage.budget, usage.used_usd, usage.limit_usd - usage.used_usd - usage.in_flight_usd
                )

    async def start(self) -> int:
        """Start in order, each step on the server's exit stack as it opens; when one raises, the
        earlier ones and the service are closed, in reverse, before the error goes on."""
        async with self._stack:
            port = await self._open(self._stack)
            self._stack = self._stack.pop_all()  # started in full: closed by stop()
            return port

    async def _open(self, stack: contextlib.AsyncExitStack) -> int:
        config = self.service.config.server
        # Read first: a bad certificate is a config error, found before anything starts.
        credentials = None if config.tls is None else _tls_credentials(config.tls)
        ledger = self.service.accounting.ledger
        if ledger is not None:
            await ledger.start()  # stopped by service.aclose, at the bottom of the stack
            if self.service.config.anomaly.enabled:  # the checker reads the ledger
                anomalies = AnomalyChecker(
                    ledger, self.service.config.anomaly, metrics=self.service.accounting.metrics
                )
                anomalies.start()
                stack.push_async_callback(anomalies.aclose)
        await self.service.accounting.learning.start()  # stopped by service.aclose too
        if self.keys is not None:
            await self.keys.start()  # stopped by keys.aclose, pushed in __init__
        if self.admin is not None:
            self.metrics_port = await self.admin.start(config.host, config.metrics_port)
            stack.push_async_callback(self._stop_admin)
        serving, interval = (
            self.service.serving_model,
            self.service.config.routing.classifier.watch_interval_s,
        )
        if serving is not None and interval > 0:
            watch_stop = asyncio.Event()
            watcher = asyncio.create_task(serving.watch(interval, watch_stop))
            stack.push_async_callback(_stop_watcher, watch_stop, watcher)
        if self.http is not None:  # stopped before the rest, as gRPC is
            self.http_port = await self.http.start(config.host, config.http_port or 0)
            stack.push_async_callback(self.http.stop)
        # Bound last, so that it is stopped first: no call arrives while the rest closes.
        stack.push_async_callback(self._stop_grpc)  # also releases a port a later step failed after
        address = f"{config.host}:{config.port}"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.host}:{config.port}")
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"host": config.host, "port": self.port})
        return self.port

    async def _stop_grpc(self) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace_s)

    async def _stop_admin(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish within the grace period, then close."""
        if self._stopped:
            return
        self._stopped = True
        self._grace_s = self.service.config.server.grace_period_s if grace_s is None else grace_s
        await self._stack.aclose()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def serve_forever(service: Service) -> None:
    server = TierwiseServer(service)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if server.keys is not None:  # SIGHUP: read the stored keys now
        loop.add_signal_handler(signal.SIGHUP, server.keys.request_refresh)
    await stopping.wait()
    log.info("shutting down", extra={"grace_s": service.config.server.grace_period_s})
    await server.stop()
