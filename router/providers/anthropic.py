"""Client for the Anthropic Messages API: ``POST {base_url}/v1/messages``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from tierwise.router.providers.base import ChatCall, ChatResult, StreamEvent, StreamFinish, TextDelta
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.providers.http import HttpProvider, error_message, parse_json_object
from tierwise.router.providers.images import image_blocks
from tierwise.router.providers.tools import chosen_tool, function_of
from tierwise.router.types import ChatMessage, TokenUsage, ToolCall, ToolCallDelta

ANTHROPIC_VERSION = "2023-06-01"

# Anthropic stop_reason -> the OpenAI-style finish_reason the rest of tierwise speaks;
# unknown reasons pass through unchanged.
# OpenAI's tool_choice words -> the Messages API's tool_choice types.
TOOL_CHOICE_TYPES = {"auto": "auto", "required": "any", "none": "none"}

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Error types of the Messages API and the HTTP status each stands for (used for error
# events inside a stream, which arrive with status 200).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicProvider(HttpProvider):
    """``base_url`` is the API root (``https://api.anthropic.com``); a trailing ``/v1`` is
    accepted too. ``default_max_tokens`` fills the API's required ``max_tokens`` when a call
    sets none."""

    kind = "anthropic"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        default_max_tokens: int = 1024,
        max_connections: int = 100,
    ) -> None:
        if default_max_tokens <= 0:
            raise ValueError(f"default_max_tokens must be positive, got {default_max_tokens}")
        super().__init__(base_url, api_key=api_key, headers=headers, max_connections=max_connections)
        self._path = "/messages" if self._http.base_url.endswith("/v1") else "/v1/messages"
        self.default_max_tokens = default_max_tokens

    def _protocol_headers(self, api_key: str | None) -> dict[str, str]:
        auth = {"x-api-key": api_key} if api_key else {}
        return {"anthropic-version": ANTHROPIC_VERSION, **auth}

    async def complete(self, call: ChatCall) -> ChatResult:
        data = await self._http.post_json(self._path, self._request_body(call), call.model, call.timeout_s)
        if data.get("type") == "error":
            raise self._error_payload(call.model, data)
        with self._http.reading(call.model, "message"):
            text = "".join(block["text"] for block in data["content"] if block.get("type") == "text")
            return ChatResult(
                content=text,
                tool_calls=tuple(
                    ToolCall(str(block["id"]), str(block["name"]), json.dumps(block.get("input") or {}))
                    for block in data["content"]
                    if block.get("type") == "tool_use"
                ),
                finish_reason=_finish_reason(data["stop_reason"]),
                usage=_usage(data.get("usage")),
                model=data.get("model") or call.model,
            )

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        body = {**self._request_body(call), "stream": True}
        stop_reason: str | None = None
        stopped = False
        # message_start carries the input counts, message_delta the (cumulative) output count.
        raw_usage: dict[str, Any] = {}
        model = call.model
        tool_blocks: dict[int, int] = {}  # content block index -> the tool call's index among calls
        events = self._http.post_sse(self._path, body, call.model, call.timeout_s)
        async with aclosing(events):
            async for event in events:
                with self._http.reading(call.model, f"{event.event} event"):
                    payload = parse_json_object(event.data, f"{event.event} event")
                kind = payload.get("type") or event.event
                if kind == "error":
                    raise self._error_payload(call.model, payload)
                with self._http.reading(call.model, f"{kind} event"):
                    if kind == "message_start":
                        message = payload["message"]
                        model = message.get("model") or model
                        raw_usage.update(message.get("usage") or {})
                    elif kind == "content_block_start" and payload["content_block"].get("type") == "tool_use":
                        block = payload["content_block"]
                        tool_blocks[int(payload["index"])] = index = len(tool_blocks)
                        yield ToolCallDelta(index, str(block["id"]), str(block["name"]))
                    elif kind == "content_block_delta":
                        delta = payload["delta"]
                        if delta.get("type") == "text_delta" and delta["text"]:
                            yield TextDelta(str(delta["text"]))
                        elif delta.get("type") == "input_json_delta" and delta["partial_json"]:
                            index = tool_blocks[int(payload["index"])]
                            yield ToolCallDelta(index, arguments=str(delta["partial_json"]))
                    elif kind == "message_delta":
                        stop_reason = payload["delta"].get("stop_reason") or stop_reason
                        raw_usage.update(payload.get("usage") or {})
                    elif kind == "message_stop":
                        stopped = True
                        break
        if not stopped:
            raise self._http.failure(call.model, ErrorType.PROTOCOL, "stream ended before message_stop")
        if stop_reason is None:
            raise self._http.failure(call.model, ErrorType.PROTOCOL, "message_stop without a stop_reason")
        with self._http.reading(call.model, "stream usage"):
            usage = _usage(raw_usage or None)
        yield StreamFinish(finish_reason=_finish_reason(stop_reason), usage=usage, model=model)

    def _request_body(self, call: ChatCall) -> dict[str, Any]:
        # Validation keeps these from Anthropic tiers; a call that carries one anyway is refused, not
        # sent without it.
        if call.seed is not None or call.response_format_json:
            field = "seed" if call.seed is not None else "response_format_json"
            raise self._http.failure(
                call.model, ErrorType.CLIENT_ERROR, f"{field}: the Messages API has no counterpart"
            )
        # The Messages API takes the system prompt as a top-level field, not as a turn.
        system = "\n\n".join(m.content for m in call.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": call.model,
            "messages": _messages(call.messages),
            "max_tokens": call.max_tokens if call.max_tokens is not None else self.default_max_tokens,
        }
        if system:
            body["system"] = system
        if call.temperature is not None:
            body["temperature"] = call.temperature
        if call.stop:
            body["stop_sequences"] = list(call.stop)
        if call.top_p is not None:
            body["top_p"] = call.top_p
        if call.tools_json:
            body["tools"] = [_tool(t) for t in json.loads(call.tools_json)]
        choice = _tool_choice(call.tool_choice, call.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
        return body

    def _error_payload(self, model: str, payload: dict[str, Any]) -> ProviderError:
        error = payload.get("error")
        error_type = error.get("type") if isinstance(error, dict) else None
        status = ERROR_STATUS.get(error_type) if isinstance(error_type, str) else None
        message = error_message(payload) or "(no message)"
        return self._http.event_failure(model, status, f"{error_type or 'error'}: {message}")


def _finish_reason(stop_reason: object) -> str:
    if not isinstance(stop_reason, str):
        raise TypeError(f"stop_reason is {stop_reason!r}")
    return FINISH_REASONS.get(stop_reason, stop_reason)


def _usage(raw: object) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    # Anthropic's input_tokens excludes the prompt tokens read from or written to its prompt
    # cache; tierwise's input_tokens is the whole prompt (as OpenAI's prompt_tokens is), so the
    # three are added, and cached_input_tokens is the part billed at the cache-read price.
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    cache_write = int(raw.get("cache_creation_input_tokens") or 0)
    return TokenUsage(
        input_tokens=int(raw.get("input_tokens") or 0) + cache_read + cache_write,
        output_tokens=int(raw.get("output_tokens") or 0),
        cached_input_tokens=cache_read,
    )


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The non-system turns as the Messages API takes them: an assistant's tool calls become
    ``tool_use`` blocks, tool results ``tool_result`` blocks of a user turn (consecutive results
    share one turn, as the API asks)."""
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the blocks of the user turn holding tool results
    for message in messages:
        if message.role == "tool":
            block = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
            if results is None:
                results = []
                out.append({"role": "user", "content": results})
            results.append(block)
            continue
        results = None
        if message.role == "system":
            continue
        if message.images:
            out.append({"role": message.role, "content": image_blocks(message)})
            continue
        if not message.tool_calls:
            out.append({"role": message.role, "content": message.content})
            continue
        blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments)}
            for c in message.tool_calls
        ]
        out.append({"role": "assistant", "content": blocks})
    return out


def _tool(tool: object) -> dict[str, Any]:
    """One OpenAI-style tool definition as an Anthropic tool (``parameters`` -> ``input_schema``)."""
    function = function_of(tool)
    if function is None:
        raise ValueError(f"not a tool definition: {tool!r:.80}")  # validation refuses these
    if "input_schema" in function:  # already written for the Messages API
        return function
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: str, parallel: bool | None) -> dict[str, Any] | None:
    """OpenAI's tool_choice and parallel_tool_calls as the Messages API's one tool_choice object."""
    if not choice and parallel is None:
        return None
    if choice.startswith("{"):
        out: dict[str, Any] = {"type": "tool", "name": chosen_tool(json.loads(choice))}
    else:
        out = {"type": TOOL_CHOICE_TYPES[choice or "auto"]}
    if parallel is not None and out["type"] != "none":
        out["disable_parallel_tool_use"] = not parallel
    return out
