"""The routing-policy axis: given what is known about a request, pick a tier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tierwise.router.types import RequestSpec


@dataclass(frozen=True, slots=True)
class TierOption:
    """A tier the policy may choose, cheapest first in the candidate list."""

    name: str
    model: str
    # Expected cost of this request on this tier (estimated input tokens and
    # an expected output length, at the tier's prices).
    expected_cost_usd: Decimal
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class RoutingContext:
    request: RequestSpec
    input_tokens: int
    candidates: Sequence[TierOption]  # non-empty, cheapest first
    quality_target: float
    # The request's prompt embedding (shared with the cache), or None when no
    # embedder is running.
    embedding: npt.NDArray[np.float32] | None = None
    # The prompt's text statistics (``classifier.prompt_statistics``) when they were made beforehand,
    # out of this process for a long prompt (``request_work``); None: the policy makes them.
    statistics: Sequence[float] | None = None


@dataclass(frozen=True, slots=True)
class TierChoice:
    tier: str
    reason: str
    p_adequate: Mapping[str, float] = field(default_factory=dict)
    model_version: str = ""


class RoutingPolicy(Protocol):
    name: str
    # Whether ``choose`` reads ``context.embedding`` (the pipeline embeds only when someone needs it).
    needs_embedding: bool

    def choose(self, context: RoutingContext) -> TierChoice: ...
