"""The HTTP front through the official ``openai`` SDK and ``curl``: streaming (with the usage chunk),
a tool call round trip on an OpenAI-compatible and an Anthropic tier (unary and streamed),
``response_format: json_schema``, images, a stream that breaks and one the caller leaves. The gRPC
side of each case is in test_tool_calls.py, test_request_fields.py, test_images.py and
test_stream_billing.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.harness import API_KEY, Running, build_config, running_server
from tests.test_http_front import QUESTION, client, http_config
from tests.test_stream_billing import record_of
from tests.upstream import ScriptedUpstream

pytestmark = pytest.mark.timeout(60)

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMETERS},
    }
]
CALL = ("call_1", "get_weather", '{"city": "Paris"}')
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
TIERS = {"small": "openai", "large": "anthropic"}


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(build_config(http_config(tmp_path, upstream))) as running:
        yield running


async def streamed(sdk: openai.AsyncOpenAI, **request: Any) -> tuple[str, list[Any], str | None, list[Any]]:
    """The text, the tool calls (put together from their pieces), the finish reason and the chunks."""
    chunks = [c async for c in await sdk.chat.completions.create(stream=True, **request)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(piece.index, ["", "", ""])
            call[0] += piece.id or ""
            call[1] += (piece.function and piece.function.name) or ""
            call[2] += (piece.function and piece.function.arguments) or ""
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    return text, list(calls.values()), finish, chunks


@pytest.mark.asyncio
async def test_a_stream_carries_text_then_the_usage_chunk(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="Two plus two is four.", input_tokens=9, output_tokens=6)
    sdk = client(svc)
    text, calls, finish, chunks = await streamed(
        sdk, model="small", messages=QUESTION, stream_options={"include_usage": True}
    )
    assert (text, calls, finish) == ("Two plus two is four.", [], "stop")
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 6)
    own = chunks[-2].model_extra["tierwise"]  # the finishing chunk carries the cost
    assert (own["tier"], own["cost_usd"]) == ("small", "0.0000135")
    assert chunks[0].model_extra["tierwise"]["reason"] == "pinned"  # the first, the decision
    assert upstream.requests[-1].body["stream"] is True
    # Without include_usage no usage chunk comes.
    _, _, _, plain = await streamed(sdk, model="small", messages=QUESTION)
    assert all(c.usage is None for c in plain) and plain[-1].choices


@pytest.mark.asyncio
async def test_the_sync_sdk_streams(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="Four, as ever.")

    def ask() -> str:
        sync = openai.OpenAI(base_url=svc.http_url, api_key=API_KEY, max_retries=0)
        stream = sync.chat.completions.create(model="large", messages=QUESTION, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert await asyncio.to_thread(ask) == "Four, as ever."


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("tier", list(TIERS))
async def test_a_tool_call_round_trip(
    svc: Running, upstream: ScriptedUpstream, tier: str, stream: bool
) -> None:
    sdk = client(svc)
    upstream.script(text="", tool_calls=(CALL,))
    ask: dict[str, Any] = {
        "model": tier,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }
    if stream:
        _, calls, finish, _ = await streamed(sdk, **ask)
    else:
        answer = await sdk.chat.completions.create(**ask)
        message = answer.choices[0].message
        calls = [[c.id, c.function.name, c.function.arguments] for c in message.tool_calls or []]  # type: ignore[union-attr]
        finish = answer.choices[0].finish_reason
    assert finish == "tool_calls"
    assert [(i, n, json.loads(a)) for i, n, a in calls] == [("call_1", "get_weather", {"city": "Paris"})]
    sent = upstream.requests[-1].body
    if TIERS[tier] == "openai":
        assert (sent["tools"], sent["parallel_tool_calls"]) == (TOOLS, False)
    else:
        assert sent["tools"][0]["input_schema"] == PARAMETERS
    # The tool's result goes back; the model answers.
    upstream.script(text="Sunny in Paris.")
    turns = [
        *ask["messages"],
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": CALL[1], "arguments": CALL[2]}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24C"},
    ]
    follow = {"model": tier, "messages": turns, "tools": TOOLS}
    if stream:
        text, _, finish, _ = await streamed(sdk, **follow)
    else:
        answer = await sdk.chat.completions.create(**follow)
        text, finish = answer.choices[0].message.content or "", answer.choices[0].finish_reason
    assert (text, finish) == ("Sunny in Paris.", "stop")
    sent_turns = json.dumps(upstream.requests[-1].body["messages"])
    assert "Sunny, 24C" in sent_turns and "call_1" in sent_turns


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_response_format_json_schema(svc: Running, upstream: ScriptedUpstream, stream: bool) -> None:
    upstream.script(text='{"answer": 4}')
    sdk = client(svc)
    request: dict[str, Any] = {"model": "small", "messages": QUESTION, "response_format": SCHEMA}
    if stream:
        text, *_ = await streamed(sdk, **request)
    else:
        text = (await sdk.chat.completions.create(**request)).choices[0].message.content or ""
    assert json.loads(text) == {"answer": 4}
    assert upstream.requests[-1].body["response_format"] == SCHEMA
    # The Anthropic tier has no response_format: refused, naming it and the tier; routed, it is left out.
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(**{**request, "model": "large"})
    assert refused.value.body["message"] == "response_format: tier 'large' (anthropic) cannot honour it"  # type: ignore[index]
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]
    routed = await sdk.chat.completions.create(**{**request, "model": "tierwise-auto"})
    assert routed.model_extra["tierwise"]["tier"] == "small"  # type: ignore[index]


@pytest.mark.asyncio
async def test_an_image_part_reaches_either_tier_and_a_bad_one_is_named(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    url = "https://images.example.com/cat.png"
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    sdk = client(svc)
    await sdk.chat.completions.create(model="small", messages=[{"role": "user", "content": content}])
    assert upstream.requests[-1].body["messages"][0]["content"][1]["image_url"]["url"] == url
    await sdk.chat.completions.create(model="large", messages=[{"role": "user", "content": content}])
    assert upstream.requests[-1].body["messages"][0]["content"][1]["source"]["url"] == url
    bad = [content[0], {"type": "image_url", "image_url": {"url": "http://insecure.example.com/a.png"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model="small", messages=[{"role": "user", "content": bad}])
    assert refused.value.body["param"] == "messages[0].content[1].image_url.url"  # type: ignore[index]


@pytest.mark.asyncio
async def test_a_stream_that_breaks_ends_with_an_error_event(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    sdk = client(svc)
    upstream.script(text="one two three four", drop_after=2)
    with pytest.raises(openai.APIError, match="request_id="):
        await streamed(sdk, model="small", messages=QUESTION)
    # Before any text the failure keeps its status: every tier down is 503.
    upstream.script(status=500)
    with pytest.raises(openai.InternalServerError) as caught:
        await streamed(sdk, model="small", messages=QUESTION)
    assert caught.value.status_code == 503


@pytest.mark.asyncio
async def test_a_stream_the_caller_leaves_is_billed_what_was_streamed(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", text=" ".join(["word"] * 200), chunk_delay_s=0.02)
    headers = {"authorization": f"Bearer {API_KEY}"}
    body = {"model": "small", "messages": QUESTION, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(svc.http_url + "/chat/completions", json=body, headers=headers) as response,
    ):
        request_id = response.headers["x-tierwise-request-id"]
        await response.content.readline()  # the opening chunk
        await response.content.readline()
        await response.content.readline()  # text has arrived
        response.close()
    record = await record_of(svc, request_id)
    assert record.status == "CANCELLED" and record.tier == "small"
    assert 1 <= record.output_tokens < 200 and record.cost_usd > 0


def curl(svc: Running, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    command = [
        "curl", "-sS", "-N", "-i", svc.http_url + "/chat/completions",
        "-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json",
        "-d", json.dumps(body),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_gets_json_and_events(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="Four.")
    unary = await asyncio.to_thread(curl, svc, {"model": "small", "messages": QUESTION})
    head, _, payload = unary.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200") and "x-tierwise-tier: small" in head.lower()
    assert json.loads(payload)["choices"][0]["message"]["content"] == "Four."
    events = await asyncio.to_thread(curl, svc, {"model": "large", "messages": QUESTION, "stream": True})
    head, _, payload = events.stdout.partition("\n\n")
    assert "content-type: text/event-stream" in head.lower()
    data = [line.removeprefix("data: ") for line in payload.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-1])
    assert text == "Four."
    refused = await asyncio.to_thread(curl, svc, {"model": "small", "messages": QUESTION, "top_k": 5})
    assert refused.stdout.startswith("HTTP/1.1 400")
    assert json.loads(refused.stdout.partition("\n\n")[2])["error"]["param"] == "top_k"


@pytest.mark.asyncio
async def test_a_repeat_is_a_cache_hit_unless_the_cache_is_bypassed(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script(text="Four.", input_tokens=12, output_tokens=2)
    async with running_server(build_config(http_config(tmp_path, upstream, cache={"enabled": True}))) as svc:
        sdk = client(svc)
        first = await sdk.chat.completions.create(model="small", messages=QUESTION)
        cache = svc.server.service.cache
        assert cache is not None
        await cache.drain()  # the answer is stored off the request path: stored before the repeat
        raw = await sdk.chat.completions.with_raw_response.create(model="small", messages=QUESTION)
        again = raw.parse()
        own = again.model_extra["tierwise"]  # type: ignore[index]
        assert again.choices[0].message.content == "Four."
        assert (own["cache_hit"], own["cache_kind"], own["cost_usd"]) == (True, "exact", "0")
        assert Decimal(own["saved_cost_usd"]) > 0  # what the tier would have cost
        assert first.model_extra["tierwise"]["cache_hit"] is False  # type: ignore[index]
        assert raw.headers["x-tierwise-cache"] == "exact"
        assert len(upstream.requests) == 1
        text, *_ = await streamed(sdk, model="small", messages=QUESTION)  # a hit streams too
        assert text == "Four." and len(upstream.requests) == 1
        bypass = await sdk.chat.completions.create(
            model="small", messages=QUESTION, extra_headers={"x-tierwise-cache-mode": "bypass"}
        )
        assert bypass.model_extra["tierwise"]["cache_hit"] is False  # type: ignore[index]
        assert len(upstream.requests) == 2
