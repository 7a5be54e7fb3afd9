"""The OpenAI-compatible and Anthropic clients against a real HTTP server speaking each protocol."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.upstream import RecordedRequest, ScriptedUpstream, serve_in_thread
from tierwise.router.config import ConfigError, TierConfig
from tierwise.router.providers.anthropic import AnthropicProvider
from tierwise.router.providers.base import ChatCall, Provider, StreamFinish, TextDelta
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.providers.factory import build_provider
from tierwise.router.providers.http import iter_sse, parse_retry_after
from tierwise.router.providers.openai import OpenAIProvider
from tierwise.router.types import ChatMessage, TokenUsage

KEY = "sk-test-key"
KINDS = ["openai", "anthropic"]
MESSAGES = (
    ChatMessage("system", "You answer in one sentence."),
    ChatMessage("user", "What is the capital of France?"),
)
SHORT_TIMEOUT_S = 0.3


def make_provider(kind: str, upstream: ScriptedUpstream, **kwargs: Any) -> Provider:
    kwargs.setdefault("api_key", KEY)
    if kind == "openai":
        return OpenAIProvider(upstream.openai_url, **kwargs)
    return AnthropicProvider(upstream.base_url, **kwargs)


def chat(model: str = "m-small", timeout_s: float = 5.0, **kwargs: Any) -> ChatCall:
    return ChatCall(model=model, messages=MESSAGES, timeout_s=timeout_s, **kwargs)


async def run(provider: Provider, call: ChatCall, streaming: bool) -> tuple[str, str, TokenUsage | None, str]:
    """Text, finish_reason, usage and model, by ``complete`` or by ``stream``."""
    if not streaming:
        result = await provider.complete(call)
        return result.content, result.finish_reason, result.usage, result.model
    events = [event async for event in provider.stream(call)]
    finishes = [e for e in events if isinstance(e, StreamFinish)]
    assert len(finishes) == 1 and events[-1] is finishes[0], events
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, finishes[0].finish_reason, finishes[0].usage, finishes[0].model


async def stream_until_error(provider: Provider, call: ChatCall) -> tuple[list[str], ProviderError]:
    """The text deltas received before the stream failed, and the failure."""
    received: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(call):
            assert isinstance(event, TextDelta), f"stream finished instead of failing: {event}"
            received.append(event.text)
    return received, caught.value


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream(api_key=KEY) as server:
        yield server


@pytest_asyncio.fixture(params=KINDS)
async def provider(request: pytest.FixtureRequest, upstream: ScriptedUpstream) -> AsyncIterator[Provider]:
    client = make_provider(request.param, upstream)
    yield client
    await client.aclose()


streaming_modes = pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])


# -- replies -------------------------------------------------------------------------------------


@streaming_modes
@pytest.mark.asyncio
async def test_text_usage_with_cached_tokens_and_model(
    provider: Provider, upstream: ScriptedUpstream, streaming: bool
) -> None:
    # Anthropic reports input_tokens=4 (40 - 32 read - 4 written); the client adds them back.
    upstream.script(
        text="Paris is the capital of France.",
        input_tokens=40,
        output_tokens=7,
        cached_tokens=32,
        cache_creation_tokens=4,
    )
    text, finish, usage, model = await run(provider, chat(), streaming)
    assert text == "Paris is the capital of France."
    assert finish == "stop"
    assert usage == TokenUsage(input_tokens=40, output_tokens=7, cached_input_tokens=32)
    assert model == "m-small"
    assert upstream.requests[-1].stream is streaming


@streaming_modes
@pytest.mark.asyncio
async def test_usage_absent_is_none(provider: Provider, upstream: ScriptedUpstream, streaming: bool) -> None:
    upstream.script(text="No numbers today.", report_usage=False)
    text, finish, usage, _ = await run(provider, chat(), streaming)
    assert (text, finish, usage) == ("No numbers today.", "stop", None)


@streaming_modes
@pytest.mark.asyncio
async def test_scripts_are_per_model(provider: Provider, upstream: ScriptedUpstream, streaming: bool) -> None:
    upstream.script(text="default answer")
    upstream.script("m-large", text="large answer")
    assert (await run(provider, chat("m-large"), streaming))[0] == "large answer"
    assert (await run(provider, chat("m-small"), streaming))[0] == "default answer"
    assert [r.model for r in upstream.requests] == ["m-large", "m-small"]


@streaming_modes
@pytest.mark.asyncio
async def test_empty_reply(provider: Provider, upstream: ScriptedUpstream, streaming: bool) -> None:
    upstream.script(text="", output_tokens=0)
    text, finish, usage, _ = await run(provider, chat(), streaming)
    assert (text, finish) == ("", "stop")
    assert usage is not None and usage.output_tokens == 0


@streaming_modes
@pytest.mark.asyncio
async def test_openai_finish_reason_passes_through(upstream: ScriptedUpstream, streaming: bool) -> None:
    upstream.script(finish_reason="length")
    client = make_provider("openai", upstream)
    assert (await run(client, chat(), streaming))[1] == "length"
    await client.aclose()


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "pause_turn"),
    ],
)
@streaming_modes
@pytest.mark.asyncio
async def test_anthropic_stop_reason_mapping(
    upstream: ScriptedUpstream, streaming: bool, stop_reason: str, finish_reason: str
) -> None:
    upstream.script(finish_reason=stop_reason)
    client = make_provider("anthropic", upstream)
    assert (await run(client, chat(), streaming))[1] == finish_reason
    await client.aclose()


@streaming_modes
@pytest.mark.asyncio
async def test_added_latency_within_the_deadline_still_answers(
    provider: Provider, upstream: ScriptedUpstream, streaming: bool
) -> None:
    upstream.script(text="slow but fine", latency_s=0.05, ttft_s=0.05, chunk_delay_s=0.02)
    assert (await run(provider, chat(timeout_s=5.0), streaming))[0] == "slow but fine"


# -- what is sent ------------------------------------------------------------------------------------


async def plain_tuned_and_streamed(
    client: Provider, upstream: ScriptedUpstream, tuned_call: ChatCall
) -> tuple[RecordedRequest, RecordedRequest, RecordedRequest]:
    """Send ``chat()``, ``tuned_call`` and a streamed ``chat()`` through ``client`` (then close it); the three
    requests the upstream saw, in that order."""
    await client.complete(chat())
    await client.complete(tuned_call)
    await run(client, chat(), streaming=True)
    await client.aclose()
    plain, tuned, streamed = upstream.requests
    return plain, tuned, streamed


@pytest.mark.asyncio
async def test_openai_request_shape(upstream: ScriptedUpstream) -> None:
    client = make_provider("openai", upstream, headers={"x-team": "search"})
    tuned_call = chat(max_tokens=50, temperature=0.0, stop=("\n\n",))
    plain, tuned, streamed = await plain_tuned_and_streamed(client, upstream, tuned_call)
    assert plain.path == "/v1/chat/completions"
    assert plain.body == {
        "model": "m-small",
        "messages": [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    }
    assert plain.headers["authorization"] == f"Bearer {KEY}"
    assert plain.headers["x-team"] == "search"
    assert (tuned.body["max_tokens"], tuned.body["temperature"], tuned.body["stop"]) == (50, 0.0, ["\n\n"])
    assert streamed.body["stream"] is True
    assert streamed.body["stream_options"] == {"include_usage": True}


@pytest.mark.asyncio
async def test_anthropic_request_shape(upstream: ScriptedUpstream) -> None:
    client = make_provider("anthropic", upstream, default_max_tokens=321)
    tuned_call = chat(max_tokens=50, temperature=0.5, stop=("END",))
    plain, tuned, streamed = await plain_tuned_and_streamed(client, upstream, tuned_call)
    assert plain.path == "/v1/messages"
    assert plain.body == {
        "model": "m-small",
        "system": "You answer in one sentence.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 321,
    }
    assert plain.headers["x-api-key"] == KEY
    assert plain.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in plain.headers
    assert (tuned.body["max_tokens"], tuned.body["temperature"], tuned.body["stop_sequences"]) == (
        50,
        0.5,
        ["END"],
    )
    assert streamed.body["stream"] is True


@pytest.mark.asyncio
async def test_anthropic_joins_system_turns_and_accepts_a_v1_base_url(upstream: ScriptedUpstream) -> None:
    client = AnthropicProvider(upstream.base_url + "/v1/", api_key=KEY)
    messages = (
        ChatMessage("system", "Rule one."),
        ChatMessage("system", "Rule two."),
        ChatMessage("user", "Hi"),
    )
    result = await client.complete(ChatCall(model="m", messages=messages, timeout_s=5.0))
    await client.aclose()
    assert result.content
    assert upstream.requests[-1].path == "/v1/messages"
    assert upstream.requests[-1].body["system"] == "Rule one.\n\nRule two."


def test_anthropic_needs_a_positive_default_max_tokens() -> None:
    with pytest.raises(ValueError, match="default_max_tokens"):
        AnthropicProvider("http://127.0.0.1:1", default_max_tokens=0)


# -- HTTP errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, ErrorType.CLIENT_ERROR),
        (401, ErrorType.CLIENT_ERROR),
        (403, ErrorType.CLIENT_ERROR),
        (404, ErrorType.CLIENT_ERROR),
        (422, ErrorType.CLIENT_ERROR),
        (500, ErrorType.SERVER_ERROR),
        (503, ErrorType.SERVER_ERROR),
        (529, ErrorType.SERVER_ERROR),
    ],
)
@streaming_modes
@pytest.mark.asyncio
async def test_error_status_is_classified_with_the_upstream_message(
    provider: Provider, upstream: ScriptedUpstream, streaming: bool, status: int, error_type: ErrorType
) -> None:
    upstream.script(status=status, error_message="the model m-small is having a bad day")
    with pytest.raises(ProviderError) as caught:
        await run(provider, chat(), streaming)
    error = caught.value
    assert (error.error_type, error.http_status) == (error_type, status)
    assert error.retryable is (error_type is ErrorType.SERVER_ERROR)
    assert "the model m-small is having a bad day" in error.message
    assert "'m-small'" in error.message and f"HTTP {status}" in error.message


@streaming_modes
@pytest.mark.asyncio
async def test_rate_limit_reads_retry_after_seconds(
    provider: Provider, upstream: ScriptedUpstream, streaming: bool
) -> None:
    upstream.script(status=429, retry_after="7", error_message="slow down")
    with pytest.raises(ProviderError) as caught:
        await run(provider, chat(), streaming)
    assert caught.value.error_type is ErrorType.RATE_LIMITED
    assert caught.value.http_status == 429
    assert caught.value.retry_after_s == 7.0
    assert caught.value.retryable
    assert "slow down" in caught.value.message


@pytest.mark.asyncio
async def test_rate_limit_reads_retry_after_http_date(provider: Provider, upstream: ScriptedUpstream) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    upstream.script(status=429, retry_after=email.utils.format_datetime(when, usegmt=True))
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat())
    assert caught.value.retry_after_s is not None
    # The date has one-second resolution and a little time passed since it was written.
    assert 100 < caught.value.retry_after_s <= 120


@pytest.mark.asyncio
async def test_rate_limit_without_retry_after(provider: Provider, upstream: ScriptedUpstream) -> None:
    upstream.script(status=429)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat())
    assert (caught.value.error_type, caught.value.retry_after_s) == (ErrorType.RATE_LIMITED, None)


@pytest.mark.asyncio
async def test_wrong_api_key_is_a_client_error(upstream: ScriptedUpstream) -> None:
    for kind in KINDS:
        client = make_provider(kind, upstream, api_key="sk-wrong")
        with pytest.raises(ProviderError) as caught:
            await client.complete(chat())
        await client.aclose()
        assert (caught.value.error_type, caught.value.http_status) == (ErrorType.CLIENT_ERROR, 401)
        assert "invalid API key" in caught.value.message


@pytest.mark.asyncio
async def test_non_json_error_body_is_quoted(provider: Provider, upstream: ScriptedUpstream) -> None:
    upstream.script(status=502, raw_body="<html><body>502 Bad Gateway</body></html>")
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat())
    assert (caught.value.error_type, caught.value.http_status) == (ErrorType.SERVER_ERROR, 502)
    assert "502 Bad Gateway" in caught.value.message


# -- transport failures ----------------------------------------------------------------------------


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening, so connecting is refused (and no one else can take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("kind", KINDS)
@streaming_modes
@pytest.mark.asyncio
async def test_refused_connection(kind: str, streaming: bool, refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}"
    client: Provider = OpenAIProvider(url + "/v1") if kind == "openai" else AnthropicProvider(url)
    with pytest.raises(ProviderError) as caught:
        await run(client, chat(), streaming)
    await client.aclose()
    assert caught.value.error_type is ErrorType.CONNECTION
    assert caught.value.http_status is None
    assert "cannot connect" in caught.value.message


@streaming_modes
@pytest.mark.asyncio
async def test_hanging_upstream_times_out(
    provider: Provider, upstream: ScriptedUpstream, streaming: bool
) -> None:
    upstream.script(hang=True)
    with pytest.raises(ProviderError) as caught:
        await run(provider, chat(timeout_s=SHORT_TIMEOUT_S), streaming)
    assert caught.value.error_type is ErrorType.TIMEOUT
    assert caught.value.retryable


@pytest.mark.asyncio
async def test_slow_body_counts_against_the_complete_deadline(
    provider: Provider, upstream: ScriptedUpstream
) -> None:
    upstream.script(latency_s=5.0)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(timeout_s=SHORT_TIMEOUT_S))
    assert caught.value.error_type is ErrorType.TIMEOUT


@pytest.mark.asyncio
async def test_slow_first_token_times_out_the_stream(provider: Provider, upstream: ScriptedUpstream) -> None:
    upstream.script(ttft_s=5.0)
    received, error = await stream_until_error(provider, chat(timeout_s=SHORT_TIMEOUT_S))
    assert received == []
    assert error.error_type is ErrorType.TIMEOUT


@pytest.mark.asyncio
async def test_stalled_stream_times_out_after_the_first_chunk(
    provider: Provider, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="one two three", chunk_delay_s=5.0)
    received, error = await stream_until_error(provider, chat(timeout_s=SHORT_TIMEOUT_S))
    assert received == ["one "]
    assert error.error_type is ErrorType.TIMEOUT
    assert "mid-stream" in error.message


@pytest.mark.asyncio
async def test_dropped_connection_mid_stream(provider: Provider, upstream: ScriptedUpstream) -> None:
    upstream.script(text="one two three four", drop_after=2)
    received, error = await stream_until_error(provider, chat())
    assert received == ["one ", "two "]
    assert error.error_type is ErrorType.CONNECTION
    assert "mid-stream" in error.message


@pytest.mark.parametrize("after", [0, 2, 4])
@pytest.mark.asyncio
async def test_stream_ending_without_a_finish_is_a_protocol_error(
    provider: Provider, upstream: ScriptedUpstream, after: int
) -> None:
    upstream.script(text="one two three four", end_after=after)
    received, error = await stream_until_error(provider, chat())
    assert len(received) == after
    assert error.error_type is ErrorType.PROTOCOL
    assert not error.retryable


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(500, ErrorType.SERVER_ERROR), (529, ErrorType.SERVER_ERROR), (429, ErrorType.RATE_LIMITED)],
)
@pytest.mark.asyncio
async def test_error_event_mid_stream(
    provider: Provider, upstream: ScriptedUpstream, status: int, error_type: ErrorType
) -> None:
    upstream.script(
        text="one two three",
        error_event_after=1,
        error_event_status=status,
        error_message="engine overloaded",
    )
    received, error = await stream_until_error(provider, chat())
    assert received == ["one "]
    assert error.error_type is error_type
    assert "engine overloaded" in error.message and "mid-stream" in error.message


# -- malformed replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["this is not json", "[1, 2]", '{"id": "x"}'])
@pytest.mark.asyncio
async def test_unreadable_body_is_a_protocol_error(
    provider: Provider, upstream: ScriptedUpstream, body: str
) -> None:
    upstream.script(raw_body=body)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat())
    assert caught.value.error_type is ErrorType.PROTOCOL
    assert "'m-small'" in caught.value.message


@pytest.mark.parametrize("body", ["data: {broken\n\n", "data: [1]\n\n", "event: message_delta\ndata: {}\n\n"])
@pytest.mark.asyncio
async def test_unreadable_stream_is_a_protocol_error(
    provider: Provider, upstream: ScriptedUpstream, body: str
) -> None:
    upstream.script(raw_body=body)
    received, error = await stream_until_error(provider, chat())
    assert received == []
    assert error.error_type is ErrorType.PROTOCOL


# -- connection reuse --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_abandoned_stream_returns_its_connection(kind: str, upstream: ScriptedUpstream) -> None:
    # One connection in the pool: a stream left early must give it back for the next call.
    client = make_provider(kind, upstream, max_connections=1)
    upstream.script(text="one two three four")
    async with aclosing(client.stream(chat())) as events:  # type: ignore[type-var]
        async for event in events:
            assert event == TextDelta("one ")
            break
    assert (await client.complete(chat(timeout_s=2.0))).content == "one two three four"
    await client.aclose()


# -- shared parsing --------------------------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "7"}, now) == 7.0
    assert parse_retry_after({"retry-after": " 2.5 "}, now) == 2.5
    assert parse_retry_after({"retry-after": "Thu, 01 Jan 2026 12:00:30 GMT"}, now) == 30.0
    assert parse_retry_after({"retry-after": "Thu, 01 Jan 2026 11:00:00 GMT"}, now) == 0.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5
    assert parse_retry_after({"retry-after": "-3"}, now) is None
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({"retry-after": "nan"}, now) is None
    assert parse_retry_after({}, now) is None


@pytest.mark.asyncio
async def test_sse_parsing() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": keep-alive", "event: delta", 'data: {"a":', "data: 1}", "", "", "data:x", "id: 7"]:
            yield line

    events = [(e.event, e.data) for e in [event async for event in iter_sse(lines())]]
    assert events == [("delta", '{"a":\n1}'), ("message", "x")]


# -- the factory ---------------------------------------------------------------------------------------


def tier(upstream: ScriptedUpstream, provider: str, **fields: Any) -> TierConfig:
    base_url = upstream.openai_url if provider == "openai" else upstream.base_url
    return TierConfig(
        name=f"{provider}-tier", provider=provider, base_url=base_url, model="m-small", **fields
    )


@pytest.mark.asyncio
async def test_factory_builds_each_kind_with_key_and_headers(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERWISE_TEST_KEY", KEY)
    for kind, cls in [("openai", OpenAIProvider), ("anthropic", AnthropicProvider)]:
        client = build_provider(
            tier(
                upstream,
                kind,
                api_key_env="TIERWISE_TEST_KEY",
                headers={"x-team": "search"},
                max_output_tokens=77,
            )
        )
        assert isinstance(client, cls) and client.kind == kind
        assert (await client.complete(chat())).content
        await client.aclose()
        assert upstream.requests[-1].headers["x-team"] == "search"
    assert upstream.requests[-1].body["max_tokens"] == 77  # the Anthropic tier's output cap


@pytest.mark.asyncio
async def test_factory_default_max_tokens_overrides_the_tier_cap(upstream: ScriptedUpstream) -> None:
    client = build_provider(tier(upstream, "anthropic"), default_max_tokens=55)
    with pytest.raises(ProviderError):  # no api_key_env: the key-checking upstream refuses
        await client.complete(chat())
    await client.aclose()
    assert "x-api-key" not in upstream.requests[-1].headers
    assert upstream.requests[-1].body["max_tokens"] == 55


@pytest.mark.parametrize("value", [None, ""])
def test_factory_refuses_a_missing_api_key(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("TIERWISE_ABSENT_KEY", raising=False)
    else:
        monkeypatch.setenv("TIERWISE_ABSENT_KEY", value)
    config = TierConfig(
        name="big",
        provider="openai",
        base_url="http://127.0.0.1:1/v1",
        model="m",
        api_key_env="TIERWISE_ABSENT_KEY",
    )
    with pytest.raises(ConfigError, match="TIERWISE_ABSENT_KEY"):
        build_provider(config)


# -- the scripted upstream itself, from a sync test ------------------------------------------------------


def test_upstream_in_a_thread_speaks_and_validates_both_protocols() -> None:
    with serve_in_thread() as upstream, httpx.Client(timeout=5.0) as http:
        upstream.script(text="threaded hello")
        chat_body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        reply = http.post(upstream.openai_url + "/chat/completions", json=chat_body)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == "threaded hello"
        # The Messages API refuses a system turn, a missing max_tokens, a missing version header.
        version = {"anthropic-version": "2023-06-01"}
        system_turn = {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}
        refused = [
            http.post(upstream.base_url + "/v1/messages", json=system_turn, headers=version),
            http.post(upstream.base_url + "/v1/messages", json=chat_body, headers=version),
            http.post(upstream.base_url + "/v1/messages", json={**chat_body, "max_tokens": 5}),
        ]
        assert [r.status_code for r in refused] == [400, 400, 400]
        assert [r.json()["error"]["type"] for r in refused] == ["invalid_request_error"] * 3
        assert len(upstream.requests) == 4
