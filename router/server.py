"""The gRPC front door: authentication, validation, status mapping, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
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
from tierwise.router.call_progress import CallProgress, PromptTokens
from tierwise.router.config import Config, ConfigError, LimitsConfig, TlsConfig
from tierwise.router.errors import RequestCancelled, RetryLater, ServiceError
from tierwise.router.feedback.store import SOURCES, FeedbackRecord
from tierwise.router.field_checks import check_printable, check_tags
from tierwise.router.observability.admin_http import AdminServer
from tierwise.router.observability.anomaly import AnomalyChecker
from tierwise.router.observability.logs import prompt_field
from tierwise.router.observability.metrics import AuthFailureCounter
from tierwise.router.observability.scrape_access import ScrapeAccess
from tierwise.router.outcome import Completion, Decision, StreamDelta
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
        self._clock = time.perf_counter

    # -- shared prologue ----------------------------------------------------

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        try:
            return self._auth.caller_for(context.invocation_metadata() or (), source_address(context.peer()))
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

    async def _prompt(
        self, spec: RequestSpec, context: grpc.aio.ServicerContext[Any, Any], request_id: str
    ) -> PromptTokens:
        """Counted by the request workers before the rate limits' token estimate reads it. Too long
        (INVALID_ARGUMENT) or no worker free (RESOURCE_EXHAUSTED): refused like a bad field, unbooked."""
        try:
            return await self._service.pipeline.prompt(spec)
        except ServiceError as exc:
            await self._fail(context, request_id, exc)

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any], started: float) -> float:
        remaining = context.time_remaining()
        default = self._service.config.server.default_timeout_s
        if remaining is None or math.isinf(remaining):
            return started + default
        return started + min(float(remaining), default)

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], request_id: str, exc: BaseException
    ) -> NoReturn:
        if isinstance(exc, ServiceError):
            if exc.attempts:
                attempts = [
                    {"tier": a.tier, "error_type": a.error_type, "error": a.error} for a in exc.attempts
                ]
                context.set_trailing_metadata((("tierwise-attempts", json.dumps(attempts)),))
            if isinstance(exc, RetryLater):  # the delay after which the request would be admitted
                context.set_trailing_metadata(exc.trailing_metadata())
            log.warning(
                "request failed",
                extra={"request_id": request_id, "code": exc.code.name, "error": exc.message},
            )
            await _abort(context, exc.code, f"{exc.public} (request_id={request_id})")
        log.exception("internal error", extra={"request_id": request_id})
        await _abort(context, grpc.StatusCode.INTERNAL, f"internal error (request_id={request_id})")

    def _log_done(self, spec: RequestSpec, completion: Completion) -> None:
        log.info(
            "completed",
            extra={
                "request_id": completion.decision.request_id,
                "tenant": spec.tenant,
                "feature": spec.feature,
                "tier": completion.decision.tier,
                "reason": completion.decision.reason,
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
                "cost_usd": str(completion.cost_usd),
                "total_ms": round(completion.latency.total_ms, 3),
                "overhead_ms": round(completion.latency.overhead_ms, 3),
                **prompt_field(spec.last_user_text, self._service.config.server.log_prompts),
            },
        )

    # -- RPCs ---------------------------------------------------------------

    async def Route(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> pb.RouteDecision:
        started = self._clock()
        caller, spec = await self._accept(request, context)
        request_id = uuid.uuid4().hex
        accounting = self._service.accounting
        with accounting.request_span("Route", context.invocation_metadata()) as span:
            try:
                await self._limits.admission(caller, spec, calls_tiers=False).acquire()
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
        request_id = uuid.uuid4().hex
        accounting = self._service.accounting
        progress = CallProgress()
        prompt = await self._prompt(spec, context, request_id)
        admission = self._limits.admission(caller, spec, prompt)
        with accounting.request_span("Complete", context.invocation_metadata()) as span:
            try:
                await admission.acquire()
                completion = await self._service.pipeline.complete(
                    spec,
                    request_id,
                    started=started,
                    deadline=self._deadline(context, started),
                    progress=progress,
                    prompt=prompt,
                )
            except asyncio.CancelledError:
                # The caller left: the upstream call in flight still costs its prompt, and an answer
                # already charged to the budget costs what it was charged (progress says which).
                accounting.failed(spec, request_id, _cancelled(), started, span, progress.billed())
                raise
            except Exception as exc:
                accounting.failed(spec, request_id, exc, started, span, progress.billed())
                await self._fail(context, request_id, exc)
            finally:
                admission.settle(progress.billed())  # the TPM buckets get what the estimate overstated
            accounting.completed(spec, completion, span)
        self._log_done(spec, completion)
        return response_pb(completion)

    async def CompleteStream(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CompleteChunk]:
        started = self._clock()
        caller, spec = await self._accept(request, context)
        request_id = uuid.uuid4().hex
        accounting = self._service.accounting
        progress = CallProgress()
        prompt = await self._prompt(spec, context, request_id)
        deadline = self._deadline(context, started)
        stream = self._service.pipeline.stream(
            spec, request_id, started=started, deadline=deadline, progress=progress, prompt=prompt
        )
        with accounting.request_span("CompleteStream", context.invocation_metadata()) as span:
            booked = False  # one spend record per request, even if the caller leaves after the last one
            admission = self._limits.admission(caller, spec, prompt)
            try:
                await admission.acquire()
                async with contextlib.aclosing(stream):
                    async for item in stream:
                        if isinstance(item, Decision):
                            yield pb.CompleteChunk(request_id=request_id, decision=decision_pb(item))
                        elif isinstance(item, StreamDelta):
                            yield delta_chunk(request_id, item)
                        else:
                            accounting.completed(spec, item, span)
                            booked = True
                            self._log_done(spec, item)
                            yield pb.CompleteChunk(request_id=request_id, end=stream_end_pb(item))
            except (asyncio.CancelledError, GeneratorExit):
                # The caller left mid-stream: what the tier streamed until then is billed, or what
                # the budget was charged if the answer was complete (progress says which).
                if not booked:
                    accounting.failed(spec, request_id, _cancelled(), started, span, progress.billed())
                raise
            except Exception as exc:
                accounting.failed(spec, request_id, exc, started, span, progress.billed())
                await self._fail(context, request_id, exc)
            finally:
                admission.settle(progress.billed())

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


def _cancelled() -> RequestCancelled:
    return RequestCancelled("the caller cancelled the call")


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


def _scrape_access(config: Config, authenticator: Authenticator) -> ScrapeAccess:
    return ScrapeAccess(
        config.metrics.scrape_key_sha256,
        authenticator if config.auth.mode == "api_key" else None,
        {budget.name: budget.tenant for budget in config.budgets},
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
        authenticator = Authenticator(service.config.auth, auth_failures.count)
        registry = service.accounting.metrics.registry
        limits = RequestLimits(
            service.config, RateLimitGate.from_config(service.config, registry, rate_clock)
        )
        self._server.add_generic_rpc_handlers(
            (
                _handlers(RouterServicer(service, authenticator, limits)),
                admin_handlers(AdminServicer(service, authenticator)),
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
        self._stopped = False
        self._grace_s = 0.0  # a failed start waits for no call: none was taken
        # The server owns the service from here: it is the first thing in, the last out.
        self._stack = contextlib.AsyncExitStack()
        self._stack.push_async_callback(service.aclose)
        self._stack.push_async_callback(limits.aclose)
        self.admin = (
            AdminServer(service.accounting.metrics, _scrape_access(service.config, authenticator))
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
    await stopping.wait()
    log.info("shutting down", extra={"grace_s": service.config.server.grace_period_s})
    await server.stop()
