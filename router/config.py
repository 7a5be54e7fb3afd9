"""The service configuration: one YAML file, validated, with environment overrides.

Environment variables override the file: ``TIERWISE_SERVER__PORT=6000`` sets
``server.port``. Unknown keys are errors, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable, or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 turns /metrics off")
    grace_period_s: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    log_prompts: bool = False
    default_timeout_s: float = Field(60.0, gt=0, description="upstream deadline when the caller sets none")


class ApiKey(_Strict):
    key_sha256: str
    tenant: str = Field(min_length=1, max_length=128)

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


class RoutingConfig(_Strict):
    policy: Literal["cheapest", "strongest", "random", "length"] = "cheapest"
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


MetricLabel = Literal["tenant", "feature", "tier", "model", "provider", "experiment", "arm"]


class MetricsConfig(_Strict):
    """Prometheus labels on tierwise's own series; a dropped label aggregates over its values."""

    labels: tuple[MetricLabel, ...] = ("tenant", "feature", "tier", "model", "arm")


class TracingConfig(_Strict):
    """OpenTelemetry traces; off (a no-op tracer) unless an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC collector, e.g. http://127.0.0.1:4317")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept (parent-based)")
    service_name: str = Field("tierwise", min_length=1)


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
    logging: LoggingConfig = LoggingConfig()
    ledger: LedgerConfig = LedgerConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()

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
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tiers: duplicate tier names {duplicates}")
        unknown = sorted(set(self.routing.length_thresholds) - set(names))
        if unknown:
            raise ValueError(f"routing.length_thresholds: unknown tiers {unknown}; configured: {names}")
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
