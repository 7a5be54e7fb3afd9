"""The service configuration: one YAML file, validated, with environment overrides.

Environment variables override the file: ``TIERWISE_SERVER__PORT=6000`` sets
``server.port``. Unknown keys are errors, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tierwise.cache.settings import CacheSettings

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable, or invalid; the message names the key."""


def _duplicates(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """gRPC over TLS; with ``client_ca_file`` clients must present a certificate it signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 turns /metrics off")
    grace_period_s: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    log_prompts: bool = False
    default_timeout_s: float = Field(60.0, gt=0, description="upstream deadline when the caller sets none")
    tls: TlsConfig | None = None


class ApiKey(_Strict):
    key_sha256: str
    tenant: str = Field(min_length=1, max_length=128)
    admin: bool = Field(False, description="may use the Admin service across tenants")

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be the 64-hex-digit SHA-256 of the API key")
        return value


class AuthConfig(_Strict):
    mode: Literal["api_key", "none"] = "api_key"
    tenant: str | None = Field(None, description="the tenant every request gets when mode is none")
    api_keys: tuple[ApiKey, ...] = ()

    @model_validator(mode="after")
    def _mode_needs(self) -> AuthConfig:
        if self.mode == "none" and not self.tenant:
            raise ValueError("auth.mode 'none' needs auth.tenant")
        return self


class Price(_Strict):
    """USD per million tokens; cached input defaults to the input price."""

    input_per_mtok: Decimal = Field(Decimal(0), ge=0)
    output_per_mtok: Decimal = Field(Decimal(0), ge=0)
    cached_input_per_mtok: Decimal | None = Field(None, ge=0)

    @property
    def cached_input(self) -> Decimal:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok


class TierConfig(_Strict):
    name: str
    provider: Literal["openai", "anthropic"]
    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    price: Price = Price()
    max_output_tokens: int = Field(1024, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    latency_slo_ms: float | None = Field(
        None, gt=0, description="calls slower than this count as slow for the circuit breaker"
    )
    encoding: str | None = Field(None, description="tiktoken encoding; chosen by model family when unset")
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TIER_NAME.match(value):
            raise ValueError("tier names are 1-64 characters: letters, digits, '_', '.', '-'")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


PolicyName = Literal["cheapest", "strongest", "random", "length", "classifier"]


class ClassifierConfig(_Strict):
    """The trained router: model versions in a registry directory, the serving one named by its pointer."""

    registry: Path = Field(Path("./models/router"), description="model registry directory")
    rule: Literal["threshold", "utility"] = Field(
        "utility",
        description="threshold: cheapest tier with P(adequate) >= the quality target; "
        "utility: max P(adequate) - lambda * expected cost, lambda calibrated from the target (the default: "
        "on the held-out RouterBench split it beat threshold, APGR 0.551 vs 0.475, AIQ 0.790 vs 0.774)",
    )
    watch_interval_s: float = Field(
        2.0, ge=0, description="how often the registry pointer is checked for a promoted version (0: never)"
    )


class RoutingConfig(_Strict):
    policy: PolicyName = "cheapest"
    classifier: ClassifierConfig = ClassifierConfig()
    seed: int = 0
    default_quality_target: float = Field(0.8, ge=0, le=1)
    expected_output_tokens: int = Field(256, gt=0, description="output length assumed for cost estimates")
    fallback: bool = Field(True, description="on a retryable failure, try the next stronger tier")
    length_thresholds: dict[str, int] = Field(
        default_factory=dict,
        description="length policy: tier -> the largest input token count it takes; tiers without one take any",
    )


class StoreConfig(_Strict):
    kind: Literal["embedded", "redis"] = "embedded"
    path: Path = Path("./var")
    url: str | None = None

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StoreConfig:
        if self.kind == "redis" and not self.url:
            raise ValueError("store.kind 'redis' needs store.url")
        return self


COSINE_ONLY_THRESHOLD = 0.90


class CacheConfig(CacheSettings):
    """The response cache: on by default; every ``CacheSettings`` key tunes it."""

    enabled: bool = True
    max_temperature: float = Field(
        1.0, ge=0, le=2, description="requests with a higher temperature neither read nor fill the cache"
    )
    device: str = Field("auto", description="embedding device: auto (CUDA when present), cpu or cuda")
    torch_threads: int = Field(
        0,
        ge=0,
        description="CPU threads of the embedding forward pass (0: torch's default); 1 is faster on small, busy "
        "machines, where threads spin-wait on each other",
    )
    verifier: Literal["guarded", "cosine"] = Field(
        "guarded",
        description="guarded: near-miss rules + the trained pair model; cosine: the threshold alone",
    )
    verifier_model: Path | None = Field(None, description="pair-model directory; default: the shipped model")

    @model_validator(mode="before")
    @classmethod
    def _cosine_only_threshold(cls, data: Any) -> Any:
        # The default similarity_threshold is the guarded verifier's floor; cosine alone decides at it,
        # so without an explicit threshold it gets the one that gave 0.80 precision on QQP.
        if isinstance(data, dict) and data.get("verifier") == "cosine" and "similarity_threshold" not in data:
            return {**data, "similarity_threshold": COSINE_ONLY_THRESHOLD}
        return data


class LimitsConfig(_Strict):
    max_messages: int = Field(256, gt=0)
    max_content_chars: int = Field(200_000, gt=0)
    max_total_chars: int = Field(1_000_000, gt=0)
    max_metadata_entries: int = Field(64, ge=0)
    max_metadata_chars: int = Field(256, gt=0)
    max_field_chars: int = Field(256, gt=0, description="feature, user, tier names")
    max_stop_sequences: int = Field(8, ge=0)
    max_tools_chars: int = Field(100_000, ge=0)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class LedgerConfig(_Strict):
    """The spend ledger: one record per request, journalled on disk, written to the store in batches.

    ``record`` appends to a journal file with a plain write: the kernel keeps it if
    the process dies, but not through a power loss unless ``fsync_journal`` is set.
    """

    enabled: bool = True
    batch_size: int = Field(500, gt=0, description="most records per store write")
    flush_interval_s: float = Field(1.0, gt=0, description="longest a record waits before a store write")
    retention_days: float | None = Field(
        400, gt=0, description="records older than this are purged; null keeps all"
    )
    fsync_journal: bool = Field(
        False, description="fsync every journal append: survives power loss, costs a disk flush"
    )
    postgres_dsn: str | None = Field(
        None, description="PostgreSQL instead of the embedded SQLite file in store.path"
    )
    user_salt_env: str = Field(
        "TIERWISE_USER_SALT",
        description="environment variable with the salt for hashing end-user ids; unset: a random salt kept in store.path",
    )
    compute_usd_per_hour: Decimal = Field(
        Decimal(0),
        ge=0,
        description="what one tierwise process costs an hour; times request overhead = router_cost_usd",
    )


MetricLabel = Literal["tenant", "feature", "tier", "model", "provider", "experiment", "arm"]


class FeedbackConfig(_Strict):
    """Judgments (Feedback RPC, sampled judge): kept in SQLite under store.path; with store.kind 'redis'
    each replica appends them to a Redis stream that consumer-group workers land in the store
    (PostgreSQL when ledger.postgres_dsn is set, else the consuming replica's SQLite file)."""

    retention_days: float | None = Field(
        None, gt=0, description="judgments older than this are purged; null keeps all"
    )
    stream: str = Field("tierwise:feedback", min_length=1, description="Redis stream key (shared mode)")
    group: str = Field("tierwise-feedback", min_length=1, description="Redis consumer group (shared mode)")
    claim_idle_s: float = Field(
        30.0,
        gt=0,
        description="a judgment delivered but unacknowledged this long is taken over (dead replica)",
    )
    batch_size: int = Field(100, gt=0, description="most stream entries landed per store write")


class MetricsConfig(_Strict):
    """Prometheus labels on tierwise's own series; a dropped label aggregates over its values."""

    labels: tuple[MetricLabel, ...] = ("tenant", "feature", "tier", "model", "arm")


class TracingConfig(_Strict):
    """OpenTelemetry traces; off (a no-op tracer) unless an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC collector, e.g. http://127.0.0.1:4317")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept (parent-based)")
    service_name: str = Field("tierwise", min_length=1)


class Backoff(_Strict):
    """Retries of one error class: full-jitter exponential backoff, sleep ~ U(0, min(cap, base * 2**n))."""

    max_attempts: int = Field(ge=1, description="most calls to one tier that may fail with this class")
    base_s: float = Field(gt=0)
    cap_s: float = Field(gt=0)


class RetryConfig(_Strict):
    """Retries on the same tier before the fallback chain moves on; all inside the request deadline."""

    max_attempts: int = Field(3, ge=1, description="most calls to one tier per request, the first included")
    rate_limited: Backoff = Backoff(max_attempts=3, base_s=0.5, cap_s=8.0)
    server_error: Backoff = Backoff(max_attempts=2, base_s=0.1, cap_s=2.0)
    # A timed-out call already spent its timeout: the next tier is the better bet.
    timeout: Backoff = Backoff(max_attempts=1, base_s=0.1, cap_s=1.0)
    connection: Backoff = Backoff(max_attempts=3, base_s=0.05, cap_s=1.0)
    max_retry_after_s: float = Field(
        20.0, ge=0, description="a longer Retry-After is not waited for: the next tier is tried"
    )


class BreakerConfig(_Strict):
    """Per-tier circuit breaker (resilience4j's parameters); slow means over the tier's latency_slo_ms."""

    enabled: bool = True
    window: Literal["count", "time"] = "count"
    window_calls: int = Field(20, gt=0, description="count window: the last N calls")
    window_s: float = Field(60.0, gt=0, description="time window: the calls of the last N seconds")
    min_calls: int = Field(10, gt=0, description="calls in the window before it can trip")
    failure_rate: float = Field(0.5, gt=0, le=1)
    slow_call_rate: float = Field(0.5, gt=0, le=1)
    slow_call_ms: float = Field(
        10_000.0, gt=0, description="slow-call threshold of tiers without latency_slo_ms"
    )
    open_s: float = Field(30.0, gt=0, description="how long an open circuit refuses calls")
    half_open_calls: int = Field(3, gt=0, description="probe calls let through when half-open")

    @model_validator(mode="after")
    def _can_trip(self) -> BreakerConfig:
        if self.window == "count" and self.min_calls > self.window_calls:
            raise ValueError("min_calls must not exceed window_calls: the circuit could never open")
        return self


class LatencyWindowConfig(_Strict):
    """Per-tier latency estimate: quantiles over the most recent samples."""

    samples: int = Field(200, gt=0)
    max_age_s: float = Field(
        300.0, gt=0, description="older samples are dropped, so a tier can go cold again"
    )
    min_samples: int = Field(20, gt=0, description="fewer samples: the tier is cold and allowed")


class ResilienceConfig(_Strict):
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    latency_window: LatencyWindowConfig = LatencyWindowConfig()


class BudgetDegrade(_Strict):
    """What a request over a soft limit gets: a lower quality target, a cap on the tier, or both."""

    quality_target: float | None = Field(None, ge=0, le=1)
    max_tier: str | None = None

    @model_validator(mode="after")
    def _something(self) -> BudgetDegrade:
        if self.quality_target is None and self.max_tier is None:
            raise ValueError("degrade needs quality_target or max_tier")
        return self


class BudgetConfig(_Strict):
    """A spending limit per tenant (or tenant + feature) and calendar window (UTC)."""

    tenant: str = Field(min_length=1, max_length=128)
    feature: str | None = Field(None, min_length=1, description="unset: all of the tenant's features")
    window: Literal["day", "month"]
    usd: Decimal | None = Field(None, gt=0, description="hard limit: requests beyond it are refused")
    tokens: int | None = Field(None, gt=0)
    soft_usd: Decimal | None = Field(None, gt=0, description="soft limit: requests beyond it degrade")
    soft_tokens: int | None = Field(None, gt=0)
    on_soft: Literal["degrade", "notify"] = "degrade"
    degrade: BudgetDegrade = BudgetDegrade(quality_target=0.5)
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    alerts: tuple[float, ...] = Field((0.5, 0.75, 0.9, 1.0), description="shares of the limit that alert")

    @model_validator(mode="after")
    def _limits(self) -> BudgetConfig:
        if all(v is None for v in (self.usd, self.tokens, self.soft_usd, self.soft_tokens)):
            raise ValueError("a budget needs usd, tokens, soft_usd or soft_tokens")
        if self.usd is not None and self.soft_usd is not None and self.soft_usd >= self.usd:
            raise ValueError("soft_usd must be below usd")
        if self.tokens is not None and self.soft_tokens is not None and self.soft_tokens >= self.tokens:
            raise ValueError("soft_tokens must be below tokens")
        if any(not 0 < a <= 1 for a in self.alerts):
            raise ValueError("alerts are shares of the limit in (0, 1]")
        return self

    @property
    def name(self) -> str:
        return f"{self.tenant}/{self.feature or '*'}/{self.window}"


class BudgetStoreConfig(_Strict):
    """Where budget usage lives: follows store.kind (SQLite in store.path, or Redis at store.url)."""

    fail_mode: Literal["open", "closed"] = Field(
        "open", description="store unreachable: open admits requests unmetered, closed refuses them"
    )
    reservation_ttl_s: float = Field(
        600.0,
        gt=0,
        description="an unsettled reservation stops counting after this; above any request's length",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="first wait before retrying an unreachable store")
    reconnect_max_s: float = Field(30.0, gt=0)
    redis_timeout_s: float = Field(0.25, gt=0, description="socket timeout of budget calls to Redis")
    webhook_timeout_s: float = Field(5.0, gt=0)


class AnomalyConfig(_Strict):
    """Cost anomaly flags: each hour's spend per tenant (and tenant + feature) against its own history.

    The baseline is the median of the last ``window_hours`` hours, or, once
    ``seasonal_after_weeks`` weeks of history exist, of the same hour-of-week in
    earlier weeks; the spread is a robust one (MAD) with a floor, so a flat
    series does not flag a tiny change.
    """

    enabled: bool = True
    window_hours: int = Field(168, ge=2, description="hours of history the baseline and spread come from")
    threshold_z: float = Field(4.0, gt=0, description="flag an hour whose robust z-score exceeds this")
    min_history_hours: int = Field(24, ge=1, description="hours of history before an hour is scored")
    seasonal_after_weeks: int = Field(
        3, ge=1, description="weeks of history after which hours compare with the same hour-of-week"
    )
    seasonal_weeks: int = Field(4, ge=1, description="most earlier weeks a seasonal baseline looks at")
    min_sigma_usd: float = Field(0.01, gt=0, description="spread floor in USD per hour")
    min_sigma_ratio: float = Field(0.1, ge=0, description="spread floor as a share of the baseline")
    by_feature: bool = Field(True, description="also score each tenant + feature, not only each tenant")
    check_interval_s: float = Field(300.0, gt=0, description="how often the server checks")

    @model_validator(mode="after")
    def _consistent(self) -> AnomalyConfig:
        if self.min_history_hours > self.window_hours:
            raise ValueError("min_history_hours must not exceed window_hours")
        if self.seasonal_weeks < self.seasonal_after_weeks:
            raise ValueError("seasonal_weeks must be at least seasonal_after_weeks")
        return self


class TrafficConfig(_Strict):
    """Per-request traffic samples (embedding, prompt statistics, tier, model version) for training
    and reports, written in batches off the request path to SQLite under store.path."""

    enabled: bool = True
    batch_size: int = Field(200, gt=0, description="most samples per store write")
    flush_interval_s: float = Field(1.0, gt=0, description="longest a sample waits before a store write")
    max_queued: int = Field(
        10_000, gt=0, description="samples held in memory; beyond it new ones are dropped"
    )
    retention_days: float | None = Field(
        30, gt=0, description="samples older than this are purged; null keeps all"
    )
    store_prompts_tenants: tuple[str, ...] = Field(
        (), description="tenants whose prompt text may be stored with their samples; others: never"
    )


class SamplingConfig(_Strict):
    """Which served requests are judged after their response was returned, and what that may spend.

    The share is the arm's rate if ``rate_by_arm`` names the arm, else the tier's from
    ``rate_by_tier``, else ``rate``; the draw is a hash of the request id (reproducible).
    """

    rate: float = Field(0.0, ge=0, le=1, description="share of served requests judged (0: sampling off)")
    rate_by_tier: dict[str, float] = Field(default_factory=dict)
    rate_by_arm: dict[str, float] = Field(default_factory=dict)
    shadow: Literal["strongest", "stronger", "none"] = Field(
        "strongest",
        description="for a request served by a cheaper tier, also ask this tier (the counterfactual)",
    )
    shadow_cheapest_when_strongest: bool = Field(
        False,
        description="for a request served by the strongest tier, also ask the cheapest (was it needed?)",
    )
    budget_usd: Decimal = Field(Decimal(0), ge=0, description="most judge + shadow spend per window")
    window: Literal["day", "month"] = "day"
    feature: str = Field("tierwise-judge", min_length=1, description="the ledger feature of that spend")
    concurrency: int = Field(4, gt=0, description="judgments running at once")
    max_queued: int = Field(
        1000, gt=0, description="sampled requests waiting; beyond it new ones are skipped"
    )
    timeout_s: float = Field(60.0, gt=0, description="deadline of each shadow or judge call")

    @field_validator("rate_by_tier", "rate_by_arm")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not 0.0 <= v <= 1.0)
        if bad:
            raise ValueError(f"rates must be in [0, 1]: {bad}")
        return value


class JudgeConfig(_Strict):
    """Who scores sampled answers: an LLM through a configured tier, or a judge a package registers.

    ``kind`` is ``llm`` or the name of a ``tierwise.judges`` entry point; tierwise's own
    training package registers ``replay`` (recorded RouterBench scores, for simulations).
    """

    kind: str = Field("llm", min_length=1)
    tier: str | None = Field(None, description="llm: the tier that judges; default the strongest")
    prompt_version: str = Field("v1", description="llm: the versioned judging prompt")
    replay_data: Path | None = Field(None, description="replay: RouterBench CSV folder with recorded scores")
    max_output_tokens: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _replay_needs_data(self) -> JudgeConfig:
        if self.kind == "replay" and self.replay_data is None:
            raise ValueError("judge.kind 'replay' needs judge.replay_data")
        return self


class RetrainConfig(_Strict):
    """``tierwise retrain``: base data plus recent judgments, evaluated against the serving model."""

    data: Path | None = Field(None, description="base data (RouterBench CSVs); default: no base rows")
    metric: Literal["apgr", "aiq"] = "apgr"
    tolerance: float = Field(0.0, ge=0, description="a candidate trailing by at most this is not worse")
    gate: Literal["bootstrap", "point"] = Field(
        "bootstrap",
        description=(
            "bootstrap: keep the serving model when, over paired resamples of the held-out rows, the "
            "candidate trails by more than the tolerance with probability >= confidence; point: promote "
            "when candidate >= serving - tolerance on the rows as they are"
        ),
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="bootstrap gate: how sure 'worse' must be")
    bootstrap_samples: int = Field(1000, ge=100, le=100_000, description="bootstrap gate: paired resamples")
    judgment_weight: float = Field(1.0, gt=0, description="training weight of a judged row (base rows: 1)")
    judged_validation: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="share of judged prompts kept for selection and calibration (0: the base data's "
        "validation split alone, which then must exist)",
    )
    judged_held_out: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="share of judged prompts held out for the gate, with the base test split",
    )
    quality_bar: float = Field(0.5, ge=0, le=1, description="a score at or above it is adequate")
    window_days: float | None = Field(
        None, gt=0, description="judgments of the last N days train (null: every retained one)"
    )
    strong: str | None = Field(
        None, description="apgr: strong tier (name or model); default gpt-4 if configured"
    )
    weak: str | None = Field(None, description="apgr: weak tier; default mixtral-8x7b if configured")
    interval_s: float = Field(3600.0, gt=0, description="--watch: time between runs")
    min_new_judgments: int = Field(1, ge=0, description="fewer judgments since the last run: no retraining")
    seed: int = 0

    @model_validator(mode="after")
    def _judged_shares(self) -> RetrainConfig:
        if self.judged_validation + self.judged_held_out >= 1:
            raise ValueError(
                "judged_validation + judged_held_out must leave a share of judged prompts to train on"
            )
        return self

    def judged_fractions(self) -> tuple[float, float, float]:
        """(train, validation, held out) shares of judged prompts."""
        return (
            1.0 - self.judged_validation - self.judged_held_out,
            self.judged_validation,
            self.judged_held_out,
        )


class LearningConfig(_Strict):
    traffic: TrafficConfig = TrafficConfig()
    sampling: SamplingConfig = SamplingConfig()
    judge: JudgeConfig = JudgeConfig()
    retrain: RetrainConfig = RetrainConfig()


EXPERIMENT_NAME = TIER_NAME  # experiments and arms are named as tiers are


def _experiment_name(what: str, value: str) -> str:
    if not EXPERIMENT_NAME.match(value):
        raise ValueError(f"{what} names are 1-64 characters: letters, digits, '_', '.', '-'")
    return value


ArmName = Annotated[str, AfterValidator(functools.partial(_experiment_name, "arm"))]
ExperimentName = Annotated[str, AfterValidator(functools.partial(_experiment_name, "experiment"))]


class ArmConfig(_Strict):
    """One arm of an experiment; every setting left unset is the service's own."""

    name: ArmName
    weight: float = Field(gt=0, description="share of units, relative to the other arms' weights")
    policy: PolicyName | None = Field(None, description="routing policy of this arm")
    quality_target: float | None = Field(
        None, ge=0, le=1, description="replaces routing.default_quality_target (a request's own target wins)"
    )
    model_version: str | None = Field(
        None, description="classifier registry version this arm routes with (policy classifier)"
    )
    cache: bool | None = Field(None, description="false: this arm neither reads nor fills the cache")


class ExperimentConfig(_Strict):
    """A deterministic A/B experiment: each unit (user, else tenant) hashes into one arm for good."""

    name: ExperimentName
    unit: Literal["user", "tenant"] = Field(
        "user", description="user: the request's user, else its tenant; tenant: always the tenant"
    )
    salt: str = Field("", description="hash salt; default: the experiment name")
    arms: tuple[ArmConfig, ...] = Field(min_length=2)
    control: str = Field(description="the arm the others are compared with")
    tenants: tuple[str, ...] = Field((), description="only these tenants take part (empty: all)")
    features: tuple[str, ...] = Field((), description="only these features take part (empty: all)")
    force: bool = Field(
        False, description="accept changed weights, arms or salt of a running experiment (reshuffles units)"
    )

    @model_validator(mode="after")
    def _arms_consistent(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        duplicates = _duplicates(names)
        if duplicates:
            raise ValueError(f"arms: duplicate arm names {duplicates}")
        if self.control not in names:
            raise ValueError(f"control: {self.control!r} is not one of the arms {names}")
        return self

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    def arm(self, name: str) -> ArmConfig:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIERWISE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    tiers: tuple[TierConfig, ...] = Field(min_length=1, description="cheapest first")
    routing: RoutingConfig = RoutingConfig()
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    cache: CacheConfig = CacheConfig()
    logging: LoggingConfig = LoggingConfig()
    ledger: LedgerConfig = LedgerConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    budgets: tuple[BudgetConfig, ...] = ()
    budget_store: BudgetStoreConfig = BudgetStoreConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    learning: LearningConfig = LearningConfig()
    experiments: tuple[ExperimentConfig, ...] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _tiers_consistent(self) -> Config:
        names = [t.name for t in self.tiers]
        duplicates = _duplicates(names)
        if duplicates:
            raise ValueError(f"tiers: duplicate tier names {duplicates}")
        unknown = sorted(set(self.routing.length_thresholds) - set(names))
        if unknown:
            raise ValueError(f"routing.length_thresholds: unknown tiers {unknown}; configured: {names}")
        return self

    @model_validator(mode="after")
    def _budgets_consistent(self) -> Config:
        seen: set[str] = set()
        for index, budget in enumerate(self.budgets):
            if budget.name in seen:
                raise ValueError(f"budgets[{index}]: a second budget for {budget.name}")
            seen.add(budget.name)
            if budget.degrade.max_tier is not None and budget.degrade.max_tier not in self.tier_names:
                raise ValueError(
                    f"budgets[{index}].degrade.max_tier: unknown tier {budget.degrade.max_tier!r}; "
                    f"configured: {list(self.tier_names)}"
                )
        return self

    @model_validator(mode="after")
    def _learning_tiers(self) -> Config:
        names = set(self.tier_names)
        sampling, judge = self.learning.sampling, self.learning.judge
        unknown = sorted(set(sampling.rate_by_tier) - names)
        if unknown:
            raise ValueError(f"learning.sampling.rate_by_tier: unknown tiers {unknown}")
        if judge.tier is not None and judge.tier not in names:
            raise ValueError(f"learning.judge.tier: unknown tier {judge.tier!r}; configured: {sorted(names)}")
        return self

    @model_validator(mode="after")
    def _experiments_consistent(self) -> Config:
        duplicates = _duplicates([e.name for e in self.experiments])
        if duplicates:
            raise ValueError(f"experiments: duplicate experiment names {duplicates}")
        for i, experiment in enumerate(self.experiments):
            for j, arm in enumerate(experiment.arms):
                where = f"experiments[{i}].arms[{j}]"
                policy = arm.policy or self.routing.policy
                if arm.model_version is not None and policy != "classifier":
                    raise ValueError(
                        f"{where}.model_version: needs policy classifier (the arm's is {policy!r})"
                    )
                if arm.cache and not self.cache.enabled:
                    raise ValueError(f"{where}.cache: the cache is off (cache.enabled: false)")
        return self

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_describe(exc)}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping")
    return parse_config(raw)
