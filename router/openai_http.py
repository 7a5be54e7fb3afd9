"""The OpenAI-compatible HTTP front (``server.http_port``): ``POST /v1/chat/completions`` (JSON, or
server-sent events with ``stream: true``), ``GET /v1/models`` and ``GET /v1/models/{model}``.

It is a second door to the same request path as the gRPC front: the same ``Authenticator`` (and its
per-address throttle), a body read into the same ``CompleteRequest`` and checked by the same
``validate_request``, then ``Calls`` (rate limits, pipeline, accounting) as ``Complete`` runs it.
Only the wire differs. aiohttp serves it: the project already depends on it for the admin HTTP
server, it streams responses natively and runs on the process's event loop, so no second server
stack (Starlette/uvicorn) is needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any, NoReturn, cast

from aiohttp import web

from tierwise.router.auth import Authenticator, Caller, Unauthenticated
from tierwise.router.calls import Call, Calls, StreamItem, log_failure
from tierwise.router.config import Config, ConfigError, TlsConfig
from tierwise.router.field_checks import InvalidRequest
from tierwise.router.openai_render import (
    ChunkWriter,
    HttpFailure,
    completion_body,
    completion_headers,
    decision_headers,
    error,
    failure,
    invalid,
    sse,
    unauthenticated,
)
from tierwise.router.openai_schema import AUTO_MODEL, UnknownModel, read_chat
from tierwise.router.outcome import Completion, Decision, StreamDelta
from tierwise.router.validation import WireRequest, validate_request

log = logging.getLogger("tierwise.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAT_PATH = "/v1/chat/completions"


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The gRPC port's certificate (and client CA, for mutual TLS) on the HTTP port too."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as exc:  # before OSError, its base: a file that is not a certificate or key
        raise ConfigError(f"server.tls: the certificate or key is unusable: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"server.tls: cannot read {exc.filename}: {exc.strerror}") from None
    return context


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal in the OpenAI error shape, aiohttp's own (404, 405, 413) included."""
    try:
        return await handler(request)
    except HttpFailure as exc:
        return web.json_response(exc.body, status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        message = f"{request.method} {request.path}: {exc.reason}"
        allow = {"allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # 405 says what would do
        return web.json_response(error(kind, message), status=exc.status, headers=allow)


class OpenAIFront:
    def __init__(self, config: Config, authenticator: Authenticator, calls: Calls) -> None:
        self._config = config
        self._auth = authenticator
        self._calls = calls
        self._clock = time.perf_counter
        names = config.tier_names
        if AUTO_MODEL in names:
            raise ConfigError(f"tiers[{names.index(AUTO_MODEL)}].name: {AUTO_MODEL!r} names the routed model")
        self.app = web.Application(
            middlewares=[_openai_errors], client_max_size=config.server.max_message_bytes
        )
        self.app.router.add_post(CHAT_PATH, self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/v1/models/{model}", self._model)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the bound port."""
        server = self._config.server
        ssl_context = None if server.tls is None else tls_context(server.tls)
        # A caller that leaves cancels its handler, as gRPC cancels a call: what it used is billed.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=server.grace_period_s
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("serving HTTP", extra={"host": host, "port": self.port})
        return self.port

    async def stop(self) -> None:
        """Stop listening; requests in flight get ``server.grace_period_s`` to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the prologue every route shares -------------------------------------

    async def _caller(self, request: web.Request) -> Caller:
        metadata = [("authorization", value) for value in request.headers.getall("Authorization", [])]
        try:
            # authenticate, not caller_for: a stored key created a moment ago works at once here too
            return await self._auth.authenticate(metadata, request.remote or "")
        except Unauthenticated as exc:
            raise unauthenticated(exc) from None

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read(), object_pairs_hook=_no_repeated_keys)
        except web.HTTPRequestEntityTooLarge:
            limit = self._config.server.max_message_bytes
            raise HttpFailure(
                413, error("invalid_request_error", f"body: is over {limit} bytes (server.max_message_bytes)")
            ) from None
        except RecursionError:
            raise invalid("body", "body: nests too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a repeated key
            raise invalid("body", f"body: is not valid JSON: {exc}") from None

    # -- routes ---------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        await self._caller(request)
        return web.json_response({"object": "list", "data": [_model(m) for m in self._model_names()]})

    async def _model(self, request: web.Request) -> web.Response:
        await self._caller(request)
        name = request.match_info["model"]
        if name not in self._model_names():
            raise _unknown_model(UnknownModel(name, self._model_names()))
        return web.json_response(_model(name))

    def _model_names(self) -> list[str]:
        return [AUTO_MODEL, *self._config.tier_names]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = self._clock()
        caller = await self._caller(request)
        body = await self._body(request)
        try:
            call = read_chat(body, request.headers, self._config.tier_names)
        except UnknownModel as exc:
            raise _unknown_model(exc) from None
        except InvalidRequest as exc:
            raise invalid(exc.field, str(exc)) from None
        try:
            # The message gRPC would have received, checked by the same code.
            spec = validate_request(cast(WireRequest, call.request), caller.tenant, self._config)
        except InvalidRequest as exc:  # named as the proto names it: renamed as the body spelt it
            named = call.names.public(exc)
            raise invalid(named.field, str(named)) from None
        spec = replace(spec, api_key=caller.key)  # the key's own budgets
        metadata = [(name.lower(), value) for name, value in request.headers.items()]  # trace context
        deadline = self._calls.deadline(started, None)
        name = "ChatCompletionsStream" if call.stream else "ChatCompletions"  # the request's span
        accepted = Call(name, metadata, caller, spec, uuid.uuid4().hex, started, deadline, _fail)
        if not call.stream:
            completion = await self._calls.complete(accepted)
            return web.json_response(
                completion_body(completion, int(time.time())), headers=completion_headers(completion)
            )
        return await _stream(request, self._calls.stream(accepted), call.include_usage)


async def _stream(
    request: web.Request, stream: AsyncGenerator[StreamItem, None], include_usage: bool
) -> web.StreamResponse:
    """Server-sent events. The status and headers wait for the first delta, so a request that fails
    before any text (every tier down, a budget refusal) gets its HTTP error status, not a 200."""
    response: web.StreamResponse | None = None
    writer: ChunkWriter | None = None
    async with contextlib.aclosing(stream):  # a caller that leaves closes it: what streamed is billed
        try:
            async for item in stream:
                if isinstance(item, Decision):
                    writer = ChunkWriter(item, int(time.time()))
                    continue
                assert writer is not None  # the pipeline yields the decision first
                if response is None:
                    response = await _open_events(request, item, writer)
                if isinstance(item, StreamDelta):
                    await response.write(writer.delta(item))
                elif isinstance(item, Completion):
                    await response.write(writer.closing(item, include_usage))
        except HttpFailure as exc:
            if response is None:
                raise
            await response.write(sse(exc.body))  # the SDKs raise an error event as an APIError
    assert response is not None  # a stream ends with its completion
    await response.write_eof()
    return response


async def _open_events(
    request: web.Request, first: StreamDelta | Completion, writer: ChunkWriter
) -> web.StreamResponse:
    decision = first.decision if isinstance(first, Completion) else writer.decision
    headers = {"content-type": "text/event-stream", "cache-control": "no-cache", **decision_headers(decision)}
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    await response.write(writer.opening())
    return response


async def _fail(request_id: str, exc: BaseException) -> NoReturn:
    log_failure(request_id, exc)
    raise failure(exc, request_id)


def _unknown_model(exc: UnknownModel) -> HttpFailure:
    return HttpFailure(404, error("invalid_request_error", str(exc), param="model", code="model_not_found"))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tierwise"}


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key sent twice would have one of its values dropped: refused instead."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key[:64]!r} appears twice in one object")
        out[key] = value
    return out
