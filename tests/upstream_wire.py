"""The wire protocols the scripted upstream (``tests/upstream.py``) speaks: each one's error
bodies and reply shapes, unary and streamed (text, usage, tool calls)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_creation_tokens: int


@dataclass(frozen=True)
class Reply:
    model: str
    chunks: list[str]
    finish_reason: str
    usage: Usage | None
    include_usage: bool  # OpenAI streams: stream_options.include_usage was asked for
    tool_calls: tuple[tuple[str, str, str], ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Wire(Protocol):
    """One wire protocol's request checks and reply shapes."""

    default_finish: str
    length_finish: str  # the finish of a reply cut at max_tokens
    tool_finish: str  # the finish of a reply that calls tools

    def api_key(self, headers: Mapping[str, str]) -> str | None: ...

    def invalid(self, headers: Mapping[str, str], body: dict[str, Any]) -> str | None: ...

    def error_body(self, status: int, message: str) -> dict[str, Any]: ...

    def message(self, reply: Reply) -> dict[str, Any]: ...

    def stream_head(self, reply: Reply) -> list[str]: ...

    def stream_delta(self, reply: Reply, text: str) -> str: ...

    def stream_tool_calls(self, reply: Reply) -> list[str]: ...

    def stream_tail(self, reply: Reply) -> list[str]: ...

    def stream_error(self, status: int, message: str) -> list[str]: ...


_ids = itertools.count(1)
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_exceeded"}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [text[:middle], text[middle:]]


class OpenAIWire:
    default_finish = "stop"
    length_finish = "length"
    tool_finish = "tool_calls"

    def __init__(self) -> None:
        self.id = f"chatcmpl-scripted-{next(_ids)}"
        self.created = int(time.time())

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        value = headers.get("authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None

    def invalid(self, headers: Mapping[str, str], body: dict[str, Any]) -> str | None:
        for field in ("model", "messages"):
            if field not in body:
                return f"you must provide a {field} parameter"
        return None

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _usage(self, usage: Usage) -> dict[str, Any]:
        return {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        }

    def _chunk(self, reply: Reply, choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": reply.model,
            "choices": choices,
            # With include_usage every chunk carries "usage": null until the last one.
            **({"usage": None} if reply.include_usage else {}),
            **extra,
        }
        return _sse(chunk)

    def message(self, reply: Reply) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": reply.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text or None, **self._calls(reply)},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage is not None:
            payload["usage"] = self._usage(reply.usage)
        return payload

    def _calls(self, reply: Reply) -> dict[str, Any]:
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in reply.tool_calls
        ]
        return {"tool_calls": calls} if calls else {}

    def stream_tool_calls(self, reply: Reply) -> list[str]:
        frames = []
        for index, (call_id, name, arguments) in enumerate(reply.tool_calls):
            pieces = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]
            pieces += [{"function": {"arguments": half}} for half in _halves(arguments)]
            for piece in pieces:
                delta = {"tool_calls": [{"index": index, **piece}]}
                frames.append(self._chunk(reply, [{"index": 0, "delta": delta, "finish_reason": None}]))
        return frames

    def stream_head(self, reply: Reply) -> list[str]:
        delta = {"role": "assistant", "content": ""}
        return [self._chunk(reply, [{"index": 0, "delta": delta, "finish_reason": None}])]

    def stream_delta(self, reply: Reply, text: str) -> str:
        return self._chunk(reply, [{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def stream_tail(self, reply: Reply) -> list[str]:
        frames = [self._chunk(reply, [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}])]
        if reply.include_usage and reply.usage is not None:
            frames.append(self._chunk(reply, [], usage=self._usage(reply.usage)))
        return [*frames, _sse("[DONE]")]

    def stream_error(self, status: int, message: str) -> list[str]:
        error = self.error_body(status, message)
        error["error"]["code"] = status  # vLLM puts the status in "code"
        return [_sse(error), _sse("[DONE]")]


class AzureOpenAIWire(OpenAIWire):
    """Azure OpenAI: the OpenAI shapes, with the key in an ``api-key`` header."""

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("api-key")


class AnthropicWire:
    default_finish = "end_turn"
    length_finish = "max_tokens"
    tool_finish = "tool_use"

    def __init__(self) -> None:
        self.id = f"msg_scripted_{next(_ids)}"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-api-key")

    def invalid(self, headers: Mapping[str, str], body: dict[str, Any]) -> str | None:
        if "anthropic-version" not in headers:
            return "anthropic-version: header is required"
        for field in ("model", "messages", "max_tokens"):
            if field not in body:
                return f"{field}: Field required"
        for tool in body.get("tools") or ():
            if not (isinstance(tool, dict) and "name" in tool and "input_schema" in tool):
                return "tools: each tool needs a name and an input_schema"
        for message in body["messages"]:
            if isinstance(message, dict) and message.get("role") not in ("user", "assistant"):
                return (
                    f"messages: Unexpected role {message.get('role')!r}. The Messages API accepts a "
                    'top-level `system` parameter, not "system" as an input message role.'
                )
        return None

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _usage(self, usage: Usage, *, start: bool) -> dict[str, Any]:
        uncached = usage.input_tokens - usage.cached_tokens - usage.cache_creation_tokens
        return {
            "input_tokens": max(0, uncached),
            "cache_creation_input_tokens": usage.cache_creation_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            # message_start reports the output so far (the API sends a small number there).
            "output_tokens": 1 if start else usage.output_tokens,
        }

    def _message(self, reply: Reply, *, text: str, stop_reason: str | None, start: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": ([{"type": "text", "text": text}] if text or not start else [])
            + ([] if start else [self._tool_use(call) for call in reply.tool_calls]),
            "stop_reason": stop_reason,
            "stop_sequence": None,
        }
        if reply.usage is not None:
            payload["usage"] = self._usage(reply.usage, start=start)
        return payload

    def message(self, reply: Reply) -> dict[str, Any]:
        return self._message(reply, text=reply.text, stop_reason=reply.finish_reason, start=False)

    def stream_head(self, reply: Reply) -> list[str]:
        start = {
            "type": "message_start",
            "message": self._message(reply, text="", stop_reason=None, start=True),
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return [
            _sse(start, "message_start"),
            _sse(block, "content_block_start"),
            _sse({"type": "ping"}, "ping"),
        ]

    def stream_delta(self, reply: Reply, text: str) -> str:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return _sse(delta, "content_block_delta")

    def _tool_use(self, call: tuple[str, str, str]) -> dict[str, Any]:
        return {"type": "tool_use", "id": call[0], "name": call[1], "input": json.loads(call[2])}

    def stream_tool_calls(self, reply: Reply) -> list[str]:
        if not reply.tool_calls:
            return []
        frames = [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop")]
        for index, call in enumerate(reply.tool_calls, start=1):
            block = {**self._tool_use(call), "input": {}}
            frames.append(
                _sse(
                    {"type": "content_block_start", "index": index, "content_block": block},
                    "content_block_start",
                )
            )
            for half in _halves(call[2]):
                delta = {"type": "input_json_delta", "partial_json": half}
                frames.append(
                    _sse(
                        {"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"
                    )
                )
            frames.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        return frames

    def stream_tail(self, reply: Reply) -> list[str]:
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": reply.finish_reason, "stop_sequence": None},
        }
        if reply.usage is not None:
            delta["usage"] = {"output_tokens": reply.usage.output_tokens}
        # With tool calls, stream_tool_calls closed the text block before their blocks.
        stop = (
            []
            if reply.tool_calls
            else [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop")]
        )
        return [
            *stop,
            _sse(delta, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ]

    def stream_error(self, status: int, message: str) -> list[str]:
        return [_sse(self.error_body(status, message), "error")]
