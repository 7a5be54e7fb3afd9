"""What the pipeline hands back: decisions, attempts and completed calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from tierwise.router.types import TokenUsage, ToolCall, ToolCallDelta

# A decision's reason starts with this when the classifier found the prompt unfamiliar and leaned on the
# safe prior (router/policies/unfamiliar.py); metrics and reports count such requests by it.
UNFAMILIAR_PREFIX = "unfamiliar:"


@dataclass(frozen=True, slots=True)
class CacheHitInfo:
    entry_id: str
    kind: str  # exact | semantic
    similarity: float
    content: str
    finish_reason: str
    model: str
    usage: TokenUsage
    age_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    tier: str
    model: str
    provider: str
    reason: str
    policy: str
    estimated_input_tokens: int
    estimated_cost_usd: Decimal
    p_adequate: Mapping[str, float] = field(default_factory=dict)
    model_version: str = ""
    experiment: str = ""
    arm: str = ""
    cache_hit: CacheHitInfo | None = None
    saved_cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class PartialAnswer:
    """Text a tier streamed before the stream broke or the caller left: the provider bills it."""

    tier: str
    usage: TokenUsage
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class Attempt:
    tier: str
    model: str
    ok: bool
    latency_ms: float
    error_type: str = ""
    error: str = ""
    http_status: int = 0


@dataclass(frozen=True, slots=True)
class Latency:
    total_ms: float
    upstream_ms: float
    ttft_ms: float
    tpot_ms: float

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.total_ms - self.upstream_ms)


@dataclass(frozen=True, slots=True)
class Completion:
    decision: Decision
    content: str
    finish_reason: str
    usage: TokenUsage
    usage_reported: bool  # False when the tokens are tiktoken's estimate
    cost_usd: Decimal
    latency: Latency
    attempts: tuple[Attempt, ...]
    embedding: npt.NDArray[np.float32] | None = None  # the request's one embedding (learning samples read it)
    tool_calls: tuple[ToolCall, ...] = ()  # the calls the model made (finish_reason tool_calls)


@dataclass(frozen=True, slots=True)
class StreamDelta:
    text: str = ""
    tool_call: ToolCallDelta | None = None
