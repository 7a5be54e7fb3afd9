"""Config sections of what the service reports about itself: logging, Prometheus metrics, tracing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tierwise.router.config.strict import StrictSection, sha256_digest


class LoggingConfig(StrictSection):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


MetricLabel = Literal["tenant", "feature", "tier", "model", "provider", "experiment", "arm", "api_key"]


class MetricsConfig(StrictSection):
    """Prometheus labels on tierwise's own series; a dropped label aggregates over its values.

    ``feature`` is the one label whose values callers choose (tenant comes from the API key, tier,
    model, provider, experiment and arm from config; metadata tags are never labels). Its values are
    bounded: the allow-list, then the first ``max_features`` others seen; the rest read ``other``.
    The ledger keeps every value.
    """

    labels: tuple[MetricLabel, ...] = ("tenant", "feature", "tier", "model", "arm")
    features: tuple[str, ...] = Field((), description="feature values always kept as label values")
    max_features: int = Field(
        20, ge=0, le=100_000, description="feature values kept beyond the allow-list, first seen first"
    )
    max_api_keys: int = Field(
        100,
        ge=0,
        le=100_000,
        description="with the api_key label (off by default): key names kept as values, first seen first;"
        " stored keys are data, so their number is bounded here, not by the config",
    )
    scrape_key_sha256: str | None = Field(
        None, description="SHA-256 of the key /metrics requires (Bearer or Basic password); unset: open"
    )

    @field_validator("scrape_key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        return None if value is None else sha256_digest(value)


class TracingConfig(StrictSection):
    """OpenTelemetry traces; off (a no-op tracer) unless an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC collector, e.g. http://127.0.0.1:4317")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept (parent-based)")
    service_name: str = Field("tierwise", min_length=1)
