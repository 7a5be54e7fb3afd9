"""An ``azure_openai`` tier end to end: a real server, the real provider client, a scripted upstream
that answers only on Azure's deployment path with an ``api-version`` and checks the ``api-key``
header. The wire format is OpenAI's, so text, usage, tool calls and error kinds must match it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.config import ConfigError, TierConfig
from tierwise.router.providers.azure_openai import AzureOpenAIProvider
from tierwise.router.providers.base import ChatCall
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.providers.factory import build_provider
from tierwise.router.types import ChatMessage
from tierwise.v1 import tierwise_pb2 as pb

KEY = "azure-key-7c1f0e"
KEY_ENV = "TIERWISE_TEST_AZURE_KEY"
API_VERSION = "2024-10-21"
DEPLOYMENT_PATH = "/openai/deployments/small-deploy/chat/completions"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def azure_tier(base_url: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": "small",
        "provider": "azure_openai",
        "base_url": base_url,
        "model": "small-model",
        "api_key_env": KEY_ENV,
        "api_version": API_VERSION,
        "price": {"input_per_mtok": "0.5", "output_per_mtok": "1.5"},
        "timeout_s": 5,
        "adaptive_timeout": False,
        **fields,
    }


def with_azure_small(data: dict[str, Any], base_url: str, **fields: Any) -> dict[str, Any]:
    """The harness config with its cheapest tier replaced by an Azure one (and the Anthropic one
    keyed too, since the upstream checks every protocol's key)."""
    data["tiers"] = [azure_tier(base_url, **fields), {**data["tiers"][1], "api_key_env": KEY_ENV}]
    return data


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream(api_key=KEY) as scripted:  # 401 unless the key came as Azure sends it
        yield scripted


@pytest_asyncio.fixture
async def svc(
    upstream: ScriptedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    monkeypatch.setenv(KEY_ENV, KEY)
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    config = build_config(with_azure_small(data, upstream.base_url, deployment="small-deploy"))
    async with running_server(config) as running:
        yield running


def user(text: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", content=text)]


def assert_sent_the_azure_way(upstream: ScriptedUpstream, *, stream: bool) -> dict[str, Any]:
    (sent,) = upstream.requests
    assert sent.path == DEPLOYMENT_PATH
    assert sent.query == {"api-version": API_VERSION}
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    assert sent.stream is stream
    body: dict[str, Any] = sent.body
    return body


@pytest.mark.asyncio
async def test_a_unary_call_goes_to_the_deployment_with_the_api_key_header(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="Paris.", input_tokens=1000, output_tokens=10)
    request = pb.CompleteRequest(messages=user("Capital of France?"))
    response = await svc.stub.Complete(request, metadata=AUTH)
    assert response.content == "Paris." and response.finish_reason == "stop"
    assert response.decision.tier == "small" and response.decision.provider == "azure_openai"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1000, 10)
    assert Decimal(response.cost_usd_exact) == (1000 * Decimal("0.5") + 10 * Decimal("1.5")) / Decimal(10**6)
    body = assert_sent_the_azure_way(upstream, stream=False)
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]


@pytest.mark.asyncio
async def test_a_stream_goes_to_the_deployment_and_reports_usage(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="one two three", input_tokens=7, output_tokens=3)
    chunks = [
        c async for c in svc.stub.CompleteStream(pb.CompleteRequest(messages=user("count")), metadata=AUTH)
    ]
    assert "".join(c.delta for c in chunks[1:-1]) == "one two three"
    end = chunks[-1].end
    assert (end.finish_reason, end.usage.input_tokens, end.usage.output_tokens) == ("stop", 7, 3)
    body = assert_sent_the_azure_way(upstream, stream=True)
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.asyncio
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_tool_calls_go_and_come_back_as_with_openai(
    svc: Running, upstream: ScriptedUpstream, streamed: bool
) -> None:
    upstream.script(text="", tool_calls=(("call_1", "get_weather", '{"city": "Paris"}'),))
    request = pb.CompleteRequest(
        messages=user("Weather?"), tools_json=json.dumps([TOOL]), tool_choice="required"
    )
    if streamed:
        chunks = [c async for c in svc.stub.CompleteStream(request, metadata=AUTH)]
        finish, calls = chunks[-1].end.finish_reason, chunks[-1].end.tool_calls
    else:
        response = await svc.stub.Complete(request, metadata=AUTH)
        finish, calls = response.finish_reason, response.tool_calls
    assert finish == "tool_calls"
    assert [(c.id, c.name, json.loads(c.arguments_json)) for c in calls] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]
    body = assert_sent_the_azure_way(upstream, stream=streamed)
    assert (body["tools"], body["tool_choice"]) == ([TOOL], "required")


@pytest.mark.asyncio
async def test_a_failing_deployment_falls_back_to_the_next_tier(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    for model, fields in {"small-model": {"status": 503}, "large-model": {"text": "From large."}}.items():
        upstream.script(model, **fields)
    response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
    assert response.content == "From large."
    assert [(a.tier, a.ok) for a in response.attempts][-1] == ("large", True)
    assert {a.tier for a in response.attempts if not a.ok} == {"small"}


# -- the client itself ------------------------------------------------------------------------------------


def chat() -> ChatCall:
    return ChatCall(model="gpt-4o", messages=[ChatMessage(role="user", content="hi")], timeout_s=5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (429, ErrorType.RATE_LIMITED, True),
        (500, ErrorType.SERVER_ERROR, True),
        (503, ErrorType.SERVER_ERROR, True),
        (400, ErrorType.CLIENT_ERROR, False),
    ],
)
async def test_error_statuses_are_classed_as_for_openai(
    upstream: ScriptedUpstream, status: int, error_type: ErrorType, retryable: bool
) -> None:
    upstream.script(status=status, retry_after="3", error_message="deployment busy")
    client = AzureOpenAIProvider(upstream.base_url, deployment="d", api_version=API_VERSION, api_key=KEY)
    with pytest.raises(ProviderError) as caught:
        await client.complete(chat())
    await client.aclose()
    error = caught.value
    assert (error.error_type, error.retryable, error.http_status) == (error_type, retryable, status)
    assert "deployment busy" in error.message and error.message.startswith("azure_openai model 'gpt-4o'")
    assert error.retry_after_s == (3.0 if retryable else None)


@pytest.mark.asyncio
async def test_the_deployment_defaults_to_the_model(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    client = build_provider(TierConfig(**azure_tier(upstream.base_url, model="gpt-4o")))
    assert isinstance(client, AzureOpenAIProvider) and client.kind == "azure_openai"
    assert (await client.complete(chat())).content
    await client.aclose()
    assert upstream.requests[-1].path == "/openai/deployments/gpt-4o/chat/completions"
    assert upstream.requests[-1].query == {"api-version": API_VERSION}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_version": None}, "api_version: provider azure_openai needs it"),
        ({"api_version": "latest"}, "tiers.0.api_version: String should match pattern"),
        ({"deployment": "my deployment"}, "tiers.0.deployment: String should match pattern"),
        ({"model": "org/model"}, "deployment: the model 'org/model' cannot name a deployment"),
        ({"model": "gpt-4o\n"}, "deployment: the model 'gpt-4o\\n' cannot name a deployment"),
        ({"provider": "openai"}, "api_version: only provider azure_openai takes it (this is openai)"),
        ({"provider": "anthropic", "api_version": None, "deployment": "d"}, "deployment: only provider"),
    ],
)
def test_azure_fields_are_checked(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    data = config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1")
    tier = {k: v for k, v in azure_tier("http://127.0.0.1:1", **fields).items() if v is not None}
    data["tiers"] = [tier]
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(data)
