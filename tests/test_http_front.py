"""The OpenAI-compatible HTTP front, driven by the official ``openai`` SDK and by raw HTTP: the same
pipeline, auth and tenancy as gRPC, the decision in ``x-tierwise-*`` headers and a ``tierwise`` body
object, and each failure as an OpenAI error body with its HTTP status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.harness import API_KEY, OTHER_KEY, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.config import ConfigError

pytestmark = pytest.mark.timeout(60)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def http_config(tmp_path: Path, upstream: ScriptedUpstream, **sections: Any) -> dict[str, Any]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, **sections)
    data["server"]["http_port"] = 0
    return data


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(build_config(http_config(tmp_path, upstream))) as running:
        yield running


def client(svc: Running, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=svc.http_url, api_key=key, max_retries=0)


async def post(
    svc: Running, body: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """A raw POST to /chat/completions: the status, the body (parsed when it is JSON; an event
    stream's text) and the headers."""
    sent = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(svc.http_url + "/chat/completions", data=body, headers=sent) as response,
    ):
        json = response.content_type == "application/json"
        return response.status, await (response.json() if json else response.text()), response.headers


@pytest.mark.asyncio
async def test_the_async_sdk_gets_the_answer_and_tierwise_account(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="Four.", input_tokens=12, output_tokens=2)
    raw = await client(svc).chat.completions.with_raw_response.create(
        model="small", messages=QUESTION, extra_body={"tierwise": {"feature": "faq"}}
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Four."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "small-model"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (12, 2)
    own = answer.model_extra["tierwise"]  # type: ignore[index]
    # 12 x $0.5/M + 2 x $1.5/M
    assert (own["tier"], own["cost_usd"], own["cache_hit"]) == ("small", "0.000009", False)
    assert answer.id == f"chatcmpl-{own['request_id']}"
    assert raw.headers["x-tierwise-tier"] == "small"
    assert raw.headers["x-tierwise-request-id"] == own["request_id"]
    assert raw.headers["x-tierwise-cost-usd"] == "0.000009"
    assert upstream.requests[-1].body["messages"] == QUESTION
    ledger = svc.server.service.accounting.ledger
    assert ledger is not None
    record = await ledger.lookup(own["request_id"], "acme")  # booked like any request, to the key's tenant
    assert record is not None and record.feature == "faq"


@pytest.mark.asyncio
async def test_the_sync_sdk_works_too(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="Four.")

    def ask() -> str | None:
        sync = openai.OpenAI(base_url=svc.http_url, api_key=API_KEY, max_retries=0)
        return (
            sync.chat.completions.create(model="tierwise-auto", messages=QUESTION).choices[0].message.content
        )

    assert await asyncio.to_thread(ask) == "Four."  # the server runs on this loop: the client in a thread


@pytest.mark.asyncio
async def test_models_are_the_tiers_and_the_routed_one(svc: Running) -> None:
    sdk = client(svc)
    assert [m.id async for m in sdk.models.list()] == ["tierwise-auto", "small", "large"]
    assert (await sdk.models.retrieve("large")).id == "large"
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("gpt-4")


async def booked_feature(svc: Running, answer: Any) -> str:
    ledger = svc.server.service.accounting.ledger
    assert ledger is not None
    record = await ledger.lookup(answer.model_extra["tierwise"]["request_id"], "acme")
    assert record is not None
    return str(record.feature)


@pytest.mark.asyncio
async def test_routing_controls_ride_in_the_body_or_headers(svc: Running, upstream: ScriptedUpstream) -> None:
    sdk = client(svc)
    pinned = await sdk.chat.completions.create(model="large", messages=QUESTION)
    assert pinned.model_extra["tierwise"]["reason"] == "pinned"  # type: ignore[index]
    assert upstream.requests[-1].path == "/v1/messages"  # the Anthropic tier
    by_body = await sdk.chat.completions.create(
        model="tierwise-auto", messages=QUESTION, extra_body={"tierwise": {"feature": "faq"}}
    )
    by_header = await sdk.chat.completions.create(
        model="tierwise-auto", messages=QUESTION, extra_headers={"x-tierwise-feature": "search"}
    )
    assert [await booked_feature(svc, a) for a in (by_body, by_header)] == ["faq", "search"]
    with pytest.raises(openai.BadRequestError) as both:
        await sdk.chat.completions.create(
            model="tierwise-auto",
            messages=QUESTION,
            extra_body={"tierwise": {"feature": "faq"}},
            extra_headers={"x-tierwise-feature": "search"},
        )
    assert both.value.body["param"] == "x-tierwise-feature"  # type: ignore[index]


@pytest.mark.asyncio
async def test_a_missing_or_unknown_key_is_401_and_the_tenant_comes_from_the_key(svc: Running) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown:
        await client(svc, "not-a-key").chat.completions.create(model="small", messages=QUESTION)
    assert unknown.value.body["message"] == "unknown API key"  # type: ignore[index]
    async with aiohttp.ClientSession() as session, session.get(svc.http_url + "/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
    other = await client(svc, OTHER_KEY).chat.completions.create(model="small", messages=QUESTION)
    ledger = svc.server.service.accounting.ledger
    assert ledger is not None
    request_id = other.model_extra["tierwise"]["request_id"]  # type: ignore[index]
    assert await ledger.lookup(request_id, "acme") is None
    assert await ledger.lookup(request_id, "globex") is not None


BAD_BODIES: list[tuple[str, int, str | None, str]] = [
    ("{not json", 400, "body", "body: is not valid JSON"),
    ("[1, 2]", 400, "body", "body: must be a JSON object"),
    ('{"model": "small", "model": "large", "messages": []}', 400, "body", "body: is not valid JSON: the key 'model'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', 400, "model", "model: field required"),
    ('{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}', 404, "model", "model: 'gpt-4' is no tier"),
    ('{"model": "small", "messages": "hi"}', 400, "messages", "messages: input should be a valid list"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature", "temperature: input should be a valid number"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}', 400, "max_tokens", "max_tokens: input should be a valid integer"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}', 400, "logprobs", "logprobs: tierwise cannot honour this field"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "colour": 1}', 400, "colour", "colour: is not a field tierwise knows"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n", "n: tierwise answers with one choice"),
    ('{"model": "small", "messages": [{"role": "robot", "content": "hi"}]}', 400, "messages[0].role", "messages[0].role: must be one of"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 99999}', 400, "max_completion_tokens", "max_completion_tokens: 99999 is over the limit"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"}', 400, "tool_choice", "tool_choice: needs tools"),
    ('{"model": "small", "messages": [{"role": "user", "content": "hi"}], "tierwise": {"cache_mode": "x"}}', 400, "tierwise.cache_mode", "tierwise.cache_mode: input should be"),
]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "status", "param", "message"), BAD_BODIES, ids=[b[3][:40] for b in BAD_BODIES]
)
async def test_a_bad_body_is_refused_naming_the_field(
    svc: Running, upstream: ScriptedUpstream, body: str, status: int, param: str, message: str
) -> None:
    got, answer, _ = await post(svc, body)
    assert got == status
    assert answer["error"]["param"] == param
    assert answer["error"]["message"].startswith(message), answer
    assert upstream.requests == []


@pytest.mark.asyncio
async def test_upstream_exhaustion_is_503_with_the_attempts(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(status=500)
    with pytest.raises(openai.InternalServerError) as caught:
        await client(svc).chat.completions.create(model="small", messages=QUESTION)
    assert caught.value.status_code == 503
    body: Any = caught.value.body
    assert body["type"] == "service_unavailable_error"
    assert caught.value.response.json()["tierwise"]["attempts"][0]["tier"] == "small"


@pytest.mark.asyncio
async def test_an_over_budget_request_is_429_not_to_be_retried(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    budgets = [{"tenant": "acme", "window": "day", "usd": "0.0000001"}]
    async with running_server(build_config(http_config(tmp_path, upstream, budgets=budgets))) as svc:
        with pytest.raises(openai.RateLimitError) as caught:
            await client(svc).chat.completions.create(model="small", messages=QUESTION)
    assert caught.value.code == "budget_exhausted"
    assert caught.value.response.headers["x-should-retry"] == "false"


@pytest.mark.asyncio
async def test_a_rate_limited_request_is_429_with_retry_after(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    data = http_config(tmp_path, upstream)
    data["auth"]["api_keys"][0]["rpm"] = 1
    async with running_server(build_config(data)) as svc:
        await client(svc).chat.completions.create(model="small", messages=QUESTION)
        with pytest.raises(openai.RateLimitError) as caught:
            await client(svc).chat.completions.create(model="small", messages=QUESTION)
    assert caught.value.code == "rate_limited"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60


def test_http_port_must_be_its_own(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    data = http_config(tmp_path, upstream)
    data["server"].update(port=50051, http_port=50051)
    with pytest.raises(ConfigError, match=r"http_port: 50051 is also server\.port"):
        build_config(data)


@pytest.mark.asyncio
async def test_an_arm_is_forced_by_the_tierwise_object_and_named_when_wrong(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    experiment = {
        "name": "cheap-vs-strong",
        "unit": "user",
        "control": "cheap",
        "arms": [
            {"name": "cheap", "weight": 1, "policy": "cheapest"},
            {"name": "strong", "weight": 1, "policy": "strongest"},
        ],
    }
    async with running_server(build_config(http_config(tmp_path, upstream, experiments=[experiment]))) as svc:
        sdk = client(svc)
        raw = await sdk.chat.completions.with_raw_response.create(
            model="tierwise-auto", messages=QUESTION, extra_body={"tierwise": {"arm": "strong"}}
        )
        assert raw.headers["x-tierwise-arm"] == "strong" and raw.headers["x-tierwise-tier"] == "large"
        for extra in ({"extra_body": {"tierwise": {"arm": "nope"}}}, {"metadata": {"tierwise-arm": "nope"}}):
            with pytest.raises(openai.BadRequestError) as wrong:
                await sdk.chat.completions.create(model="tierwise-auto", messages=QUESTION, **extra)  # type: ignore[arg-type]
            param = "tierwise.arm" if "extra_body" in extra else "metadata['tierwise-arm']"
            assert wrong.value.body["param"] == param  # type: ignore[index]
            assert "has no arm 'nope'" in wrong.value.body["message"]  # type: ignore[index]


@pytest.mark.asyncio
async def test_other_paths_and_methods_get_openai_shaped_errors(svc: Running) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(svc.http_url + "/chat/completions") as wrong_method:
            assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "POST")
            assert (await wrong_method.json())["error"]["message"].startswith("GET /v1/chat/completions:")
        async with session.post(svc.http_url + "/embeddings", json={}) as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["error"]["type"] == "not_found_error"
