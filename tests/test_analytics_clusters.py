"""Where the money goes: the clusters view of ``tierwise report --clusters K`` and the dashboard.

Synthetic embeddings with known groups and known spend pin the 80 %-of-spend selection,
the per-cluster numbers and determinism; a real server (the embedder running, a
scripted upstream) pins that prompt text reaches a report or the dashboard only for
a tenant that allows storing prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.harness import AUTH, OTHER_AUTH, build_config, config_dict, running_server
from tests.test_analytics_dashboard import ADMIN_KEY, CHROMIUM, _chromium, _report
from tests.upstream import ScriptedUpstream
from tierwise.classifier.features import EMBEDDING_DIM, STATISTIC_NAMES
from tierwise.router.analytics.clusters import SpentRequest, describe_clusters, shared_head, spend_set_size
from tierwise.router.auth import sha256_hex
from tierwise.router.learning.traffic import TrafficSample
from tierwise.training.process import free_port
from tierwise.v1 import tierwise_pb2 as pb

# Known groups: (name, requests, cost of each, tier, cache result of each).
GROUPS = (
    ("a", 10, Decimal("0.05"), "large", "miss"),  # 0.50: half the spend
    ("b", 20, Decimal("0.015"), "small", "miss"),  # 0.30: with a, exactly 80 %
    ("c", 40, Decimal("0.004"), "small", "exact"),  # 0.16
    ("d", 10, Decimal("0.004"), "small", "miss"),  # 0.04
)


def _synthetic(
    seed: int = 7,
) -> tuple[list[SpentRequest], dict[str, TrafficSample], dict[str, set[str]]]:
    """Four tight groups around orthogonal unit vectors, plus one request with no embedding."""
    rng = np.random.default_rng(seed)
    requests, samples, members = [], {}, {}
    for g, (name, count, cost, tier, cache) in enumerate(GROUPS):
        members[name] = set()
        for i in range(count):
            request_id = f"{name}-{i:02d}"
            vector = np.zeros(EMBEDDING_DIM, dtype=np.float32)
            vector[g] = 1.0
            vector += rng.normal(0, 0.02, EMBEDDING_DIM).astype(np.float32)
            tenant = "acme" if i % 2 else "globex"
            saved = Decimal("0.001")
            requests.append(SpentRequest(request_id, tenant, tier, cache, 100 + g, 10 * g, cost, saved))
            samples[request_id] = TrafficSample(
                request_id=request_id,
                ts=1000.0 + i,
                tenant=tenant,
                feature="f",
                experiment="",
                arm="",
                tier=tier,
                model="m",
                model_version="",
                cache_result=cache,
                input_tokens=100 + g,
                turns=1,
                embedding=(vector / np.linalg.norm(vector)).astype("<f4").tobytes(),
                statistics=np.zeros(len(STATISTIC_NAMES), dtype="<f4").tobytes(),
                prompt=f"{tenant} prompt {request_id}",
            )
            members[name].add(request_id)
    requests.append(
        SpentRequest("judge-call:shadow", "acme", "large", "miss", 5, 5, Decimal("1"), Decimal(0))
    )
    return requests, samples, members


def test_spend_set_size_is_the_fewest_leading_that_reach_the_target_exactly() -> None:
    assert spend_set_size([]) == 0
    assert spend_set_size([Decimal(0), Decimal(0)]) == 0  # nothing spent: no cluster drives spend
    assert spend_set_size([Decimal("0.5"), Decimal("0.3"), Decimal("0.2")]) == 2  # 0.8 exactly
    assert spend_set_size([Decimal("0.5"), Decimal("0.29"), Decimal("0.21")]) == 3
    assert spend_set_size([Decimal("0.9"), Decimal("0.1")]) == 1
    assert spend_set_size([Decimal("0.5"), Decimal("0.5")], Decimal(1)) == 2


def test_known_clusters_their_spend_and_the_80_percent_set() -> None:
    requests, samples, members = _synthetic()
    scores = {"a-01": 1.0, "a-03": 0.5, "b-00": 0.25}
    view = describe_clusters(requests, samples, scores, 4, {"acme"})

    assert view.requests == 81 and view.clustered_requests == 80
    assert view.spend_usd == Decimal("2.00") and view.clustered_spend_usd == Decimal("1.00")
    assert [c.spend_usd for c in view.clusters] == [
        Decimal("0.50"),
        Decimal("0.300"),
        Decimal("0.16"),
        Decimal("0.04"),
    ]
    assert view.top == 2 and [c.rank for c in view.leading] == [1, 2]
    assert [c.cumulative_share for c in view.clusters] == pytest.approx([0.5, 0.8, 0.96, 1.0])
    a, b, c, d = view.clusters
    assert (a.requests, b.requests, c.requests, d.requests) == (10, 20, 40, 10)
    assert a.tiers[0].tier == "large" and a.tiers[0].requests == 10
    assert b.mean_input_tokens == 101 and b.mean_output_tokens == 10
    # Caching and routing: c's requests were all cache hits, the others routed.
    assert c.cache_hit_share == 1.0 and c.cache_saved_usd == Decimal("0.040") and c.routing_saved_usd == 0
    assert a.cache_hit_share == 0.0 and a.routing_saved_usd == Decimal("0.010") and a.cache_saved_usd == 0
    # Cost per judged quality: a's two judged requests spent 0.10 for 1.5 quality units.
    assert a.judged == 2 and a.mean_quality == 0.75
    assert a.usd_per_quality == Decimal("0.066666667") and a.tiers[0].usd_per_quality == a.usd_per_quality
    assert b.usd_per_quality == Decimal("0.06") and c.usd_per_quality is None
    # The clusters are the known groups (which ids, not just how many).
    by_prompt = {p.split()[-1][0] for cl in view.clusters for p in cl.prompts}
    assert by_prompt == {"a", "b", "c", "d"}
    for cluster, name in zip(view.clusters, "abcd", strict=True):
        assert all(p.split()[-1] in members[name] for p in cluster.prompts)


def test_prompts_only_of_tenants_allowed_now() -> None:
    requests, samples, _ = _synthetic()
    allowed = describe_clusters(requests, samples, {}, 4, {"acme"})
    prompts = [p for c in allowed.clusters for p in c.prompts]
    assert len(prompts) == 12 and all(p.startswith("acme prompt") for p in prompts)
    # globex's samples carry text here (stored before it withdrew, say): still never shown.
    withdrawn = describe_clusters(requests, samples, {}, 4, set())
    assert all(c.prompts == () for c in withdrawn.clusters)
    # A few-shot preamble all of them share is cut (here with "acme prompt "), so what sets each apart shows.
    preamble = "Answer with one letter.\nQ: Which is a mammal? A) eel B) bat\nAnswer: B\n\nQ: "
    assert shared_head([preamble + "x?", preamble + "y?"]) == len(preamble)
    assert shared_head([preamble + "x?", preamble + "x?"]) == 0 and shared_head(["short a", "short b"]) == 0
    few_shot = {i: replace(s, prompt=preamble + (s.prompt or "")) for i, s in samples.items()}
    cut = describe_clusters(requests, few_shot, {}, 4, {"acme"})
    assert [c.prompts for c in cut.clusters] == [
        tuple(f"… {p.split()[-1]}" for p in c.prompts) for c in allowed.clusters
    ]


def test_same_window_same_clusters_in_any_order_and_when_fitted_on_a_subsample() -> None:
    requests, samples, _ = _synthetic()
    first = describe_clusters(requests, samples, {}, 3, {"acme"})
    shuffled = list(requests)
    random.Random(3).shuffle(shuffled)
    assert describe_clusters(shuffled, dict(reversed(samples.items())), {}, 3, {"acme"}) == first
    assert describe_clusters(requests, samples, {}, 3, {"acme"}) == first
    # Fitted on 30 of 80 (the smallest id hashes), every request is still assigned to its group.
    sub = describe_clusters(requests, samples, {}, 4, {"acme"}, fit_limit=30)
    assert [c.requests for c in sub.clusters] == [10, 20, 40, 10]
    # More clusters asked for than there are distinct prompts: one per distinct embedding.
    few = [r for r in requests if r.request_id in ("a-00", "b-00")]
    assert len(describe_clusters(few, samples, {}, 8, set()).clusters) == 2


ACME = (
    "Write a Python function that reverses a linked list.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is a good recipe for a vegetable lasagne?",
)
GLOBEX = ("globex-private: our merger with Initech closes on Friday", "globex-private: payroll for Q3")


async def _traffic(svc: Any) -> str:
    for i, prompt in enumerate([*ACME, ACME[0]]):  # the repeat is an exact cache hit
        request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=prompt)], feature="dev")
        if i == 2:
            request.tier = "large"
        reply = await svc.stub.Complete(request, metadata=AUTH)
        if i == 0:
            judged = reply.request_id
    for prompt in GLOBEX:
        request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=prompt)], feature="hr")
        await svc.stub.Complete(request, metadata=OTHER_AUTH)
    await svc.stub.Feedback(
        pb.FeedbackRequest(request_id=judged, score=0.5, source=pb.FEEDBACK_SOURCE_JUDGE), metadata=AUTH
    )
    return judged


@pytest.mark.asyncio
async def test_report_and_dashboard_show_prompts_only_of_allowing_tenants(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script("small-model", text="s", input_tokens=400, output_tokens=100)
        upstream.script("large-model", text="l", input_tokens=400, output_tokens=100)
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["server"]["metrics_port"] = free_port()
        data["auth"]["api_keys"].append({"key_sha256": sha256_hex(ADMIN_KEY), "tenant": "ops", "admin": True})
        data["cache"] = {"enabled": True}  # the embedder runs: samples carry the request's embedding
        data["learning"] = {"traffic": {"store_prompts_tenants": ["acme"], "flush_interval_s": 0.05}}
        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(data))
        async with running_server(build_config(data)) as svc:
            await _traffic(svc)
            ledger, learning = svc.server.service.accounting.ledger, svc.server.service.accounting.learning
            assert ledger is not None and await ledger.flush(10)
            assert learning.traffic is not None and await learning.traffic.flush(timeout_s=30)
            outputs = {
                "json": await _report(config_file, "--since", "1h", "--format", "json", "--clusters", "3"),
                "table": await _report(config_file, "--since", "1h", "--clusters", "3", "--quality"),
                "globex": await _report(
                    config_file, "--since", "1h", "--clusters", "3", "--tenant", "globex"
                ),
            }
            base = f"http://127.0.0.1:{svc.server.metrics_port}/dashboard"
            async with httpx.AsyncClient(timeout=60) as client:
                admin = await client.get(base, params={"clusters": "3"}, auth=("ops", ADMIN_KEY))
                mine = await client.get(base, params={"clusters": "3"}, headers=dict(AUTH))
                theirs = await client.get(base, params={"clusters": "3"}, headers=dict(OTHER_AUTH))
                bad = await client.get(base, params={"clusters": "0"}, auth=("ops", ADMIN_KEY))
            dom = ""
            if CHROMIUM is not None:
                url = f"http://ops:{ADMIN_KEY}@127.0.0.1:{svc.server.metrics_port}/dashboard?clusters=3"
                dom = await _chromium("--dump-dom", url, profile=tmp_path / "chromium")

    report = json.loads(outputs["json"])["clusters"]
    assert report["requests"] == 6 and report["clustered_requests"] == 6  # every request was embedded
    assert Decimal(report["clustered_spend_usd"]) == Decimal(
        json.loads(outputs["json"])["total"]["spend_usd"]
    )
    clusters = report["clusters"]
    assert len(clusters) == 3 and sum(c["requests"] for c in clusters) == 6
    assert sum(Decimal(c["spend_usd"]) for c in clusters) == Decimal(report["clustered_spend_usd"])
    assert any(c["leading"] for c in clusters) and report["leading"] <= 3
    assert sum(c["cache_hit_share"] * c["requests"] for c in clusters) == pytest.approx(1, abs=1e-3)
    assert sum(c["judged"] for c in clusters) == 1
    assert any(c["usd_per_quality"] is not None for c in clusters)
    shown = {p for c in clusters for p in c["prompts"]}
    assert shown and shown <= set(ACME)  # acme allows it; its prompts represent its clusters
    assert (
        "representative prompts" in outputs["table"] and "cost per unit of judged quality" in outputs["table"]
    )
    assert "where the money goes" in outputs["globex"]
    assert admin.status_code == mine.status_code == theirs.status_code == 200 and bad.status_code == 400
    assert '"clusters":{' in admin.text and any(p in admin.text for p in ACME)
    for text in (*outputs.values(), admin.text, mine.text, theirs.text, dom):
        for secret in GLOBEX:
            assert secret not in text  # globex never allowed storing its prompts
    for prompt in ACME:
        assert prompt not in theirs.text and prompt not in outputs["globex"]  # a tenant sees its own only
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package `chromium`): the browser half is skipped")
    assert 'data-ready="1"' in dom and 'id="chart-clusters"' in dom
    table = dom[dom.index('id="table-clusters"') :]
    assert "<table>" in table[:200] and any(p in table for p in ACME)
