"""The response cache through the real server: hits save money, and a cached answer is never
served across tenants, system prompts, tools, parameters or conversations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb


def msgs(*turns: tuple[str, str]) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=role, content=content) for role, content in turns]


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        scripted.script(text="The answer.", input_tokens=40, output_tokens=20)
        yield scripted


def cached_config(tmp_path: Path, upstream: ScriptedUpstream) -> dict[str, Any]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["cache"] = {"enabled": True}
    return data


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(build_config(cached_config(tmp_path, upstream))) as running:
        yield running


async def complete(svc: Running, messages: list[pb.ChatMessage], auth: Any = AUTH, **fields: Any) -> Any:
    response = await svc.stub.Complete(pb.CompleteRequest(messages=messages, **fields), metadata=auth)
    assert svc.server.service.cache is not None
    await svc.server.service.cache.drain()  # the insert runs after the answer: wait for it
    return response


@pytest.mark.asyncio
async def test_exact_repeat_is_served_from_cache_and_saves_the_tier_cost(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    first = await complete(svc, msgs(("user", "How do I reset my password?")))
    assert not first.decision.cache_hit
    second = await complete(svc, msgs(("user", "How do I reset my password?")))
    assert second.decision.cache_hit and second.decision.reason == "cache-hit"
    assert second.decision.cached.kind == "exact" and second.content == "The answer."
    assert second.cost_usd == 0 and Decimal(second.cost_usd_exact) == 0
    # saved: what the small tier would have cost, this prompt's input plus the stored 20 output tokens
    assert second.decision.saved_cost_usd > 0
    assert second.decision.saved_cost_usd == pytest.approx(
        (second.decision.estimated_input_tokens * 0.5 + 20 * 1.5) / 1e6
    )
    assert len(upstream.requests) == 1


@pytest.mark.asyncio
async def test_paraphrase_hits_semantically_and_streams(svc: Running, upstream: ScriptedUpstream) -> None:
    await complete(svc, msgs(("user", "How can I reset my password?")))
    chunks = [
        c
        async for c in svc.stub.CompleteStream(
            pb.CompleteRequest(messages=msgs(("user", "How can I reset my password ?"))), metadata=AUTH
        )
    ]
    assert chunks[0].decision.cache_hit
    assert "".join(c.delta for c in chunks) == "The answer."
    assert chunks[-1].end.cost_usd == 0
    assert len(upstream.requests) == 1


TOOLS = '[{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]'
OTHER_TOOLS = '[{"type": "function", "function": {"name": "cancel_order", "parameters": {"type": "object"}}}]'
JSON_OBJECT = '{"type": "json_object"}'
SCHEMA = '{"type": "json_schema", "json_schema": {"name": "order", "schema": {"type": "object"}}}'

ISOLATION: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("tenant", {"auth": AUTH}, {"auth": OTHER_AUTH}),
    ("feature", {"feature": "billing"}, {"feature": "support"}),
    ("system prompt", {"system": "You are terse."}, {"system": "You are verbose."}),
    ("tools", {"tools_json": '[{"name": "a"}]'}, {"tools_json": '[{"name": "b"}]'}),
    ("temperature", {"temperature": 0.0}, {"temperature": 0.9}),
    ("max_tokens", {"max_tokens": 16}, {"max_tokens": 500}),
    ("stop", {"stop": ["\n"]}, {"stop": ["END"]}),
    ("pinned tier", {"tier": "small"}, {"tier": "large"}),
    (
        "tool_choice",
        {"tools_json": TOOLS, "tool_choice": "auto"},
        {"tools_json": TOOLS, "tool_choice": "required"},
    ),
    (
        "parallel_tool_calls",
        {"tools_json": TOOLS, "parallel_tool_calls": True},
        {"tools_json": TOOLS, "parallel_tool_calls": False},
    ),
    ("response_format", {"response_format_json": JSON_OBJECT}, {"response_format_json": SCHEMA}),
    ("top_p", {"top_p": 0.5}, {"top_p": 0.9}),
    ("seed", {"seed": 1}, {"seed": 2}),
    ("conversation", {"history": "Cancel my gym membership."}, {"history": "Cancel my phone contract."}),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("what", "first", "second"), ISOLATION, ids=[i[0] for i in ISOLATION])
async def test_no_hit_across_scopes(
    svc: Running, upstream: ScriptedUpstream, what: str, first: dict[str, Any], second: dict[str, Any]
) -> None:
    def request(scope: dict[str, Any]) -> tuple[list[pb.ChatMessage], Any, dict[str, Any]]:
        scope = dict(scope)
        auth = scope.pop("auth", AUTH)
        turns: list[tuple[str, str]] = []
        if "system" in scope:
            turns.append(("system", scope.pop("system")))
        if "history" in scope:
            turns += [("user", scope.pop("history")), ("assistant", "Are you sure?")]
        turns.append(("user", "Yes, cancel it."))
        return msgs(*turns), auth, scope

    messages, auth, fields = request(first)
    await complete(svc, messages, auth, **fields)
    again = await complete(svc, messages, auth, **fields)
    assert again.decision.cache_hit, f"the same {what} must hit"
    messages, auth, fields = request(second)
    other = await complete(svc, messages, auth, **fields)
    assert not other.decision.cache_hit, f"a different {what} must not hit"


@pytest.mark.asyncio
async def test_bypass_refresh_and_hot_temperature(svc: Running, upstream: ScriptedUpstream) -> None:
    question = msgs(("user", "What is our refund policy?"))
    await complete(svc, question)
    bypass = await complete(svc, question, cache_mode=pb.CACHE_MODE_BYPASS)
    assert not bypass.decision.cache_hit
    upstream.script(text="The new answer.", input_tokens=40, output_tokens=20)
    refreshed = await complete(svc, question, cache_mode=pb.CACHE_MODE_REFRESH)
    assert not refreshed.decision.cache_hit and refreshed.content == "The new answer."
    served = await complete(svc, question)
    assert served.decision.cache_hit and served.content == "The new answer."
    hot = await complete(svc, question, temperature=1.5)
    assert not hot.decision.cache_hit


@pytest.mark.asyncio
async def test_truncated_and_failed_answers_are_not_cached(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="cut off", finish_reason="length")
    await complete(svc, msgs(("user", "Write a long essay.")))
    upstream.script(text="full essay")
    again = await complete(svc, msgs(("user", "Write a long essay.")))
    assert not again.decision.cache_hit and again.content == "full essay"

    upstream.script(text="a b c d e f", drop_after=2)
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in svc.stub.CompleteStream(
            pb.CompleteRequest(messages=msgs(("user", "Tell a story."))), metadata=AUTH
        ):
            pass
    upstream.script(text="whole story")
    story = await complete(svc, msgs(("user", "Tell a story.")))
    assert not story.decision.cache_hit and story.content == "whole story"


@pytest.mark.asyncio
async def test_route_reports_a_hit_without_calling_a_model(svc: Running, upstream: ScriptedUpstream) -> None:
    await complete(svc, msgs(("user", "Opening hours?")))
    decision = await svc.stub.Route(pb.RouteRequest(messages=msgs(("user", "Opening hours?"))), metadata=AUTH)
    assert decision.cache_hit and decision.cached.content == "The answer."
    assert len(upstream.requests) == 1


@pytest.mark.asyncio
async def test_restart_keeps_cache_entries(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    config = build_config(cached_config(tmp_path, upstream))
    async with running_server(config) as svc:
        await complete(svc, msgs(("user", "Where is the office?")))
    async with running_server(config) as svc:
        again = await complete(svc, msgs(("user", "Where is the office?")))
    assert again.decision.cache_hit
    assert len(upstream.requests) == 1


@pytest.mark.asyncio
async def test_long_prompts_that_share_few_shot_examples_only_hit_exactly(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    # Past the embedder's 256-piece window the vector cannot see the whole prompt: such prompts
    # (few-shot examples, then the question) are served from the cache by exact match only, even
    # with a verifier that would accept anything close.
    data = cached_config(tmp_path, upstream)
    data["cache"] = {"enabled": True, "verifier": "cosine", "similarity_threshold": 0.5}
    shots = "".join(
        f"Question: Which word fits the blank in sentence number {i}? A) apple B) pear\nAnswer: A\n\n"
        for i in range(20)
    )
    first = (
        shots + "Question: The trophy does not fit the suitcase because _ is too big. A) trophy B) suitcase"
    )
    second = shots + "Question: The cat sat on the mat because _ was warm. A) cat B) mat"
    async with running_server(build_config(data)) as svc:
        await complete(svc, msgs(("user", first)))
        other = await complete(svc, msgs(("user", second)))
        assert not other.decision.cache_hit
        again = await complete(svc, msgs(("user", first)))
        assert again.decision.cache_hit and again.decision.cached.kind == "exact"
        short = await complete(svc, msgs(("user", "Which fruit is red?")))
        near = await complete(svc, msgs(("user", "Which fruit is yellow?")))
        assert (
            not short.decision.cache_hit and near.decision.cache_hit
        )  # short texts still match semantically


@pytest.mark.asyncio
async def test_a_tool_call_answer_is_never_served_from_the_cache(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="", tool_calls=(("call_9", "lookup_order", '{"id": 7}'),))
    question = msgs(("user", "Where is order 7?"))
    first = await complete(svc, question, tools_json=TOOLS)
    assert first.finish_reason == "tool_calls" and first.tool_calls[0].name == "lookup_order"
    # Neither the same request nor one with other tools is answered with that call.
    again = await complete(svc, question, tools_json=TOOLS)
    other = await complete(svc, question, tools_json=OTHER_TOOLS)
    assert not again.decision.cache_hit and not other.decision.cache_hit
    assert len(upstream.requests) == 3
    assert upstream.requests[-1].body["tools"][0]["function"]["name"] == "cancel_order"


@pytest.mark.asyncio
async def test_a_json_schema_answer_is_not_served_to_a_plain_request(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text='{"status": "shipped"}')
    question = msgs(("user", "Status of order 7?"))
    await complete(svc, question, response_format_json=SCHEMA)
    assert (await complete(svc, question, response_format_json=SCHEMA)).decision.cache_hit  # it was stored
    upstream.script(text="It has shipped.")
    plain = await complete(svc, question)
    assert not plain.decision.cache_hit and plain.content == "It has shipped."
    assert "response_format" not in upstream.requests[-1].body


@pytest.mark.asyncio
async def test_conversations_differing_only_in_a_tool_call_do_not_share_answers(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    def after_call(arguments: str) -> list[pb.ChatMessage]:
        call = pb.ToolCall(id="c1", name="lookup_order", arguments_json=arguments)
        return [
            *msgs(("user", "Is my order there yet?")),
            pb.ChatMessage(role="assistant", tool_calls=[call]),
            pb.ChatMessage(role="tool", tool_call_id="c1", content="Delivered."),
        ]

    await complete(svc, after_call('{"id": 7}'), tools_json=TOOLS)
    assert (await complete(svc, after_call('{"id": 7}'), tools_json=TOOLS)).decision.cache_hit
    assert not (await complete(svc, after_call('{"id": 8}'), tools_json=TOOLS)).decision.cache_hit
