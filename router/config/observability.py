"""Config sections of what the service reports about itself: logging, Prometheus metrics, tracing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tierwise.router.config.strict import StrictSection


class LoggingConfig(StrictSection):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


MetricLabel = Literal["tenant", "feature", "tier", "model", "provider", "experiment", "arm"]


class MetricsConfig(StrictSection):
    """Prometheus labels on tierwise's own series; a dropped label aggregates over its values."""

    labels: tuple[MetricLabel, ...] = ("tenant", "feature", "tier", "model", "arm")


class TracingConfig(StrictSection):
    """OpenTelemetry traces; off (a no-op tracer) unless an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC collector, e.g. http://127.0.0.1:4317")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept (parent-based)")
    service_name: str = Field("tierwise", min_length=1)
