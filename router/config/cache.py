"""Config sections of the shared state: the store (embedded or Redis) and the response cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tierwise.cache.settings import CacheSettings
from tierwise.router.config.strict import StrictSection


class StoreConfig(StrictSection):
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
        description="CPU threads of the embedding forward pass: torch's, or onnxruntime's with embedder onnx "
        "(0: the library's default); 1 is faster on small, busy machines, where threads spin-wait on each other",
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
