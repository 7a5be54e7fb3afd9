"""The provider axis: one small interface every upstream model client implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tierwise.router.types import ChatMessage, TokenUsage, ToolCall, ToolCallDelta


@dataclass(frozen=True, slots=True)
class ChatCall:
    model: str
    messages: Sequence[ChatMessage]
    timeout_s: float
    # The pipeline always sends one (``output_bound``): hard budgets reserve it. None leaves the
    # output to the upstream (Anthropic's client fills in its required default).
    max_tokens: int | None = None
    temperature: float | None = None
    stop: Sequence[str] = ()
    # Passed on as the caller sent them (JSON texts are parsed by the client); "" / None: unset.
    tools_json: str = ""
    tool_choice: str = ""
    parallel_tool_calls: bool | None = None
    response_format_json: str = ""
    top_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    content: str
    finish_reason: str
    usage: TokenUsage | None  # None when the upstream did not report usage
    model: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class StreamFinish:
    finish_reason: str
    usage: TokenUsage | None
    model: str


StreamEvent = TextDelta | ToolCallDelta | StreamFinish


class Provider(Protocol):
    """An upstream chat model endpoint.

    ``stream`` yields text and tool-call deltas and ends with exactly one ``StreamFinish``;
    a stream that ends without one raises ``ProviderError(PROTOCOL)``.
    """

    kind: str  # "openai", "anthropic", "azure_openai": the gen_ai.provider.name, as tiers name it

    async def complete(self, call: ChatCall) -> ChatResult: ...

    def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...
