"""An experiment through the real gRPC server: each user's arm is the hash's, sticky across a
restart; the arm's policy really routes (cheapest vs strongest); the arm travels in the
decision, the spend record, the metrics and (joined by request_id) the feedback; the metadata
override forces an arm and a bad one is INVALID_ARGUMENT naming the field; a restart with
changed weights is refused; an arm with the cache off never reads it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.config import Config, ConfigError
from tierwise.router.experiments.assignment import Assigner
from tierwise.router.service import build_service
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.training.cli.experiment import load_report
from tierwise.training.process import free_port
from tierwise.v1 import tierwise_pb2 as pb

ARMS = {"cheap": "small", "strong": "large"}  # arm -> the tier its policy picks
USERS = [f"user-{i}" for i in range(24)]


def experiment_config(tmp_path: Path, upstream: ScriptedUpstream, **overrides: Any) -> Config:
    arms = [
        {"name": "cheap", "weight": 1, "policy": "cheapest"},
        {"name": "strong", "weight": 1, "policy": "strongest"},
    ]
    experiment = {"name": "tiers", "control": "cheap", "arms": arms, **overrides}
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, experiments=[experiment])
    data["server"]["metrics_port"] = free_port()
    return build_config(data)


def request(user: str, text: str = "What is 2 + 2?", **metadata: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content=text)], user=user, feature="chat", metadata=metadata
    )


def expected_arm(config: Config, user: str) -> str:
    spec = RequestSpec(tenant="acme", messages=(ChatMessage("user", "x"),), user=user, feature="chat")
    assignment = Assigner(config.experiments).assign(spec)
    assert assignment is not None
    return assignment.arm


def requests_by_arm(exposition: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "tierwise_requests_total":
                counts[sample.labels["arm"]] += int(sample.value)
    return counts


@pytest.mark.asyncio
async def test_arm_routes_and_travels_through_decision_ledger_metrics_and_feedback(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        config = experiment_config(tmp_path, upstream)
        async with running_server(config) as svc:
            arm_of: dict[str, str] = {}  # request_id -> arm
            for user in USERS:
                reply = await svc.stub.Complete(request(user), metadata=AUTH)
                decision = reply.decision
                assert decision.experiment == "tiers"
                assert decision.arm == expected_arm(config, user)
                assert decision.tier == ARMS[decision.arm], "the arm's own policy chose the tier"
                assert decision.policy == ("cheapest" if decision.arm == "cheap" else "strongest")
                arm_of[reply.request_id] = decision.arm
            assert set(arm_of.values()) == set(ARMS), "24 users hash into both arms"
            # Route decides with the arm too, and the same user gets the same arm.
            route = await svc.stub.Route(
                pb.RouteRequest(
                    messages=[pb.ChatMessage(role="user", content="hi")], user=USERS[0], feature="chat"
                ),
                metadata=AUTH,
            )
            assert route.arm == expected_arm(config, USERS[0])

            # The override forces the other arm; a bad one names the field.
            natural = expected_arm(config, USERS[0])
            other = "strong" if natural == "cheap" else "cheap"
            forced = await svc.stub.Complete(request(USERS[0], **{"tierwise-arm": other}), metadata=AUTH)
            assert forced.decision.arm == other and forced.decision.tier == ARMS[other]
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await svc.stub.Complete(request(USERS[0], **{"tierwise-arm": "nope"}), metadata=AUTH)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "metadata['tierwise-arm']" in (bad.value.details() or "")
            assert "no arm 'nope'" in (bad.value.details() or "")

            # Feedback: cheap answers scored 0.5, strong ones 0.9.
            for request_id, arm in arm_of.items():
                score = 0.5 if arm == "cheap" else 0.9
                await svc.stub.Feedback(
                    pb.FeedbackRequest(request_id=request_id, score=score, source=pb.FEEDBACK_SOURCE_APP),
                    metadata=AUTH,
                )
            async with httpx.AsyncClient() as client:
                exposition = (await client.get(f"http://127.0.0.1:{svc.server.metrics_port}/metrics")).text
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)

    counts = Counter(arm_of.values())
    # Metrics count every finished request: the Complete calls, the Route call, the forced one.
    assert requests_by_arm(exposition) == counts + Counter([natural, other])
    report = await load_report(config, config.experiments[0], 0, time.time() + 1)
    arms = {a.arm: a for a in report.arms}
    # The forced request and the Route decision (no model called) are left out.
    assert {name: a.requests for name, a in arms.items()} == dict(counts)
    assert report.forced_excluded == 1
    assert arms["cheap"].quality == pytest.approx(0.5) and arms["strong"].quality == pytest.approx(0.9)
    assert arms["cheap"].judged == counts["cheap"]
    assert arms["strong"].cost_per_request_usd > arms["cheap"].cost_per_request_usd > 0
    (comparison,) = report.comparisons
    assert comparison.arm == "strong" and comparison.quality is not None
    assert comparison.quality.estimate == pytest.approx(0.4) and comparison.quality.significant


@pytest.mark.asyncio
async def test_assignment_is_sticky_across_restarts_and_changed_weights_are_refused(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        config = experiment_config(tmp_path, upstream)
        arms: list[list[str]] = []
        for _ in range(2):
            async with running_server(config) as svc:
                replies = [await svc.stub.Complete(request(user), metadata=AUTH) for user in USERS[:8]]
                arms.append([r.decision.arm for r in replies])
        assert arms[0] == arms[1]
        reweighted = config.model_copy(
            update={
                "experiments": (
                    experiment_config(tmp_path, upstream)
                    .experiments[0]
                    .model_copy(
                        update={
                            "arms": tuple(
                                a.model_copy(update={"weight": w})
                                for a, w in zip(config.experiments[0].arms, (9, 1), strict=True)
                            )
                        }
                    ),
                )
            }
        )
        with pytest.raises(ConfigError, match="running with another definition"):
            await build_service(reweighted)
        forced = reweighted.model_copy(
            update={"experiments": (reweighted.experiments[0].model_copy(update={"force": True}),)}
        )
        service = await build_service(forced)
        await service.aclose()


@pytest.mark.asyncio
async def test_an_arm_with_the_cache_off_never_reads_it(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        arms = [{"name": "cached", "weight": 1}, {"name": "uncached", "weight": 1, "cache": False}]
        experiment = {"name": "cache", "control": "cached", "arms": arms}
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, experiments=[experiment])
        data["cache"] = {"enabled": True}
        config = build_config(data)
        async with running_server(config) as svc:
            hits: dict[str, list[bool]] = {"cached": [], "uncached": []}
            for arm in hits:
                for _ in range(3):
                    reply = await svc.stub.Complete(
                        request("same-user", "Name the capital of France.", **{"tierwise-arm": arm}),
                        metadata=AUTH,
                    )
                    hits[arm].append(reply.decision.cache_hit)
                    # The answer is stored off the request path: stored before the repeat.
                    assert svc.server.service.cache is not None
                    await svc.server.service.cache.drain()
    assert hits["cached"] == [False, True, True]
    assert hits["uncached"] == [False, False, False]


@pytest.mark.asyncio
async def test_a_failed_request_is_counted_in_its_arm(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script(status=400, text="bad request")  # every tier refuses: no fallback helps
        config = experiment_config(tmp_path, upstream)
        async with running_server(config) as svc:
            with pytest.raises(grpc.aio.AioRpcError):
                await svc.stub.Complete(request(USERS[0]), metadata=AUTH)
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)
            now = time.time()
            (row,) = await ledger.totals(now - 3600, now + 3600, ["experiment", "arm"])
    assert row.group == {"experiment": "tiers", "arm": expected_arm(config, USERS[0])}
    assert row.errors == 1
