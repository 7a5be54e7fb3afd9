"""Prometheus metrics: GenAI and tierwise series, bounded labels, no private text, cents that reconcile."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from pydantic import ValidationError

from tests.test_ledger import spend
from tests.test_ledger_builder import SALT, config, decision, request
from tierwise.router.config import MetricsConfig
from tierwise.router.ledger.builder import SpendRecordBuilder
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.router.observability.admin_http import AdminServer
from tierwise.router.observability.label_values import OTHER, BoundedLabelValues
from tierwise.router.observability.metrics import DURATION_BUCKETS, TOKEN_BUCKETS, Metrics
from tierwise.router.outcome import Attempt, Completion, Latency
from tierwise.router.types import ChatMessage, TokenUsage

PROMPT = "PROMPT-zebra-quartz-7731 please summarise my medical record"
USER = "user-4711@example.com"
TAG = "TAG-VALUE-secret-project"

STREAMED = spend(1, total_ms=900.0, upstream_ms=880.0, overhead_ms=20.0, ttft_ms=300.0, output_tokens=30)
CACHED = spend(2, cache_result="semantic", attempts=0, cost_usd=Decimal(0), saved_usd=Decimal("0.0008"))
FAILED = spend(
    3,
    status="UNAVAILABLE",
    error_type="timeout",
    attempts=2,
    fallback=True,
    cost_usd=Decimal(0),
    upstream_ms=5000.0,
)
REFUSED = spend(4, status="UNAVAILABLE", error_type="circuit_open", attempts=2, cost_usd=Decimal(0))


def families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def test_genai_and_tierwise_series_have_their_names_labels_and_buckets() -> None:
    metrics = Metrics()
    for rec in (STREAMED, CACHED, FAILED, REFUSED):
        metrics.observe_spend(rec)
    metrics.observe_decision("small", "cheapest")
    metrics.observe_cache("semantic")
    metrics.set_circuit_state("large", "half-open")
    metrics.set_budget("tenant:acme", Decimal("12.5"), Decimal("87.5"))
    found = families(metrics.exposition().decode())

    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "small-model",
    }
    tokens = [s for s in found["gen_ai_client_token_usage"] if s[0].endswith("_count")]
    assert sorted(s[1]["gen_ai_token_type"] for s in tokens) == [
        "input",
        "output",
    ]  # the cached one called nothing
    assert all({**genai, "gen_ai_token_type": s[1]["gen_ai_token_type"]} == s[1] for s in tokens)
    token_le = [float(s[1]["le"]) for s in found["gen_ai_client_token_usage"] if s[0].endswith("_bucket")]
    assert token_le == [*TOKEN_BUCKETS, float("inf")] * 2  # input and output
    durations = {
        s[1]["error_type"]: s
        for s in found["gen_ai_client_operation_duration_seconds"]
        if s[0].endswith("_count")
    }
    assert set(durations) == {"", "timeout"}  # no upstream call was made for the refused one
    duration_le = [
        float(s[1]["le"])
        for s in found["gen_ai_client_operation_duration_seconds"]
        if s[0].endswith("_bucket")
    ]
    assert duration_le == [*DURATION_BUCKETS, float("inf")] * 2  # success and timeout
    ttft = [s for s in found["gen_ai_server_time_to_first_token_seconds"] if s[0].endswith("_sum")]
    assert ttft == [("gen_ai_server_time_to_first_token_seconds_sum", genai, 0.3)]
    tpot = [s for s in found["gen_ai_server_time_per_output_token_seconds"] if s[0].endswith("_sum")]
    assert tpot[0][2] == pytest.approx(0.6 / 29)

    spend_labels = {"tenant": "acme", "feature": "chat", "tier": "small", "model": "small-model", "arm": ""}
    assert ("tierwise_cost_usd_total", spend_labels, pytest.approx(0.0000815)) in found["tierwise_cost_usd"]
    assert ("tierwise_saved_cost_usd_total", spend_labels, pytest.approx(0.0008)) in found[
        "tierwise_saved_cost_usd"
    ]
    assert ("tierwise_fallbacks_total", spend_labels, 1.0) in found["tierwise_fallbacks"]
    statuses = {
        (s[1]["status"], s[1]["cache_result"]) for s in found["tierwise_requests"] if s[0].endswith("_total")
    }
    assert statuses == {("OK", "miss"), ("OK", "semantic"), ("UNAVAILABLE", "miss")}
    assert ("tierwise_cache_lookups_total", {"result": "semantic"}, 1.0) in found["tierwise_cache_lookups"]
    assert ("tierwise_route_decisions_total", {"tier": "small", "reason": "cheapest"}, 1.0) in found[
        "tierwise_route_decisions"
    ]
    assert found["tierwise_circuit_state"] == [("tierwise_circuit_state", {"tier": "large"}, 1.0)]
    assert found["tierwise_budget_remaining_usd"] == [
        ("tierwise_budget_remaining_usd", {"budget": "tenant:acme"}, 87.5)
    ]
    overhead = [s for s in found["tierwise_request_overhead_seconds"] if s[0].endswith("_count")]
    assert {s[1]["cache_result"] for s in overhead} == {"miss", "semantic"}


def test_a_dropped_label_aggregates_over_its_values() -> None:
    metrics = Metrics(labels=["tier"])
    metrics.observe_spend(spend(1, tenant="acme", cost_usd=Decimal("0.25")))
    metrics.observe_spend(spend(2, tenant="globex", cost_usd=Decimal("0.5")))
    cost = families(metrics.exposition().decode())["tierwise_cost_usd"]
    assert [(s[1], s[2]) for s in cost if s[0].endswith("_total")] == [({"tier": "small"}, 0.75)]


def test_labels_and_values_outside_the_contract_are_refused() -> None:
    with pytest.raises(ValueError, match="user_hash"):
        Metrics(labels=["tenant", "user_hash"])
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.observe_cache("hit")
    with pytest.raises(ValueError):
        metrics.set_circuit_state("small", "ajar")


def test_feature_values_are_the_allow_list_then_the_first_seen_then_other() -> None:
    config = MetricsConfig(labels=("tenant", "feature"), features=("search",), max_features=2)
    metrics = Metrics.from_config(config)
    for i, feature in enumerate(["a", "b", "c", "search", "d", "a", *(f"n{j}" for j in range(10_000))]):
        metrics.observe_spend(spend(i, feature=feature))
    metrics.observe_anomaly("acme", "never-seen")
    metrics.observe_anomaly("acme", None)
    found = families(metrics.exposition().decode())
    requests = {s[1]["feature"]: s[2] for s in found["tierwise_requests"] if s[0].endswith("_total")}
    assert requests == {"a": 2.0, "b": 1.0, "search": 1.0, OTHER: 10_002.0}  # c, d and the n's
    anomalies = {s[1]["feature"] for s in found["tierwise_cost_anomalies"] if s[0].endswith("_total")}
    assert anomalies == {OTHER, "*"}
    assert metrics.features.seen == {"a", "b"}


def test_metrics_settings_refuse_what_they_cannot_use() -> None:
    with pytest.raises(ValidationError, match="scrape_key_sha256"):
        MetricsConfig(scrape_key_sha256="not-a-digest")
    with pytest.raises(ValidationError, match="max_features"):
        MetricsConfig(max_features=-1)
    digest = hashlib.sha256(b"k").hexdigest()
    assert MetricsConfig(scrape_key_sha256=digest.upper()).scrape_key_sha256 == digest
    with pytest.raises(ValueError, match="max_values"):
        BoundedLabelValues(max_values=-1)


@pytest_asyncio.fixture
async def admin() -> AsyncIterator[AdminServer]:
    server = AdminServer(
        Metrics(labels=["tenant", "feature", "tier", "model", "provider", "experiment", "arm"])
    )
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


@pytest.mark.asyncio
async def test_metrics_over_http_carry_no_prompt_text_user_id_or_tag_values(admin: AdminServer) -> None:
    builder = SpendRecordBuilder(config(), SALT)
    spec = request(
        messages=(ChatMessage("system", PROMPT), ChatMessage("user", PROMPT)),
        user=USER,
        metadata={"project": TAG},
    )
    ok = (Attempt("small", "small-model", True, 240.0),)
    latency = Latency(total_ms=250.0, upstream_ms=240.0, ttft_ms=90.0, tpot_ms=0.8)
    answered = Completion(
        decision(),
        PROMPT,
        "stop",
        TokenUsage(input_tokens=1000, output_tokens=200),
        True,
        Decimal("0.0008"),
        latency,
        ok,
    )
    rec = builder.for_completion(spec, answered)
    admin.metrics.observe_spend(rec)
    admin.metrics.observe_decision(rec.tier, rec.reason)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin.port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        async with session.get(
            f"http://127.0.0.1:{admin.port}/metrics", headers={"Accept": "application/openmetrics-text"}
        ) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            text += await response.text()
    assert "tierwise_cost_usd_total" in text and 'tenant="acme"' in text
    user_hash = hashlib.sha256(SALT + b"\x00" + USER.encode()).hexdigest()
    for secret in ("zebra-quartz", USER, "4711", user_hash, TAG):
        assert secret not in text


@pytest.mark.asyncio
async def test_healthz_reports_each_check(admin: AdminServer) -> None:
    url = f"http://127.0.0.1:{admin.port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert (response.status, await response.json()) == (200, {"status": "ok", "checks": {}})
    state = {"up": True}
    admin.add_check("ledger", lambda: state["up"])
    admin.add_check("broken", lambda: 1 / 0 == 0)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 503
        assert (await response.json())["checks"] == {"ledger": True, "broken": False}


@pytest.mark.asyncio
async def test_refreshers_run_before_each_scrape_and_a_failing_one_does_not_break_it(
    admin: AdminServer,
) -> None:
    scrapes = {"n": 0}

    async def budgets() -> None:
        scrapes["n"] += 1
        admin.metrics.set_budget("acme/day", Decimal(scrapes["n"]), Decimal(100 - scrapes["n"]))

    async def store_down() -> None:
        raise ConnectionError("budget store unreachable")

    admin.add_refresher(budgets)
    admin.add_refresher(store_down)
    url = f"http://127.0.0.1:{admin.port}/metrics"
    async with aiohttp.ClientSession() as session:
        for expected in (1.0, 2.0):
            async with session.get(url) as response:
                assert response.status == 200
                found = families(await response.text())
            assert found["tierwise_budget_used_usd"] == [
                ("tierwise_budget_used_usd", {"budget": "acme/day"}, expected)
            ]


@pytest.mark.asyncio
async def test_the_admin_app_takes_more_routes_before_it_starts() -> None:
    from aiohttp import web

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(text="dashboard")

    server = AdminServer(Metrics())
    server.app.router.add_get("/dashboard", dashboard)
    port = await server.start("127.0.0.1", 0)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/dashboard") as response,
    ):
        assert await response.text() == "dashboard"
    await server.stop()


@pytest.mark.asyncio
async def test_cost_counters_reconcile_with_the_ledger_to_the_cent(tmp_path: Path) -> None:
    metrics = Metrics(labels=["tenant", "tier"])
    ledger = SpendLedger(tmp_path / "ledger", SqliteSpendSink(tmp_path / "spend.sqlite3"), batch_size=500)
    metrics.watch_ledger(ledger)
    await ledger.start()
    for i in range(3000):
        digest = int(hashlib.sha256(str(i).encode()).hexdigest()[:12], 16)
        rec = spend(
            i,
            tenant=("acme", "globex", "initech")[i % 3],
            tier=("small", "large")[digest % 2],
            cost_usd=Decimal(digest % 9_000_000) / Decimal(10**9),  # up to $0.009, nano-dollar digits
            saved_usd=Decimal(digest % 7_000_000) / Decimal(10**9),
        )
        ledger.record(rec)
        metrics.observe_spend(rec)
    assert await ledger.flush(20)
    found = families(metrics.exposition().decode())
    assert ("tierwise_ledger_backlog_records", {}, 0.0) in found["tierwise_ledger_backlog_records"]
    assert ("tierwise_ledger_written_records_total", {}, 3000.0) in found["tierwise_ledger_written_records"]
    cent = Decimal("0.01")
    for family, field in (("tierwise_cost_usd", "cost_usd"), ("tierwise_saved_cost_usd", "saved_usd")):
        by_tenant: dict[str, Decimal] = {}
        for s in found[family]:
            if s[0].endswith("_total"):
                by_tenant[s[1]["tenant"]] = by_tenant.get(s[1]["tenant"], Decimal(0)) + Decimal(repr(s[2]))
        counted = {t: v.quantize(cent, ROUND_HALF_EVEN) for t, v in by_tenant.items()}
        stored = {
            row.group["tenant"]: getattr(row, field).quantize(cent, ROUND_HALF_EVEN)
            for row in await ledger.totals(0, 2e9, ["tenant"])
        }
        assert counted == stored and len(stored) == 3
    await ledger.aclose()


class _ThreadProbe(Collector):
    """Notes the thread each read runs on."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def collect(self) -> list[Metric]:
        self.threads.append(threading.current_thread())
        return []


class _ProbedSampler:
    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    @property
    def counts(self) -> Mapping[str, int]:
        self.threads.append(threading.current_thread())
        return {"sampled": 3}

    @property
    def spent_usd(self) -> Mapping[str, Decimal]:
        return {}


@pytest.mark.asyncio
async def test_a_scrape_encodes_off_the_event_loop_and_reads_loop_state_on_it(admin: AdminServer) -> None:
    probe, sampler = _ThreadProbe(), _ProbedSampler()
    admin.metrics.registry.register(probe)
    admin.metrics.watch_sampling(sampler)
    url = f"http://127.0.0.1:{admin.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        sampled = families(await response.text())["tierwise_sampling_sampled"]
    assert ("tierwise_sampling_sampled_total", {}, 3.0) in sampled
    loop_thread = threading.current_thread()
    assert probe.threads and loop_thread not in probe.threads  # the series are encoded in a worker
    assert sampler.threads == [loop_thread]  # the sampler's counts are read where the loop owns them
