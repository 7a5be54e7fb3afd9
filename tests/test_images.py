"""Images in user turns through the real server: each wire protocol gets them in its own shape,
unary and streamed; bad images are refused naming the field; the cache answers an image request
by its exact key only; and an image counts as a fixed token estimate when the upstream reports no
usage."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.tokens import IMAGE_TOKENS_DEFAULT
from tierwise.v1 import tierwise_pb2 as pb

PNG_DATA = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
PNG_URI = f"data:image/png;base64,{PNG_DATA}"
PHOTO_URL = "https://images.example.com/receipt.jpg"
TIER_OF = {"openai": "small", "anthropic": "large"}


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["cache"] = {"enabled": True}
    data["limits"] = {"max_image_bytes": 1000, "max_images": 2}
    async with running_server(build_config(data)) as running:
        yield running


def image_turn(text: str, *images: pb.ImagePart) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", content=text, images=list(images))]


async def complete(svc: Running, messages: list[pb.ChatMessage], **fields: Any) -> pb.CompleteResponse:
    response = await svc.stub.Complete(pb.CompleteRequest(messages=messages, **fields), metadata=AUTH)
    assert svc.server.service.cache is not None
    await svc.server.service.cache.drain()  # the insert runs after the answer: wait for it
    return response


async def send(svc: Running, messages: list[pb.ChatMessage], tier: str, stream: bool) -> None:
    request = pb.CompleteRequest(messages=messages, tier=tier, cache_mode=pb.CACHE_MODE_BYPASS)
    if stream:
        chunks = [c async for c in svc.stub.CompleteStream(request, metadata=AUTH)]
        assert chunks[-1].HasField("end")
    else:
        await svc.stub.Complete(request, metadata=AUTH)


EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    ("openai", "url"): {"type": "image_url", "image_url": {"url": PHOTO_URL, "detail": "high"}},
    ("openai", "data"): {"type": "image_url", "image_url": {"url": PNG_URI, "detail": "auto"}},
    ("anthropic", "url"): {"type": "image", "source": {"type": "url", "url": PHOTO_URL}},
    ("anthropic", "data"): {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA},
    },
}
PARTS = {"url": pb.ImagePart(url=PHOTO_URL, detail="high"), "data": pb.ImagePart(url=PNG_URI)}


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("source", ["url", "data"])
@pytest.mark.parametrize("kind", list(TIER_OF))
async def test_an_image_reaches_each_protocol_in_its_shape(
    svc: Running, upstream: ScriptedUpstream, kind: str, source: str, stream: bool
) -> None:
    part = PARTS[source] if kind == "openai" else pb.ImagePart(url=PARTS[source].url)  # no detail there
    await send(svc, image_turn("What is on this receipt?", part), TIER_OF[kind], stream)
    body = upstream.requests[-1].body
    assert body.get("stream", False) is stream
    assert body["messages"][-1] == {
        "role": "user",
        "content": [{"type": "text", "text": "What is on this receipt?"}, EXPECTED[(kind, source)]],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
async def test_a_text_turn_stays_a_plain_string_beside_an_image_turn(
    svc: Running, upstream: ScriptedUpstream, kind: str
) -> None:
    messages = [
        *image_turn("Read this.", PARTS["data"]),
        pb.ChatMessage(role="assistant", content="It says 12 EUR."),
        pb.ChatMessage(role="user", content="And the date?"),
    ]
    await send(svc, messages, TIER_OF[kind], stream=False)
    body = upstream.requests[-1].body
    assert body["messages"][-1] == {"role": "user", "content": "And the date?"}
    assert body["messages"][0]["content"][1] == EXPECTED[(kind, "data")]


BIG_PNG = "data:image/png;base64," + base64.b64encode(b"\x00" * 1001).decode()
BAD: list[tuple[list[pb.ChatMessage], str]] = [
    (
        [
            pb.ChatMessage(role="system", content="Be brief.", images=[pb.ImagePart(url=PHOTO_URL)]),
            pb.ChatMessage(role="user", content="hi"),
        ],
        "messages[0].images: only user messages carry images; this one is 'system'",
    ),
    (
        image_turn("hi", PARTS["url"], pb.ImagePart(url="http://images.example.com/a.png")),
        "messages[0].images[1].url: must be an https:// URL or a data:image/...;base64, URI",
    ),
    (
        image_turn("hi", pb.ImagePart(url="ftp://images.example.com/a.png")),
        "messages[0].images[0].url: must be an https:// URL",
    ),
    (image_turn("hi", pb.ImagePart()), "messages[0].images[0].url: must not be empty"),
    (
        image_turn("hi", pb.ImagePart(url="data:image/svg+xml;base64,PHN2Zz4=")),
        "messages[0].images[0].url: media type 'image/svg+xml' is not one of image/png, image/jpeg",
    ),
    (
        image_turn("hi", pb.ImagePart(url="data:image/png,rawbytes")),
        "messages[0].images[0].url: a data URI must be data:image/<type>;base64,<data>",
    ),
    (
        image_turn("hi", pb.ImagePart(url="data:image/png;base64,not base64!")),
        "messages[0].images[0].url: is not valid base64",
    ),
    (
        image_turn("hi", pb.ImagePart(url=BIG_PNG)),
        "messages[0].images[0].url: holds 1001 bytes; the limit is 1000 (limits.max_image_bytes)",
    ),
    (
        image_turn("hi", pb.ImagePart(url=PHOTO_URL, detail="ultra")),
        "messages[0].images[0].detail: must be one of auto, low, high; got 'ultra'",
    ),
    (
        image_turn("hi", PARTS["url"], PARTS["url"], PARTS["data"]),
        "messages[0].images: brings the request to 3 images; the limit is 2",
    ),
    (
        image_turn("hi", pb.ImagePart(url=PHOTO_URL + "\x1b[2J")),
        "messages[0].images[0].url: must not contain control",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("messages", "message"), BAD, ids=[b[1][:50] for b in BAD])
async def test_a_bad_image_is_invalid_argument_naming_the_field(
    svc: Running, upstream: ScriptedUpstream, messages: list[pb.ChatMessage], message: str
) -> None:
    error = await rpc_error(svc.stub.Complete(pb.CompleteRequest(messages=messages), metadata=AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(message), error.details()
    assert not upstream.requests


@pytest.mark.asyncio
async def test_an_image_turn_with_no_text_is_accepted(svc: Running, upstream: ScriptedUpstream) -> None:
    await send(svc, image_turn("", PARTS["url"]), "small", stream=False)
    assert upstream.requests[-1].body["messages"][-1]["content"] == [EXPECTED[("openai", "url")]]


QUESTION = "How can I reset my password?"
NEAR_DUPLICATE = "How can I reset my password ?"  # a semantic hit when both are text only


@pytest.mark.asyncio
async def test_an_image_request_is_not_served_a_text_answer_semantically(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="Text answer.")
    await complete(svc, image_turn(QUESTION))
    assert (await complete(svc, image_turn(NEAR_DUPLICATE))).decision.cached.kind == "semantic"
    upstream.script(text="Image answer.")
    response = await complete(svc, image_turn(NEAR_DUPLICATE, PARTS["url"]))
    assert not response.decision.cache_hit and response.content == "Image answer."
    response = await complete(svc, image_turn(QUESTION, PARTS["url"]))  # an exact text match, too
    assert not response.decision.cache_hit and response.content == "Image answer."


@pytest.mark.asyncio
async def test_a_text_request_is_not_served_an_image_answer(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="Image answer.")
    await complete(svc, image_turn(QUESTION, PARTS["data"]))
    upstream.script(text="Text answer.")
    response = await complete(svc, image_turn(NEAR_DUPLICATE))
    assert not response.decision.cache_hit and response.content == "Text answer."
    assert len(upstream.requests) == 2


@pytest.mark.asyncio
async def test_image_requests_hit_only_exactly(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script(text="Image answer.")
    await complete(svc, image_turn(QUESTION, PARTS["url"]))
    repeat = await complete(svc, image_turn(QUESTION, PARTS["url"]))
    assert repeat.decision.cached.kind == "exact" and repeat.content == "Image answer."
    # The same images with a near-duplicate text: no semantic hit.
    assert not (await complete(svc, image_turn(NEAR_DUPLICATE, PARTS["url"]))).decision.cache_hit
    # The same text with another image, or the same image at another detail: no hit either.
    assert not (await complete(svc, image_turn(QUESTION, PARTS["data"]))).decision.cache_hit
    other_detail = pb.ImagePart(url=PHOTO_URL, detail="low")
    assert not (await complete(svc, image_turn(QUESTION, other_detail))).decision.cache_hit
    assert len(upstream.requests) == 4


@pytest.mark.asyncio
async def test_an_image_counts_as_a_fixed_estimate_without_reported_usage(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="Seen.", report_usage=False)
    bypass = {"tier": "small", "cache_mode": pb.CACHE_MODE_BYPASS}
    text_only = await complete(svc, image_turn(QUESTION), **bypass)
    with_images = await complete(svc, image_turn(QUESTION, PARTS["url"], PARTS["data"]), **bypass)
    assert with_images.usage.input_tokens - text_only.usage.input_tokens == 2 * IMAGE_TOKENS_DEFAULT
    low = await complete(svc, image_turn(QUESTION, pb.ImagePart(url=PHOTO_URL, detail="low")), **bypass)
    assert low.usage.input_tokens - text_only.usage.input_tokens == 85


@pytest.mark.asyncio
async def test_a_tier_without_images_is_skipped_or_refuses_by_name(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["tiers"][0]["images"] = False  # the cheap openai tier is a text-only model
    async with running_server(build_config(data)) as svc:
        ask = svc.stub.Complete
        routed = await ask(pb.CompleteRequest(messages=image_turn("Read it.", PARTS["data"])), metadata=AUTH)
        assert routed.decision.tier == "large" and upstream.requests[-1].model == "large-model"
        # At high detail no tier can read it: the one that reads images has no detail.
        error = await rpc_error(
            ask(pb.CompleteRequest(messages=image_turn("Read it.", PARTS["url"])), metadata=AUTH)
        )
        assert error.details() == (
            "messages[0].images: no tier that could answer honours it: tier 'small' (openai) cannot honour it"
        )
        text_only = await ask(pb.CompleteRequest(messages=image_turn("Read it.")), metadata=AUTH)
        assert text_only.decision.tier == "small"
        pinned = pb.CompleteRequest(messages=image_turn("Read it.", PARTS["data"]), tier="small")
        error = await rpc_error(svc.stub.Complete(pinned, metadata=AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "messages[0].images: tier 'small' (openai) cannot honour it"
    assert len(upstream.requests) == 2
