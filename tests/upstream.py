"""A scripted upstream LLM server for tests: a real aiohttp HTTP server on a free
127.0.0.1 port that speaks both wire protocols tierwise calls, on their real paths:

- OpenAI Chat Completions: ``POST /v1/chat/completions`` (JSON, or SSE with ``stream``;
  the usage chunk only when ``stream_options.include_usage`` asks for it);
- Anthropic Messages: ``POST /v1/messages`` (JSON, or SSE events with ``stream``);
- Azure OpenAI: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``
  (the OpenAI shapes; like Azure, 404 without ``api-version``, which is then not recorded).

Each reply follows a ``Script`` chosen by the request's model name (or the default one):
its text, its usage numbers, or a failure — an HTTP error status, a 429 with Retry-After,
latency, slow first token, slow chunks, a hang, a dropped connection, an error event.
Every request is recorded (headers and JSON body) so tests can assert on what was sent.

In an async test::

    async with ScriptedUpstream() as upstream:
        upstream.script(text="Paris.", input_tokens=12)            # every model
        upstream.script("big-model", status=503)                     # one model
        OpenAIProvider(upstream.openai_url) ...                      # http://127.0.0.1:PORT/v1
        AnthropicProvider(upstream.base_url) ...                     # http://127.0.0.1:PORT
        upstream.requests[-1].body["model"]

In a sync test (the server runs in its own thread and event loop)::

    with serve_in_thread() as upstream:
        ...

Like the real APIs it rejects malformed requests with 400 (OpenAI: no model/messages;
Anthropic: no ``max_tokens``, no ``anthropic-version`` header, a ``system`` role inside
``messages``) and, when built with ``api_key``, a wrong or missing key with 401
(``Authorization: Bearer`` for OpenAI, ``x-api-key`` for Anthropic, ``api-key`` for Azure).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.upstream_wire import AnthropicWire, AzureOpenAIWire, OpenAIWire, Reply, Usage, Wire

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
AZURE_PATH = "/openai/deployments/{deployment}/chat/completions"


@dataclass(frozen=True)
class Script:
    """How the upstream answers. Chunk counts refer to the text chunks of a stream (the reply
    is streamed one word, with the whitespace after it, per chunk); "after N chunks" happens once N text
    chunks were sent, so N=0 is before any text."""

    text: str = "Hello from the scripted upstream."
    # Verbatim finish_reason (OpenAI) or stop_reason (Anthropic); None: "stop" / "end_turn", or
    # "tool_calls" / "tool_use" when the reply calls tools.
    finish_reason: str | None = None
    # Tool calls the reply makes, after its text, as (id, name, arguments JSON). Streamed, a call's
    # first piece carries its id and name and its arguments follow in two pieces (OpenAI
    # tool_calls deltas; Anthropic tool_use blocks with input_json_delta events).
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    # Usage, in the protocol-neutral sense: input_tokens is the whole prompt, cached_tokens the
    # part read from the prompt cache; None counts whitespace-separated words (prompt, reply).
    # Anthropic reports input_tokens - cached - cache_creation as its input_tokens.
    report_usage: bool = True
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    cache_creation_tokens: int = 0  # Anthropic only
    # Keep to the request's max_tokens, as real upstreams do: report at most that many output
    # tokens, finishing with the protocol's length reason when it cut the reply short.
    honour_max_tokens: bool = False
    # Failures before any reply.
    status: int = 200  # another status answers with that protocol's JSON error body
    error_message: str = "scripted upstream error"
    retry_after: str | None = None  # a Retry-After header value, sent with any status
    raw_body: str | None = None  # sent verbatim as the whole body (with ``status``) instead of a reply
    latency_s: float = 0.0  # before the response headers
    hang: bool = False  # never answer; the request stays open until the server stops
    release: asyncio.Event | None = None  # answer only once the test sets this event (same event loop)
    # Streaming behaviour.
    ttft_s: float = 0.0  # between the response headers and the first event
    chunk_delay_s: float = 0.0  # before each text chunk after the first
    drop_after: int | None = None  # close the connection mid-body after N chunks
    end_after: int | None = None  # end the body cleanly after N chunks, without a finish
    error_event_after: int | None = None  # send the protocol's error event after N chunks
    error_event_status: int = 500  # the HTTP-like status that error event stands for


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: Mapping[str, str]  # names lower-cased
    body: Any  # the parsed JSON body (None when it was not JSON)
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


class ScriptedUpstream:
    """See the module docstring. ``script``/``reset`` may be called from any thread."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._default = Script()
        self._by_model: dict[str, Script] = {}
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    # -- control -------------------------------------------------------------------------------

    def script(self, model: str | None = None, /, **fields: Any) -> Script:
        """Answer ``model`` (every model without its own script, when None) by ``Script(**fields)``.
        A model's script replaces the default one entirely; it is not merged with it."""
        script = Script(**fields)
        if model is None:
            self._default = script
        else:
            self._by_model[model] = script
        return script

    def reset(self) -> None:
        """Forget all scripts and recorded requests."""
        self._default = Script()
        self._by_model.clear()
        self.requests.clear()

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    @property
    def base_url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT`` (what an Anthropic client takes)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """``base_url`` + ``/v1`` (what an OpenAI-compatible client takes)."""
        return self.base_url + "/v1"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post(OPENAI_PATH, self._handle_openai)
        app.router.add_post(ANTHROPIC_PATH, self._handle_anthropic)
        app.router.add_post(AZURE_PATH, self._handle_azure)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()  # releases hanging and delayed handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedUpstream:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- request handling ----------------------------------------------------------------------

    async def _handle_openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, OpenAIWire())

    async def _handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, AnthropicWire())

    async def _handle_azure(self, request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            return _json(404, {"error": {"code": "404", "message": "Resource not found"}})
        return await self._handle(request, AzureOpenAIWire())

    async def _handle(self, request: web.Request, wire: Wire) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.path, headers, body, dict(request.query)))
        if not isinstance(body, dict):
            return _json(400, wire.error_body(400, "the request body is not a JSON object"))
        if self.api_key is not None and wire.api_key(headers) != self.api_key:
            return _json(401, wire.error_body(401, "invalid API key"))
        problem = wire.invalid(headers, body)
        if problem:
            return _json(400, wire.error_body(400, problem))
        script = self._by_model.get(str(body.get("model")), self._default)
        if script.hang:
            await self._pause(None)
            return web.Response(status=503)
        if script.release is not None:
            await script.release.wait()
        if not await self._pause(script.latency_s):
            return web.Response(status=503)
        extra = {"retry-after": script.retry_after} if script.retry_after is not None else {}
        stream = bool(body.get("stream"))
        if script.raw_body is not None:
            content_type = "text/event-stream" if stream and script.status == 200 else "application/json"
            return web.Response(
                text=script.raw_body, status=script.status, content_type=content_type, headers=extra
            )
        if script.status != 200:
            return _json(script.status, wire.error_body(script.status, script.error_message), extra)
        chunks = [c for c in re.split(r"(?<=\s)(?=\S)", script.text) if c]
        usage = _usage(script, body, chunks)
        bound = body.get("max_tokens")
        cut = script.honour_max_tokens and isinstance(bound, int) and usage.output_tokens > bound
        if cut:
            usage = dataclasses.replace(usage, output_tokens=bound)
        finish = wire.tool_finish if script.tool_calls else wire.default_finish
        reply = Reply(
            model=str(body["model"]),
            chunks=chunks,
            finish_reason=wire.length_finish if cut else script.finish_reason or finish,
            usage=usage if script.report_usage else None,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            tool_calls=script.tool_calls,
        )
        if not stream:
            return _json(200, wire.message(reply), extra)
        return await self._stream(request, wire, script, reply)

    async def _stream(
        self, request: web.Request, wire: Wire, script: Script, reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        if not await self._pause(script.ttft_s):
            return response
        for frame in wire.stream_head(reply):
            await response.write(frame.encode())
        for sent in range(len(reply.chunks) + 1):
            if sent == script.drop_after:
                # Closing the socket mid-body: the chunked encoding never gets its last chunk.
                assert request.transport is not None
                request.transport.close()
                return response
            if sent == script.end_after:
                await response.write_eof()
                return response
            if sent == script.error_event_after:
                for frame in wire.stream_error(script.error_event_status, script.error_message):
                    await response.write(frame.encode())
                await response.write_eof()
                return response
            if sent == len(reply.chunks):
                break
            if sent > 0 and not await self._pause(script.chunk_delay_s):
                return response
            await response.write(wire.stream_delta(reply, reply.chunks[sent]).encode())
        for frame in [*wire.stream_tool_calls(reply), *wire.stream_tail(reply)]:
            await response.write(frame.encode())
        await response.write_eof()
        return response

    async def _pause(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: until the server stops); False when the server is stopping."""
        assert self._stopping is not None
        if seconds is not None and seconds <= 0:
            return not self._stopping.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()


@contextlib.contextmanager
def serve_in_thread(*, api_key: str | None = None) -> Iterator[ScriptedUpstream]:
    """A started ``ScriptedUpstream`` running in its own thread and event loop, for sync tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scripted-upstream", daemon=True)
    thread.start()
    upstream = ScriptedUpstream(api_key=api_key)
    try:
        asyncio.run_coroutine_threadsafe(upstream.start(), loop).result(timeout=10)
        yield upstream
    finally:
        try:
            asyncio.run_coroutine_threadsafe(upstream.stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


# -- the reply's usage (the protocols' reply shapes are in tests/upstream_wire.py) ----------------------


def _usage(script: Script, body: dict[str, Any], chunks: list[str]) -> Usage:
    words = 0
    for message in body.get("messages") or []:
        words += len(_text_of(message.get("content") if isinstance(message, dict) else None).split())
    words += len(_text_of(body.get("system")).split())
    return Usage(
        input_tokens=words if script.input_tokens is None else script.input_tokens,
        output_tokens=len(chunks) if script.output_tokens is None else script.output_tokens,
        cached_tokens=script.cached_tokens,
        cache_creation_tokens=script.cache_creation_tokens,
    )


def _text_of(content: Any) -> str:
    """Message content as text: a string, or a list of content blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return ""


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(payload, status=status, headers=headers)


__all__ = ["RecordedRequest", "Script", "ScriptedUpstream", "serve_in_thread"]
