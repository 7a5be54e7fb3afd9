"""Plain value types shared by the request pipeline and its pluggable axes.

They carry no behaviour and import nothing from the rest of the service, so
every layer (validation, policies, providers, accounting) can depend on them
without cycles.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is a JSON object's text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first carries ``id`` and ``name``, later ones append
    to ``arguments``; pieces of one call share ``index``."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image in a user turn: ``url`` is https or a ``data:image/...;base64,`` URI; ``detail`` is
    auto, low or high."""

    url: str
    detail: str = "auto"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns
    tool_call_id: str = ""  # tool turns: the call this result answers
    images: tuple[ImagePart, ...] = ()  # user turns


class CacheMode(enum.Enum):
    USE = "use"
    BYPASS = "bypass"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """A validated request; the tenant comes from authentication only."""

    tenant: str
    messages: tuple[ChatMessage, ...]
    feature: str = ""
    user: str = ""
    tier: str | None = None
    quality_target: float | None = None
    latency_budget_ms: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    tools_json: str = ""
    cache_mode: CacheMode = CacheMode.USE
    max_age_s: int | None = None
    tool_choice: str = ""  # auto | none | required | a JSON object naming a tool
    parallel_tool_calls: bool | None = None
    response_format_json: str = ""
    top_p: float | None = None
    seed: int | None = None
    api_key: str = ""  # the label of the caller's API key (budgets per key); "" without keys

    @property
    def has_images(self) -> bool:
        return any(m.images for m in self.messages)

    @property
    def system_prompt(self) -> str:
        return "\n".join(m.content for m in self.messages if m.role == "system")

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    @property
    def prompt_text(self) -> str:
        """All non-system turns, oldest first: what a classifier reads."""
        return "\n".join(m.content for m in self.messages if m.role != "system")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
