"""``tierwise replay-upstream``: recorded answers of real models, served over the OpenAI chat protocol.

Given RouterBench CSVs, ``POST /v1/chat/completions`` finds the request's prompt
among the recorded prompts and answers with what the requested model actually
said, with token usage counted by tiktoken, streaming or not. The whole service
can then run unchanged, and for free, against real model behaviour.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage
from tierwise.training.routerbench import PART_SEPARATOR, RouterBenchFormatError, RouterBenchRow, load_rows

STREAM_CHUNK_TOKENS = 4
_MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ReplayLookupError(LookupError):
    """The recording holds no answer for a request; ``code`` is the OpenAI-style error code."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    sample_id: str
    model: str  # the dataset's model name
    text: str
    score: float | None
    cost_usd: float | None


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


class RecordedAnswers:
    """Index of recorded rows by prompt text (surrounding whitespace ignored) and by model name."""

    def __init__(self, rows: Sequence[RouterBenchRow]) -> None:
        self._by_prompt: dict[str, list[RouterBenchRow]] = {}
        models: dict[str, None] = {}
        for row in rows:
            self._by_prompt.setdefault(row.prompt.strip(), []).append(row)
            models.update(dict.fromkeys(row.scores))
            models.update(dict.fromkeys(row.responses))
        self.models = tuple(models)
        short: dict[str, list[str]] = {}
        for model in self.models:
            short.setdefault(model.rsplit("/", 1)[-1], []).append(model)
        # A name after the last '/' is accepted only where it names one model.
        self._aliases = {alias: names[0] for alias, names in short.items() if len(names) == 1}
        self._aliases.update({m: m for m in self.models})

    @property
    def prompt_count(self) -> int:
        return len(self._by_prompt)

    def resolve_model(self, name: str) -> str:
        model = self._aliases.get(name)
        if model is None:
            raise ReplayLookupError(
                f"model {name!r} is not in the recorded data; known models: {', '.join(self.models)}",
                "model_not_found",
                "model",
            )
        return model

    def find_rows(self, prompt: str | Sequence[ChatMessage]) -> list[RouterBenchRow]:
        """Rows recorded for a prompt: the text itself, or the last user message, else all user messages."""
        if isinstance(prompt, str):
            candidates = [prompt]
        else:
            users = [m.content for m in prompt if m.role == "user"]
            candidates = [users[-1], PART_SEPARATOR.join(users)] if users else []
        for candidate in candidates:
            rows = self._by_prompt.get(candidate.strip())
            if rows:
                return rows
        looked_for = _excerpt(candidates[0]) if candidates else "(no user message)"
        raise ReplayLookupError(
            f"no recorded prompt matches the last user message or the joined user messages: {looked_for}",
            "prompt_not_found",
            "messages",
        )

    def answer(self, prompt: str | Sequence[ChatMessage], model: str) -> RecordedAnswer:
        canonical = self.resolve_model(model)
        rows = self.find_rows(prompt)
        for row in rows:
            if canonical in row.responses:
                return RecordedAnswer(
                    sample_id=row.sample_id,
                    model=canonical,
                    text=row.responses[canonical],
                    score=row.scores.get(canonical),
                    cost_usd=row.costs.get(canonical),
                )
        raise ReplayLookupError(
            f"model {canonical!r} has no recorded response for sample {rows[0].sample_id!r}",
            "response_not_found",
            "model",
        )

    def recorded_score(self, prompt: str | Sequence[ChatMessage], model: str) -> float | None:
        """The recorded score of ``model`` on ``prompt``; None where the dataset has no score."""
        canonical = self.resolve_model(model)
        for row in self.find_rows(prompt):
            score = row.scores.get(canonical)
            if score is not None:
                return score
        return None


class _BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _error(status: int, message: str, code: str | None, param: str | None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


def _content_text(content: object, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return PART_SEPARATOR.join(t for t in texts if isinstance(t, str))
    raise _BadRequest(f"messages[{index}].content must be a string or a list of text parts", "messages")


def _parse_messages(value: object) -> list[ChatMessage]:
    if not isinstance(value, list) or not value:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise _BadRequest(f"messages[{i}] must be an object with a string 'role'", "messages")
        messages.append(ChatMessage(role=item["role"], content=_content_text(item.get("content"), i)))
    return messages


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    model: str
    messages: list[ChatMessage]
    stream: bool
    include_usage: bool
    max_tokens: int | None


def _parse_request(body: object) -> _ChatRequest:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' must be a non-empty string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    return _ChatRequest(model, _parse_messages(body.get("messages")), stream, include_usage, max_tokens)


class ReplayUpstream:
    """The replay server: ``async with serve()`` in a running loop, or ``start()``/``stop()`` on a thread."""

    def __init__(
        self,
        rows: Sequence[RouterBenchRow],
        *,
        latency_ms: float = 0.0,
        token_counter: TokenCounter | None = None,
        stream_chunk_tokens: int = STREAM_CHUNK_TOKENS,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms cannot be negative")
        if stream_chunk_tokens < 1:
            raise ValueError("stream_chunk_tokens must be at least 1")
        self.answers = RecordedAnswers(rows)
        self._latency_s = latency_ms / 1000
        self._counter = token_counter or TokenCounter()
        self._chunk_tokens = stream_chunk_tokens
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self.base_url: str | None = None  # "http://host:port/v1" while serving

    @classmethod
    def from_data_dir(cls, data_dir: Path, **options: Any) -> ReplayUpstream:
        """Load every ``*.csv`` in ``data_dir`` (or in its ``routerbench/`` folder when it holds none)."""
        data_dir = Path(data_dir)
        nested = data_dir / "routerbench"
        if data_dir.is_dir() and not any(data_dir.glob("*.csv")) and nested.is_dir():
            data_dir = nested
        return cls(load_rows(data_dir), **options)

    def lookup(self, prompt: str | Sequence[ChatMessage], model: str) -> RecordedAnswer:
        return self.answers.answer(prompt, model)

    def recorded_score(self, prompt: str | Sequence[ChatMessage], model: str) -> float | None:
        return self.answers.recorded_score(prompt, model)

    def preload(self) -> None:
        """Load the tokenizers the recorded models need, so the first request is not slow."""
        self._counter.preload(sorted({self._counter.encoding_for_model(m) for m in self.answers.models}))

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_REQUEST_BYTES)
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
            app.router.add_get(f"{prefix}/models", self._models)
        app.router.add_get("/healthz", self._health)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "routerbench"} for m in self.answers.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "prompts": self.answers.prompt_count, "models": list(self.answers.models)}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            try:
                body = await request.json()
            except ValueError:
                raise _BadRequest("the request body is not valid JSON") from None
            chat = _parse_request(body)
        except _BadRequest as exc:
            return _error(400, exc.message, None, exc.param)
        try:
            answer = self.answers.answer(chat.messages, chat.model)
        except ReplayLookupError as exc:
            return _error(404, exc.message, exc.code, exc.param)
        if self._latency_s:
            await asyncio.sleep(self._latency_s)  # simulated upstream latency
        encoding = self._counter.encoding(self._counter.encoding_for_model(answer.model))
        tokens = encoding.encode_ordinary(answer.text)
        text, finish = answer.text, "stop"
        if chat.max_tokens is not None and len(tokens) > chat.max_tokens:
            tokens = tokens[: chat.max_tokens]
            text, finish = encoding.decode(tokens), "length"
        prompt_tokens = self._counter.count_messages(chat.messages, answer.model)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        completion_id = f"chatcmpl-replay-{uuid.uuid4().hex}"
        if not chat.stream:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": answer.model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        pieces = _pieces(tokens, encoding.decode_bytes, self._chunk_tokens)
        return await _stream(
            request, completion_id, answer.model, pieces, finish, usage if chat.include_usage else None
        )

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve in the running event loop; yields the base URL ``http://host:port/v1``."""
        await asyncio.to_thread(self.preload)
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            self.base_url = f"http://{_url_host(str(bound_host))}:{bound_port}/v1"
            yield self.base_url
        finally:
            self.base_url = None
            await runner.cleanup()

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0) -> str:
        """Serve on a background thread; returns the base URL once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the replay server is already running")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            stop = asyncio.Event()
            self._stop_event = stop
            try:
                async with self.serve(host, port):
                    started.set()
                    await stop.wait()
            except BaseException as exc:
                failure.append(exc)
                raise

        def run() -> None:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(main())
            loop.close()
            started.set()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="replay-upstream", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError(f"the replay server did not start within {timeout_s} s")
        if failure or self.base_url is None:
            self._thread.join(timeout_s)
            self._thread = self._loop = None
            raise RuntimeError(
                f"the replay server failed to start on {host}:{port}: {failure[0] if failure else ''}"
            )
        return self.base_url

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop a server started with ``start``; a no-op when none runs."""
        if self._thread is None or self._loop is None or self._stop_event is None:
            return
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the replay server did not stop within {timeout_s} s")
        self._thread = self._loop = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _pieces(
    tokens: Sequence[int], decode_bytes: Callable[[Sequence[int]], bytes], per_chunk: int
) -> Iterator[str]:
    # A chunk boundary can split a multi-byte character; the incremental decoder carries it over.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for start in range(0, len(tokens), per_chunk):
        piece = decoder.decode(decode_bytes(tokens[start : start + per_chunk]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


async def _stream(
    request: web.Request,
    completion_id: str,
    model: str,
    pieces: Iterator[str],
    finish: str,
    usage: dict[str, int] | None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    created = int(time.time())

    def chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if usage is not None:
            event["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return event

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events.extend(chunk({"content": piece}, None) for piece in pieces)
    events.append(chunk({}, finish))
    if usage is not None:
        last = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        events.append({**last, "choices": [], "usage": usage})
    try:
        for event in events:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream; nothing is left to tell it
    return response


def run_replay_upstream(
    data_dir: Path, host: str = "127.0.0.1", port: int = 8900, latency_ms: float = 0.0
) -> None:
    """Serve until interrupted; prints one line with the base URL once listening."""
    upstream = ReplayUpstream.from_data_dir(data_dir, latency_ms=latency_ms)
    upstream.preload()
    summary = f"{upstream.answers.prompt_count} prompts, {len(upstream.answers.models)} models"

    def announce(_banner: str) -> None:
        print(f"replay-upstream: {summary} on http://{_url_host(host)}:{port}/v1", flush=True)

    web.run_app(upstream.make_app(), host=host, port=port, print=announce, access_log=None)


def replay_upstream_command(data: Path, port: int, host: str = "127.0.0.1", latency_ms: float = 0) -> None:
    """The CLI's ``tierwise replay-upstream``: errors become a message on stderr and exit status 2."""
    try:
        run_replay_upstream(Path(data), host=host, port=port, latency_ms=latency_ms)
    except (OSError, RouterBenchFormatError, ValueError) as exc:
        print(f"replay-upstream: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
