"""Client for any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, TGI): ``POST {base_url}/chat/completions``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from tierwise.router.providers.base import ChatCall, ChatResult, StreamEvent, StreamFinish, TextDelta
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.providers.http import HttpProvider, error_message, parse_json_object
from tierwise.router.providers.images import content_parts
from tierwise.router.types import ChatMessage, TokenUsage, ToolCall, ToolCallDelta


class OpenAIProvider(HttpProvider):
    """``base_url`` includes the API version prefix when the server has one
    (``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1``)."""

    kind = "openai"
    # Where chat completions are posted, under base_url (a subclass may add a query).
    _chat_path = "/chat/completions"

    def _protocol_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    async def complete(self, call: ChatCall) -> ChatResult:
        data = await self._http.post_json(self._chat_path, _request_body(call), call.model, call.timeout_s)
        if "choices" not in data and "error" in data:
            raise self._error_payload(call.model, data)
        with self._http.reading(call.model, "chat completion"):
            choice = data["choices"][0]
            return ChatResult(
                content=choice["message"].get("content") or "",
                tool_calls=tuple(_tool_call(c) for c in choice["message"].get("tool_calls") or ()),
                # A non-streaming answer that arrived is finished; a few servers leave this null.
                finish_reason=choice.get("finish_reason") or "stop",
                usage=_usage(data.get("usage")),
                model=data.get("model") or call.model,
            )

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        body = {**_request_body(call), "stream": True, "stream_options": {"include_usage": True}}
        finish_reason: str | None = None
        usage: TokenUsage | None = None
        model = call.model
        events = self._http.post_sse(self._chat_path, body, call.model, call.timeout_s)
        async with aclosing(events):
            async for event in events:
                if event.data.strip() == "[DONE]":
                    break
                with self._http.reading(call.model, "stream chunk"):
                    chunk = parse_json_object(event.data, "stream chunk")
                if "error" in chunk:
                    raise self._error_payload(call.model, chunk)
                with self._http.reading(call.model, "stream chunk"):
                    model = chunk.get("model") or model
                    # With include_usage the usage arrives in a last chunk whose choices are empty.
                    usage = _usage(chunk.get("usage")) or usage
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            yield TextDelta(str(delta["content"]))
                        for piece in delta.get("tool_calls") or ():
                            yield _tool_call_delta(piece)
                        finish_reason = choice.get("finish_reason") or finish_reason
        # Servers that omit [DONE] are accepted once a finish_reason has arrived.
        if finish_reason is None:
            raise self._http.failure(call.model, ErrorType.PROTOCOL, "stream ended without a finish_reason")
        yield StreamFinish(finish_reason=finish_reason, usage=usage, model=model)

    def _error_payload(self, model: str, payload: dict[str, Any]) -> ProviderError:
        error = payload.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) else None
        message = error_message(payload) or "(no message)"
        return self._http.event_failure(model, status, message)


def _request_body(call: ChatCall) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": call.model,
        "messages": [_message(m) for m in call.messages],
    }
    if call.max_tokens is not None:
        body["max_tokens"] = call.max_tokens
    if call.temperature is not None:
        body["temperature"] = call.temperature
    if call.stop:
        body["stop"] = list(call.stop)
    if call.tools_json:
        body["tools"] = json.loads(call.tools_json)
    if call.tool_choice:
        # A word (auto, none, required) goes as a string, a named tool as its object.
        body["tool_choice"] = (
            json.loads(call.tool_choice) if call.tool_choice.startswith("{") else call.tool_choice
        )
    if call.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = call.parallel_tool_calls
    if call.response_format_json:
        body["response_format"] = json.loads(call.response_format_json)
    if call.top_p is not None:
        body["top_p"] = call.top_p
    if call.seed is not None:
        body["seed"] = call.seed
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        out["content"] = content_parts(message)
    if message.tool_calls:
        out["content"] = message.content or None  # a turn of only tool calls has no content
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def _tool_call(raw: dict[str, Any]) -> ToolCall:
    function = raw["function"]
    return ToolCall(str(raw["id"]), str(function["name"]), str(function.get("arguments") or "{}"))


def _tool_call_delta(raw: dict[str, Any]) -> ToolCallDelta:
    function = raw.get("function") or {}
    return ToolCallDelta(
        index=int(raw.get("index") or 0),
        id=str(raw.get("id") or ""),
        name=str(function.get("name") or ""),
        arguments=str(function.get("arguments") or ""),
    )


def _usage(raw: object) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details") or {}
    return TokenUsage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
    )
