"""Spend through the real server: responses, the ledger and /metrics add up to each other
by tenant, feature and tag, and no prompt text or end-user id reaches the metrics."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import AUTH, OTHER_AUTH, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.training.process import free_port
from tierwise.v1 import tierwise_pb2 as pb


def metric_sums(text: str, name: str, label: str) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                sums[sample.labels[label]] += Decimal(repr(sample.value))
    return dict(sums)


def tagged_request(prompt: str, feature: str, tier: str, team: str, **fields: str) -> pb.CompleteRequest:
    """A one-message request for ``feature``, pinned to ``tier`` unless it is empty (then routed), with the
    ``team`` metadata tag and any other string ``fields``."""
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)],
        feature=feature,
        metadata={"team": team},
        **fields,
    )
    if tier:
        request.tier = tier
    return request


@contextlib.asynccontextmanager
async def metered_config(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A config (with a metrics port) over a scripted upstream whose two tiers report fixed token counts,
    up while the block runs."""
    async with ScriptedUpstream() as upstream:
        upstream.script("small-model", text="s", input_tokens=1234, output_tokens=321, cached_tokens=200)
        upstream.script("large-model", text="l", input_tokens=777, output_tokens=55)
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["server"]["metrics_port"] = free_port()
        yield data


@pytest.mark.asyncio
async def test_responses_ledger_and_metrics_reconcile(tmp_path: Path) -> None:
    async with metered_config(tmp_path) as data, running_server(build_config(data)) as svc:
        expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        by_team: dict[str, Decimal] = defaultdict(Decimal)
        cases = [
            (AUTH, "acme", "chat", "small", "red"),
            (AUTH, "acme", "search", "large", "red"),
            (OTHER_AUTH, "globex", "chat", "small", "blue"),
            (OTHER_AUTH, "globex", "chat", "large", "blue"),
        ]
        for i in range(12):
            auth, tenant, feature, tier, team = cases[i % len(cases)]
            request = tagged_request(f"secret-prompt-{i}", feature, tier, team, user=f"end-user-{i}")
            response = await svc.stub.Complete(request, metadata=auth)
            expected[(tenant, feature)] += Decimal(response.cost_usd_exact)
            by_team[team] += Decimal(response.cost_usd_exact)
        async with httpx.AsyncClient() as client:
            exposition = (await client.get(f"http://127.0.0.1:{svc.server.metrics_port}/metrics")).text
        ledger = svc.server.service.accounting.ledger
        assert ledger is not None
        assert await ledger.flush(10)
        now = time.time()
        rows = await ledger.totals(now - 3600, now + 3600, ["tenant", "feature"])
        teams = await ledger.totals(now - 3600, now + 3600, ["team"])

    ledger_costs = {(r.group["tenant"], r.group["feature"]): r.cost_usd for r in rows}
    assert ledger_costs == dict(expected)
    assert {r.group["team"]: r.cost_usd for r in teams} == dict(by_team)
    metric_by_tenant = metric_sums(exposition, "tierwise_cost_usd_total", "tenant")
    for tenant in ("acme", "globex"):
        want = sum((v for (t, _), v in expected.items() if t == tenant), Decimal(0))
        assert abs(metric_by_tenant[tenant] - want) < Decimal("0.005"), (tenant, metric_by_tenant, want)
    assert "secret-prompt" not in exposition and "end-user" not in exposition
    assert "gen_ai_client_token_usage" in exposition and "tierwise_route_decisions_total" in exposition
