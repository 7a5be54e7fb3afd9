"""From pipeline outcomes to spend records: savings rules, failures, user hashing, router cost."""

from __future__ import annotations

import hashlib
import stat
from decimal import Decimal
from pathlib import Path

import pytest

from tierwise.router.config import Config, parse_config
from tierwise.router.errors import UpstreamUnavailable
from tierwise.router.ledger.builder import SpendRecordBuilder, load_user_salt
from tierwise.router.outcome import Attempt, CacheHitInfo, Completion, Decision, Latency
from tierwise.router.types import CacheMode, ChatMessage, RequestSpec, TokenUsage

SALT = b"test-salt"


def config(**ledger: object) -> Config:
    return parse_config(
        {
            "tiers": [
                {
                    "name": "small",
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:1",
                    "model": "small-model",
                    "price": {"input_per_mtok": "0.5", "output_per_mtok": "1.5"},
                },
                {
                    "name": "large",
                    "provider": "anthropic",
                    "base_url": "http://127.0.0.1:1",
                    "model": "large-model",
                    "price": {"input_per_mtok": "3", "output_per_mtok": "15"},
                },
            ],
            "ledger": ledger,
        }
    )


def request(**fields: object) -> RequestSpec:
    values: dict[str, object] = {
        "tenant": "acme",
        "messages": (ChatMessage("user", "what is the capital of France?"),),
        "feature": "faq",
        "user": "alice@example.com",
        "metadata": {"team": "search", "environment": "prod"},
    }
    values.update(fields)
    return RequestSpec(**values)  # type: ignore[arg-type]


def decision(tier: str = "small", **fields: object) -> Decision:
    model = {"small": "small-model", "large": "large-model"}[tier]
    provider = {"small": "openai", "large": "anthropic"}[tier]
    return Decision("rid-1", tier, model, provider, "cheapest", "cheapest", 1000, Decimal("0.0008"), **fields)  # type: ignore[arg-type]


USAGE = TokenUsage(input_tokens=1000, output_tokens=200)
SMALL_COST = Decimal("0.0008")  # 1000 x 0.5/M + 200 x 1.5/M
LARGE_COST = Decimal("0.006")  # 1000 x 3/M + 200 x 15/M


def completion(d: Decision, cost: Decimal, attempts: tuple[Attempt, ...]) -> Completion:
    latency = Latency(total_ms=250.0, upstream_ms=240.0, ttft_ms=90.0, tpot_ms=0.8)
    return Completion(d, "Paris.", "stop", USAGE, True, cost, latency, attempts)


def test_a_routed_call_saves_the_difference_to_the_strongest_tier() -> None:
    builder = SpendRecordBuilder(config(), SALT)
    ok = (Attempt("small", "small-model", True, 240.0),)
    rec = builder.for_completion(request(), completion(decision(), SMALL_COST, ok), ts=1.0)
    assert (rec.cost_usd, rec.saved_usd) == (SMALL_COST, LARGE_COST - SMALL_COST)
    assert (rec.tier, rec.model, rec.provider, rec.reason) == ("small", "small-model", "openai", "cheapest")
    assert (rec.cache_result, rec.attempts, rec.fallback, rec.status) == ("miss", 1, False, "OK")
    assert (rec.total_ms, rec.upstream_ms, rec.overhead_ms, rec.ttft_ms) == (250.0, 240.0, 10.0, 90.0)
    assert rec.tags == {"team": "search", "environment": "prod"}
    assert rec.user_hash == hashlib.sha256(SALT + b"\x00alice@example.com").hexdigest()
    assert "alice" not in repr(rec) and "capital" not in repr(rec)
    assert rec.router_cost_usd == 0


def test_the_user_hash_depends_on_the_salt_and_an_absent_user_stays_empty() -> None:
    first = SpendRecordBuilder(config(), b"one").for_decision(request(), decision(), total_ms=1.0)
    second = SpendRecordBuilder(config(), b"two").for_decision(request(), decision(), total_ms=1.0)
    assert first.user_hash != second.user_hash
    assert (
        SpendRecordBuilder(config(), b"one")
        .for_decision(request(user=""), decision(), total_ms=1.0)
        .user_hash
        == ""
    )


def test_a_pinned_call_saves_nothing_and_a_fallback_is_flagged() -> None:
    builder = SpendRecordBuilder(config(), SALT)
    ok = (Attempt("small", "small-model", True, 240.0),)
    pinned = builder.for_completion(request(tier="small"), completion(decision(), SMALL_COST, ok))
    assert pinned.saved_usd == 0
    tried = (
        Attempt("small", "small-model", False, 100.0, "timeout"),
        Attempt("large", "large-model", True, 140.0),
    )
    fell_back = builder.for_completion(request(), completion(decision("large"), LARGE_COST, tried))
    assert (fell_back.fallback, fell_back.attempts, fell_back.saved_usd) == (True, 2, Decimal(0))


def test_a_cache_hit_saves_what_its_tier_would_have_cost() -> None:
    builder = SpendRecordBuilder(config(), SALT)
    hit = CacheHitInfo("e1", "semantic", 0.97, "Paris.", "stop", "small-model", USAGE, 30.0)
    answered = completion(decision(cache_hit=hit), Decimal(0), ())
    rec = builder.for_completion(request(), answered)
    assert (rec.cache_result, rec.cost_usd, rec.saved_usd, rec.attempts) == ("semantic", 0, SMALL_COST, 0)
    routed = builder.for_decision(
        request(), decision(cache_hit=hit, saved_cost_usd=Decimal("0.01")), total_ms=3.0
    )
    assert (routed.saved_usd, routed.overhead_ms) == (Decimal("0.01"), 3.0)  # the cache's own figure wins
    bypassed = builder.for_decision(request(cache_mode=CacheMode.BYPASS), decision(), total_ms=1.0)
    assert (bypassed.cache_result, bypassed.saved_usd) == ("bypass", 0)


def test_a_failure_records_status_error_type_and_attempts_without_cost() -> None:
    builder = SpendRecordBuilder(config(), SALT)
    attempts = (
        Attempt("small", "small-model", False, 100.0, "timeout"),
        Attempt("large", "large-model", False, 50.0, "server_error"),
    )
    rec = builder.for_failure(
        request(), "rid-9", UpstreamUnavailable("no tier", attempts), total_ms=160.0, decision=decision()
    )
    assert (rec.status, rec.error_type, rec.attempts, rec.fallback) == (
        "UNAVAILABLE",
        "server_error",
        2,
        True,
    )
    assert (rec.tier, rec.model, rec.provider) == ("large", "large-model", "anthropic")
    assert (rec.cost_usd, rec.upstream_ms, rec.overhead_ms) == (0, 150.0, 10.0)
    internal = builder.for_failure(request(), "rid-10", RuntimeError("bug"), total_ms=2.0)
    assert (internal.status, internal.error_type, internal.tier, internal.attempts) == (
        "INTERNAL",
        "RuntimeError",
        "",
        0,
    )


def test_router_cost_is_overhead_time_at_the_configured_hourly_price() -> None:
    builder = SpendRecordBuilder(config(compute_usd_per_hour="3.6"), SALT)  # 0.000001 USD per ms
    rec = builder.for_decision(request(), decision(), total_ms=12.5)
    assert rec.router_cost_usd == Decimal("0.0000125")


def test_the_user_salt_comes_from_the_environment_or_is_kept_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TIERWISE_SALT", "shared-by-replicas")
    assert load_user_salt("TEST_TIERWISE_SALT", tmp_path / "salt") == b"shared-by-replicas"
    assert not (tmp_path / "salt").exists()
    monkeypatch.delenv("TEST_TIERWISE_SALT")
    made = load_user_salt("TEST_TIERWISE_SALT", tmp_path / "salt")
    assert len(made) == 64 and load_user_salt("TEST_TIERWISE_SALT", tmp_path / "salt") == made
    assert stat.S_IMODE((tmp_path / "salt").stat().st_mode) == 0o600
