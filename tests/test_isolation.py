"""Cache isolation through the real server (ARCHITECTURE.md, invariant 1).

Tenant A fills the cache with answers only A may see. Other tenants then ask A's exact prompts
and close paraphrases, with the same feature and metadata, through Route, Complete and
CompleteStream: not one hit, every answer comes from the upstream, and A's entries are neither
served nor overwritten. The paraphrases are close enough that A itself is served them from the
cache (the positive control), so a miss for the others means isolation, not a weak match.

Within one tenant, a different system prompt or a different conversation before the same
question is also never served the stored answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.auth import sha256_hex
from tierwise.v1 import tierwise_pb2 as pb

Metadata = tuple[tuple[str, str], ...]

# A question and a close paraphrase of it.
PROMPTS: list[tuple[str, str]] = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("How do I change the email address on my account?", "How can I change the email address on my account?"),
    ("What is your refund policy?", "What's your refund policy?"),
    ("How long does shipping to Canada take?", "How long does shipping to Canada usually take?"),
    ("Can I upgrade my plan in the middle of a billing cycle?", "Can I upgrade my plan mid billing cycle?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("Where can I download my invoices?", "Where do I download my invoices?"),
    ("Do you offer a discount for students?", "Do you offer student discounts?"),
    ("How do I enable two-factor authentication?", "How can I turn on two-factor authentication?"),
    ("What payment methods do you accept?", "Which payment methods do you accept?"),
    ("How do I export my data as a CSV file?", "How can I export my data to a CSV file?"),
    ("Why was my card declined?", "Why did my card get declined?"),
    ("How do I add a new user to my team?", "How can I add a new user to my team?"),
    ("What are your customer support hours?", "What are the hours of your customer support?"),
    ("How do I delete my account permanently?", "How can I permanently delete my account?"),
    ("Is my data encrypted at rest?", "Is my data stored encrypted at rest?"),
    ("How do I connect the app to Slack?", "How can I connect the app with Slack?"),
    ("Can I get a copy of the API documentation?", "Can I get a copy of your API documentation?"),
    ("How do I change my billing address?", "How can I update my billing address?"),
    ("What happens when my free trial ends?", "What happens after my free trial ends?"),
    ("How do I restore a deleted project?", "How can I restore a project I deleted?"),
    ("Which browsers does the web app support?", "Which browsers are supported by the web app?"),
    ("How do I set up single sign-on with Okta?", "How can I set up single sign-on using Okta?"),
    ("Can I pause my subscription for a month?", "Can I pause my subscription for one month?"),
    ("How do I change the language of the interface?", "How can I change the interface language?"),
    ("Where is your company headquartered?", "Where are your company's headquarters?"),
    ("How do I report a security vulnerability?", "How can I report a security vulnerability?"),
    ("What is the maximum file size for uploads?", "What's the maximum file size for an upload?"),
    ("How do I transfer ownership of a workspace?", "How can I transfer ownership of my workspace?"),
    ("Do you have a mobile app for Android?", "Is there a mobile app for Android?"),
]
FEATURE = "support-bot"
TAGS = {"team": "helpdesk", "environment": "production"}
FRESH = "A fresh answer from the upstream."

INITECH_AUTH: Metadata = (("authorization", "Bearer test-key-initech"),)
UMBRELLA_AUTH: Metadata = (("authorization", "Bearer test-key-umbrella"),)


def secret(i: int) -> str:
    return f"Only acme may read this: answer {i}."


def ask(
    text: str, *, system: str | None = None, history: tuple[str, str] | None = None
) -> list[pb.ChatMessage]:
    turns = [pb.ChatMessage(role="system", content=system)] if system else []
    if history is not None:
        turns += [
            pb.ChatMessage(role="user", content=history[0]),
            pb.ChatMessage(role="assistant", content=history[1]),
        ]
    return [*turns, pb.ChatMessage(role="user", content=text)]


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Running, ScriptedUpstream]]:
    """A server with the cache on, four tenants, and the upstream it calls."""
    async with ScriptedUpstream() as upstream:
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["cache"] = {"enabled": True}
        for key, tenant in (("test-key-initech", "initech"), ("test-key-umbrella", "umbrella")):
            data["auth"]["api_keys"].append({"key_sha256": sha256_hex(key), "tenant": tenant})
        async with running_server(build_config(data)) as running:
            yield running, upstream


def request(messages: list[pb.ChatMessage], **fields: Any) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=messages, feature=FEATURE, metadata=TAGS, **fields)


async def drain(svc: Running) -> None:
    assert svc.server.service.cache is not None
    await svc.server.service.cache.drain()  # the insert runs after the answer: wait for it


async def complete(svc: Running, messages: list[pb.ChatMessage], auth: Metadata) -> pb.CompleteResponse:
    response: pb.CompleteResponse = await svc.stub.Complete(request(messages), metadata=auth)
    await drain(svc)
    return response


async def stream(
    svc: Running, messages: list[pb.ChatMessage], auth: Metadata
) -> tuple[pb.RouteDecision, str]:
    chunks = [c async for c in svc.stub.CompleteStream(request(messages), metadata=auth)]
    await drain(svc)
    assert chunks[0].WhichOneof("body") == "decision" and chunks[-1].WhichOneof("body") == "end"
    return chunks[0].decision, "".join(c.delta for c in chunks)


async def route(svc: Running, messages: list[pb.ChatMessage], auth: Metadata) -> pb.RouteDecision:
    probe = pb.RouteRequest(messages=messages, feature=FEATURE, metadata=TAGS)
    decision: pb.RouteDecision = await svc.stub.Route(probe, metadata=auth)
    return decision


async def fill_as_acme(svc: Running, upstream: ScriptedUpstream, indices: range, **context: Any) -> None:
    for i in indices:
        upstream.script(text=secret(i))
        response = await complete(svc, ask(PROMPTS[i][0], **context), AUTH)
        assert not response.decision.cache_hit and response.content == secret(i)
    upstream.script(text=FRESH)


@pytest.mark.asyncio
async def test_no_tenant_is_served_another_tenants_answer(served: tuple[Running, ScriptedUpstream]) -> None:
    svc, upstream = served
    everything = range(len(PROMPTS))
    await fill_as_acme(svc, upstream, everything)

    # Positive control: acme is served its own answers, for the prompts and for most paraphrases.
    paraphrase_hits = 0
    for i in everything:
        own = await route(svc, ask(PROMPTS[i][0]), AUTH)
        assert own.cache_hit and own.cached.kind == "exact" and own.cached.content == secret(i)
        similar = await route(svc, ask(PROMPTS[i][1]), AUTH)
        if similar.cache_hit:
            assert similar.cached.content == secret(i), (PROMPTS[i][1], similar.cached.content)
            paraphrase_hits += 1
    assert paraphrase_hits >= len(PROMPTS) * 2 // 3, f"only {paraphrase_hits} paraphrases hit for acme itself"

    # globex probes through Route (which stores nothing): the prompts and the paraphrases.
    for i in everything:
        for text in PROMPTS[i]:
            decision = await route(svc, ask(text), OTHER_AUTH)
            assert not decision.cache_hit, (text, decision.cached.content)

    # initech asks the exact prompts through Complete, umbrella the paraphrases through CompleteStream:
    # each answer comes from the upstream (and is then cached for that tenant alone).
    before = len(upstream.requests)
    for i in everything:
        response = await complete(svc, ask(PROMPTS[i][0]), INITECH_AUTH)
        assert not response.decision.cache_hit and response.content == FRESH, PROMPTS[i][0]
        decision, text = await stream(svc, ask(PROMPTS[i][1]), UMBRELLA_AUTH)
        assert not decision.cache_hit and text == FRESH, (
            PROMPTS[i][1],
            decision.cached.content,
            decision.cached.kind,
            decision.cached.similarity,
            decision.cached.entry_id,
            decision.cached.age_s,
        )
    assert len(upstream.requests) - before == 2 * len(PROMPTS)

    # The other tenants' inserts of the same prompts neither replaced nor touched acme's entries.
    for i in everything:
        own = await route(svc, ask(PROMPTS[i][0]), AUTH)
        assert own.cache_hit and own.cached.content == secret(i)


SYSTEM_A = "You are a support agent for Acme. Answer in English."
SYSTEM_B = "You are a support agent for Acme. Answer in German."


@pytest.mark.asyncio
async def test_a_different_system_prompt_is_never_served_the_stored_answer(
    served: tuple[Running, ScriptedUpstream],
) -> None:
    svc, upstream = served
    with_system, without_system = range(0, 10), range(10, 20)
    await fill_as_acme(svc, upstream, with_system, system=SYSTEM_A)
    await fill_as_acme(svc, upstream, without_system)
    for i in with_system:
        question, paraphrase = PROMPTS[i]
        same = await route(svc, ask(question, system=SYSTEM_A), AUTH)
        assert same.cache_hit and same.cached.content == secret(i)  # control: the same system prompt hits
        for text in (question, paraphrase):
            for other in (SYSTEM_B, None):
                decision = await route(svc, ask(text, system=other), AUTH)
                assert not decision.cache_hit, (text, other, decision.cached.content)
        response = await complete(svc, ask(question, system=SYSTEM_B), AUTH)
        assert not response.decision.cache_hit and response.content == FRESH
    for i in without_system:
        question, paraphrase = PROMPTS[i]
        for text in (question, paraphrase):
            decision = await route(svc, ask(text, system=SYSTEM_A), AUTH)
            assert not decision.cache_hit, (text, decision.cached.content)
        # Stored with SYSTEM_A now, so only the question: its paraphrase would rightly hit that entry.
        decision, answer = await stream(svc, ask(question, system=SYSTEM_A), AUTH)
        assert not decision.cache_hit and answer == FRESH, question


GYM = ("I want to cancel my gym membership.", "Sure, I can help with the gym membership.")
PHONE = ("I want to cancel my phone contract.", "Sure, I can help with the phone contract.")


@pytest.mark.asyncio
async def test_a_different_conversation_is_never_served_the_stored_answer(
    served: tuple[Running, ScriptedUpstream],
) -> None:
    svc, upstream = served
    followed_up = range(20, 30)
    await fill_as_acme(svc, upstream, followed_up, history=GYM)
    for i in followed_up:
        question, paraphrase = PROMPTS[i]
        same = await route(svc, ask(question, history=GYM), AUTH)
        assert same.cache_hit and same.cached.content == secret(i)  # control: the same conversation hits
        for text in (question, paraphrase):
            for other in (PHONE, None):
                decision = await route(svc, ask(text, history=other), AUTH)
                assert not decision.cache_hit, (text, other, decision.cached.content)
        decision, answer = await stream(svc, ask(paraphrase, history=PHONE), AUTH)
        assert not decision.cache_hit and answer == FRESH
