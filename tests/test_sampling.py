"""Sampling after the response: shadow calls, the LLM judge, its budget, and judgments as feedback."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.learning.judge import JudgeItem, parse_score
from tierwise.router.learning.sampling import Sampler
from tierwise.router.types import ChatMessage
from tierwise.training.replay import RecordedAnswers
from tierwise.training.replay_judge import REPLAY_LABEL, ReplayJudge
from tierwise.training.routerbench import RouterBenchRow
from tierwise.v1 import tierwise_pb2 as pb


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ('{"score": 0.75}', 0.75),
        ('Sure! ```json\n{"score": 1}\n```', 1.0),
        ("Score: 0.4 because it misses a step", 0.4),
        ("0.9", 0.9),
        ("1.", 1.0),
        ('{"score": 7}', None),  # out of range: a failure, never clipped
        ('{"score": "high"}', None),
        ("score: -0.2", None),
        ("The answer looks good.", None),
        ("", None),
        ('{"score": NaN}', None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.asyncio
async def test_replay_judge_reads_the_recorded_score_of_the_answering_model() -> None:
    row = RouterBenchRow(
        "s1", "2+2?", "math", {"m-small": 0.0, "m-big": 1.0}, {"m-small": "5", "m-big": "4"}, {}
    )
    judge = ReplayJudge(RecordedAnswers([row]))
    assert judge.label == REPLAY_LABEL == "replay judge (recorded scores)"
    item = JudgeItem("r", [ChatMessage("user", "2+2?")], "whatever", "big", "m-big")
    assert (await judge.judge(item)).score == 1.0
    small = await judge.judge(JudgeItem("r", [ChatMessage("user", "2+2?")], "5", "small", "m-small"))
    assert small.score == 0.0 and small.cost_usd == 0
    missing = await judge.judge(JudgeItem("r", [ChatMessage("user", "unknown")], "x", "big", "m-big"))
    assert missing.score is None and "no recorded prompt" in missing.error


def sampled_config(tmp_path: Path, upstream: ScriptedUpstream, **sampling: Any) -> dict[str, Any]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["learning"] = {"sampling": {"rate": 1.0, "budget_usd": "1", **sampling}}
    data["ledger"] = {"flush_interval_s": 0.05}
    return data


def scrape(svc: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The server's Prometheus exposition as {(sample name, sorted labels): value}."""
    text = svc.server.service.accounting.metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sampler_of(svc: Running) -> Sampler:
    sampler = svc.server.service.accounting.learning.sampler
    assert sampler is not None
    return sampler


async def ask(svc: Running, text: str) -> Any:
    request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)], feature="chat")
    return await svc.stub.Complete(request, metadata=AUTH, timeout=30)


@pytest.mark.asyncio
async def test_the_request_returns_before_the_judge_is_called(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script("small-model", text="Paris.", input_tokens=10, output_tokens=2)
        # The strongest tier shadows and judges; it answers only once the caller has its response.
        received = asyncio.Event()
        upstream.script(
            "large-model", text='{"score": 0.8}', input_tokens=50, output_tokens=5, release=received
        )
        async with running_server(build_config(sampled_config(tmp_path, upstream))) as svc:
            reply = await ask(svc, "What is the capital of France?")
            assert reply.content == "Paris." and reply.decision.tier == "small"
            received.set()
            await sampler_of(svc).drain()
            feedback = await svc.server.service.feedback.for_request("acme", reply.request_id)
            stats = sampler_of(svc).stats()
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)
            totals = await ledger.totals(0, time.time() + 1, by=["feature"])
    # If judging ran on the request path, the request would have waited on the gate forever.
    assert [r.model for r in upstream.requests] == [
        "small-model",
        "large-model",
        "large-model",
        "large-model",
    ]
    assert stats["judgments"] == 2 and stats["shadow_calls"] == 1 and stats["judge_failures"] == 0
    by_role = {f.metadata["role"]: f for f in feedback}
    assert set(by_role) == {"served", "shadow"}
    served, shadow = by_role["served"], by_role["shadow"]
    assert served.source == "judge" and served.score == 0.8
    assert served.metadata["tier"] == "small" and shadow.metadata["tier"] == "large"
    assert served.metadata["judge"] == "llm:large:v1" and served.metadata["model_version"] == ""
    spend = {t.group["feature"]: t for t in totals}
    # one shadow call and two judge calls, at the large tier's prices, under their own feature
    assert spend["tierwise-judge"].requests == 3
    # (the upstream reports 50 input and 5 output tokens per call; large: $3 / $15 per million)
    assert spend["tierwise-judge"].cost_usd == Decimal(3 * (50 * 3 + 5 * 15)) / 10**6
    assert spend["chat"].requests == 1


@pytest.mark.asyncio
async def test_judge_spend_is_capped_by_its_budget(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script("small-model", text="ok", input_tokens=10, output_tokens=2)
        upstream.script("large-model", text='{"score": 1}', input_tokens=100, output_tokens=10)
        # shadow off: every judged answer is one judge call of at most ~(input + 64 output tokens) at large prices
        config = sampled_config(tmp_path, upstream, shadow="none", budget_usd="0.005")
        async with running_server(build_config(config)) as svc:
            for i in range(12):
                await ask(svc, f"Question number {i}: what is {i} plus {i}?")
            sampler = sampler_of(svc)
            await sampler.drain()
            stats = sampler.stats()
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)
            totals = await ledger.totals(0, time.time() + 1, filters={"feature": "tierwise-judge"})
            scraped = scrape(svc)
    spent = sum((t.cost_usd for t in totals), Decimal(0))
    assert spent <= Decimal("0.005")
    assert str(spent) == stats["spent_usd"]
    assert stats["judgments"] >= 1 and stats["skipped_budget"] >= 1
    assert stats["judgments"] + stats["skipped_budget"] == 12
    # The same counts on /metrics.
    assert scraped[("tierwise_sampling_sampled_total", ())] == 12
    assert scraped[("tierwise_sampling_judgments_total", ())] == stats["judgments"]
    assert scraped[("tierwise_sampling_skipped_budget_total", ())] == stats["skipped_budget"]
    assert scraped[("tierwise_sampling_judge_failures_total", ())] == 0
    assert scraped[("tierwise_sampling_spend_usd_total", (("kind", "judge"),))] == pytest.approx(float(spent))
    assert scraped[("tierwise_sampling_spend_usd_total", (("kind", "shadow"),))] == 0


@pytest.mark.asyncio
async def test_unparseable_judge_reply_is_a_failure_not_a_score(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script("small-model", text="ok")
        upstream.script("large-model", text="I would say it is decent.")
        async with running_server(build_config(sampled_config(tmp_path, upstream, shadow="none"))) as svc:
            reply = await ask(svc, "Say ok.")
            await sampler_of(svc).drain()
            feedback = await svc.server.service.feedback.for_request("acme", reply.request_id)
            stats = sampler_of(svc).stats()
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)
            record = await ledger.lookup(f"{reply.request_id}:judge-served", "acme")
            scraped = scrape(svc)
    assert feedback == [] and stats["judge_failures"] == 1 and stats["judgments"] == 0
    assert scraped[("tierwise_sampling_judge_failures_total", ())] == 1
    assert record is not None and record.error_type == "judge-failure" and record.cost_usd > 0


@pytest.mark.asyncio
async def test_rates_per_tier_and_arm_choose_what_is_sampled(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script(text='{"score": 0.5}')
        config = sampled_config(tmp_path, upstream, rate=1.0, rate_by_tier={"small": 0.0}, shadow="none")
        async with running_server(build_config(config)) as svc:
            await ask(svc, "Not sampled: the small tier's rate is 0.")
            pinned = pb.CompleteRequest(
                messages=[pb.ChatMessage(role="user", content="Pinned large.")], tier="large"
            )
            await svc.stub.Complete(pinned, metadata=AUTH)
            sampler = sampler_of(svc)
            await sampler.drain()
            assert sampler.stats()["sampled"] == 1 and sampler.stats()["judgments"] == 1


TOOLS = '[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]'
PHOTO = pb.ImagePart(url="https://images.example.com/map.png")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "images"), [({"tools_json": TOOLS}, []), ({}, [PHOTO])], ids=["tools", "images"]
)
async def test_a_request_with_tools_or_images_is_not_shadowed_or_judged(
    tmp_path: Path, fields: dict[str, str], images: list[pb.ImagePart]
) -> None:
    """A shadow call replays messages and sampling settings only, and the judge reads text: a
    request with tools (or a response format) has no answer a shadow tier would give alike, and
    one with images asks about what the judge cannot see."""
    async with ScriptedUpstream() as upstream:
        upstream.script("small-model", text="Paris.", input_tokens=10, output_tokens=2)
        async with running_server(build_config(sampled_config(tmp_path, upstream))) as svc:
            request = pb.CompleteRequest(
                messages=[pb.ChatMessage(role="user", content="Capital of France?", images=images)],
                feature="chat",
                **fields,
            )
            reply = await svc.stub.Complete(request, metadata=AUTH, timeout=30)
            assert reply.content == "Paris."
            await sampler_of(svc).drain()
            stats = sampler_of(svc).stats()
    assert [r.model for r in upstream.requests] == ["small-model"]  # no shadow, no judge call
    assert stats["sampled"] == 0 and stats["skipped_tools"] == 1
