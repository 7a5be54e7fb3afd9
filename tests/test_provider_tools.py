"""The Anthropic client's side of tool use and output shape: what it sends for each tool_choice,
and that a field the Messages API has no counterpart for is refused, never sent without it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.upstream import ScriptedUpstream
from tierwise.router.providers.anthropic import AnthropicProvider
from tierwise.router.providers.base import ChatCall
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.types import ChatMessage

TOOLS = json.dumps([{"name": "lookup", "description": "Find an order", "parameters": {"type": "object"}}])


@pytest_asyncio.fixture
async def anthropic(upstream: ScriptedUpstream) -> AsyncIterator[AnthropicProvider]:
    client = AnthropicProvider(upstream.base_url)
    yield client
    await client.aclose()


def call(**fields: Any) -> ChatCall:
    return ChatCall("m", (ChatMessage("user", "Where is order 7?"),), 5.0, **fields)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", True, {"type": "any", "disable_parallel_tool_use": False}),
        ("none", False, {"type": "none"}),
        ('{"type": "function", "function": {"name": "lookup"}}', None, {"type": "tool", "name": "lookup"}),
        ("", None, None),
    ],
)
async def test_tool_choice_becomes_the_messages_api_tool_choice(
    anthropic: AnthropicProvider, upstream: ScriptedUpstream, choice: str, parallel: bool | None, sent: Any
) -> None:
    await anthropic.complete(call(tools_json=TOOLS, tool_choice=choice, parallel_tool_calls=parallel))
    body = upstream.requests[-1].body
    assert body.get("tool_choice") == sent
    # A bare function object (no "type": "function" wrapper) is translated the same way.
    assert body["tools"] == [
        {"name": "lookup", "description": "Find an order", "input_schema": {"type": "object"}}
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("fields", "named"),
    [({"seed": 7}, "seed"), ({"response_format_json": '{"type": "json_object"}'}, "response_format_json")],
)
async def test_a_field_without_a_counterpart_is_refused_before_sending(
    anthropic: AnthropicProvider,
    upstream: ScriptedUpstream,
    fields: dict[str, Any],
    named: str,
    streaming: bool,
) -> None:
    with pytest.raises(ProviderError) as caught:
        if streaming:
            _ = [event async for event in anthropic.stream(call(**fields))]
        else:
            await anthropic.complete(call(**fields))
    assert caught.value.error_type is ErrorType.CLIENT_ERROR and not caught.value.retryable
    assert f"{named}: the Messages API has no counterpart" in caught.value.message
    assert upstream.requests == []
