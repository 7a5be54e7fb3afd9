"""No field of an OpenAI Chat Completions body is silently lost: every field the HTTP front accepts,
read from its schema's models, either reaches the upstream body of both wire protocols or is
refused with a 400 naming it (and the tier); fields that steer tierwise itself are listed as its
own; and every OpenAI field tierwise cannot honour is refused by name. The gRPC counterpart is
test_request_fields.py, whose checks of the upstream bodies this reuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import Running, build_config, running_server
from tests.test_http_front import http_config, post
from tests.test_request_fields import CASES as GRPC_CASES
from tests.test_request_fields import IMAGE_URL, MESSAGE_CASES, SCHEMA, TIER_OF, TOOLS, Check
from tests.upstream import ScriptedUpstream
from tierwise.router.openai_schema import (
    UNSUPPORTED,
    ChatRequest,
    FunctionCall,
    ImageUrl,
    ImageUrlPart,
    MessageIn,
    TextPart,
    ToolCallIn,
)

Body = dict[str, Any]
QUESTION = [{"role": "user", "content": "What is 2+2?"}]

# Fields that steer tierwise (routing, attribution, the answer's shape) and mean nothing to a model.
TIERWISE_OWN = {"user", "metadata", "n", "stream_options", "tierwise"}

# The body's fields that carry a CompleteRequest field under another name, checked as gRPC checks it.
SAME_AS_GRPC = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "parallel_tool_calls": "parallel_tool_calls",
    "tool_choice": "tool_choice",
    "tools": "tools_json",
    "response_format": "response_format_json",
    "messages": "messages",
}
HTTP_VALUES: dict[str, Body] = {
    "max_tokens": {"max_tokens": 77},
    "temperature": {"temperature": 0.25},
    "top_p": {"top_p": 0.9},
    "seed": {"seed": 42},
    "parallel_tool_calls": {"tools": TOOLS, "parallel_tool_calls": False},
    "tool_choice": {"tools": TOOLS, "tool_choice": "required"},
    "tools": {"tools": TOOLS},
    "response_format": {"response_format": SCHEMA},
    "messages": {},
}
CASES: dict[str, tuple[Body, dict[str, Check]]] = {
    name: (HTTP_VALUES[name], GRPC_CASES[proto][1]) for name, proto in SAME_AS_GRPC.items()
}
CASES["max_completion_tokens"] = ({"max_completion_tokens": 77}, GRPC_CASES["max_tokens"][1])
CASES["stop"] = (
    {"stop": "END"},  # one string, as the API allows: a list of one upstream
    {"openai": lambda b: b["stop"] == ["END"], "anthropic": lambda b: b["stop_sequences"] == ["END"]},
)
CASES["model"] = (
    {},
    {"openai": lambda b: b["model"] == "small-model", "anthropic": lambda b: b["model"] == "large-model"},
)
CASES["stream"] = (
    {"stream": True},
    {"openai": lambda b: b["stream"] is True, "anthropic": lambda b: b["stream"] is True},
)

# The conversation of test_request_fields (an image, a tool call and its result) in the HTTP shape.
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
CONVERSATION = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Find order 7."},
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "Found it."},
]
ANTHROPIC_CALL = {"type": "tool_use", "id": "c1", "name": "lookup", "input": {}}
# Each nested model's fields, named by the path from a message, with their checks.
NESTED_CASES: dict[str, dict[str, Check]] = {
    **{name: MESSAGE_CASES[name] for name in ("role", "content", "tool_call_id")},
    "tool_calls": {
        "openai": lambda b: b["messages"][1]["tool_calls"] == [CALL],
        "anthropic": lambda b: b["messages"][1]["content"] == [ANTHROPIC_CALL],
    },
    "content[].text": {
        "openai": lambda b: b["messages"][0]["content"][0] == {"type": "text", "text": "Find order 7."},
        "anthropic": lambda b: b["messages"][0]["content"][0] == {"type": "text", "text": "Find order 7."},
    },
    "content[].image_url.url": MESSAGE_CASES["images"],
}
NESTED_MODELS = {
    "": MessageIn,
    "content[].": TextPart,
    "content[].image_url.": ImageUrl,
    "content[]..": ImageUrlPart,  # type and image_url: the part's shape
    "tool_calls[].": ToolCallIn,
    "tool_calls[].function.": FunctionCall,
}
# Fields a nested model has that the cases above check as part of a larger whole.
PART_OF_A_WHOLE = {
    "content[].type",  # a part's type chooses its shape
    "content[]..type",
    "content[]..image_url",
    "content[].image_url.detail",  # its own test below: sent to OpenAI tiers, refused by Anthropic ones
    "tool_calls[].id",  # the tool_calls checks compare whole calls
    "tool_calls[].type",
    "tool_calls[].function",
    "tool_calls[].function.name",
    "tool_calls[].function.arguments",
}


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(build_config(http_config(tmp_path, upstream))) as running:
        yield running


def test_every_body_field_is_either_sent_or_tierwise_own() -> None:
    assert set(ChatRequest.model_fields) == TIERWISE_OWN | set(CASES), "a new body field needs a case here"
    nested = {prefix + name for prefix, model in NESTED_MODELS.items() for name in model.model_fields}
    assert nested == set(NESTED_CASES) | PART_OF_A_WHOLE


async def sent_or_refused(
    svc: Running, upstream: ScriptedUpstream, kind: str, body: Body, check: Check, field: str
) -> None:
    body = {"model": TIER_OF[kind], **body}
    before = len(upstream.requests)
    status, answer, _ = await post(svc, json.dumps(body))
    if check == "refused":
        assert status == 400
        assert answer["error"]["message"] == f"{field}: tier {TIER_OF[kind]!r} ({kind}) cannot honour it"
        assert answer["error"]["param"] == field
        assert len(upstream.requests) == before  # nothing went upstream
        return
    assert status == 200, answer
    sent = upstream.requests[-1].body
    assert not isinstance(check, str) and check(sent), f"{field} did not reach the {kind} body: {sent}"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
@pytest.mark.parametrize("field", list(CASES))
async def test_each_body_field_reaches_the_upstream_or_is_refused_by_name(
    svc: Running, upstream: ScriptedUpstream, field: str, kind: str
) -> None:
    fields, checks = CASES[field]
    await sent_or_refused(svc, upstream, kind, {"messages": QUESTION, **fields}, checks[kind], field)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
@pytest.mark.parametrize("field", list(NESTED_CASES))
async def test_each_message_field_reaches_the_upstream(
    svc: Running, upstream: ScriptedUpstream, field: str, kind: str
) -> None:
    body = {"messages": CONVERSATION, "tools": TOOLS}
    await sent_or_refused(svc, upstream, kind, body, NESTED_CASES[field][kind], field)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
async def test_an_image_detail_reaches_openai_tiers_and_anthropic_ones_refuse_it(
    svc: Running, upstream: ScriptedUpstream, kind: str
) -> None:
    image = {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]
    checks: dict[str, Check] = {
        "openai": lambda b: b["messages"][0]["content"][1]["image_url"]["detail"] == "low",
        "anthropic": "refused",
    }
    field = "messages[0].content[1].image_url.detail"
    await sent_or_refused(svc, upstream, kind, {"messages": messages}, checks[kind], field)


@pytest.mark.asyncio
@pytest.mark.parametrize("field", sorted(UNSUPPORTED - {"name", "refusal"}))
async def test_an_openai_field_tierwise_cannot_honour_is_refused_by_name(
    svc: Running, upstream: ScriptedUpstream, field: str
) -> None:
    status, answer, _ = await post(svc, json.dumps({"model": "small", "messages": QUESTION, field: None}))
    assert status == 400
    assert answer["error"] == {
        "message": f"{field}: tierwise cannot honour this field",
        "type": "invalid_request_error",
        "param": field,
        "code": None,
    }
    assert upstream.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["name", "refusal", "audio", "function_call"])
async def test_a_message_field_tierwise_cannot_honour_is_refused_by_name(svc: Running, field: str) -> None:
    message = {"role": "assistant", "content": "Hi.", field: "x"}
    body = {"model": "small", "messages": [*QUESTION, message, *QUESTION]}
    status, answer, _ = await post(svc, json.dumps(body))
    assert (status, answer["error"]["param"]) == (400, f"messages[1].{field}")


@pytest.mark.asyncio
@pytest.mark.parametrize("field", sorted(TIERWISE_OWN))
async def test_tierwise_own_fields_are_accepted_and_stay_out_of_the_upstream_body(
    svc: Running, upstream: ScriptedUpstream, field: str
) -> None:
    values: Body = {
        "user": "user-7",
        "metadata": {"team": "search"},
        "n": 1,
        "stream_options": {"include_usage": True},
        "tierwise": {"feature": "faq", "cache_mode": "bypass", "max_age_s": 60, "latency_budget_ms": 9000},
    }
    body = {"model": "small", "messages": QUESTION, field: values[field]}
    if field == "stream_options":
        body["stream"] = True
    status, answer, _ = await post(svc, json.dumps(body))
    assert status == 200, answer
    sent = upstream.requests[-1].body
    # OpenAI-compatible tiers are always asked for stream usage (tierwise bills from it), whatever the caller's.
    assert field not in sent or sent[field] == {"include_usage": True}
    assert "tierwise" not in json.dumps(sent) and "user-7" not in json.dumps(sent)
