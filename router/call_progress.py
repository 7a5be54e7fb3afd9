"""What a call to a tier has cost so far, for calls that end without a Completion.

A provider bills what it processed, not what reached our caller: once the
request is on its way, the prompt is billed, and so is any text the tier
streamed before the stream broke or the caller left. A unary call the caller
abandons while a try is in flight costs at least its prompt (the upstream usually
finishes it anyway; we cannot see how far, so the input tokens are the honest
lower bound). A try that failed with an upstream error is not billed: its tier is
cleared, so a caller who leaves during the back-off before the next try owes nothing.

Once the pipeline charges the budget (``charge``), ``billed`` answers exactly that charge, so
the spend record the server books on any later failure or cancel carries what the budget got.
"""

from __future__ import annotations

from tierwise.router.config import TierConfig
from tierwise.router.outcome import Completion, PartialAnswer, StreamDelta
from tierwise.router.pricing import cost_usd
from tierwise.router.providers.base import ChatResult, TextDelta
from tierwise.router.providers.tools import ToolCallAssembler
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import RequestSpec, TokenUsage, ToolCall, ToolCallDelta


class PromptTokens:
    """The prompt's token count per encoding, counted once per request (long prompts are costly to count).

    The prompt is what the tier reads: the messages (tool calls and results included) and, where the
    request sends them, the tool definitions, the tool choice and the response format, counted as
    their JSON text (the providers bill their own rendering of them; this is the estimate used when
    they report no usage)."""

    def __init__(self, counter: TokenCounter, spec: RequestSpec) -> None:
        self._counter = counter
        self._messages = spec.messages
        self._extra = "".join((spec.tools_json, spec.tool_choice, spec.response_format_json))
        self._counts: dict[str, int] = {}

    def encoding(self, tier: TierConfig) -> str:
        return tier.encoding or self._counter.encoding_for_model(tier.model)

    def of(self, tier: TierConfig) -> int:
        encoding = self.encoding(tier)
        if encoding not in self._counts:
            self._counts[encoding] = self._counter.count_messages(
                self._messages, tier.model, encoding=encoding
            ) + (self._counter.count_text(self._extra, encoding=encoding) if self._extra else 0)
        return self._counts[encoding]

    def text(self, tier: TierConfig, text: str) -> int:
        return self._counter.count_text(text, encoding=self.encoding(tier))

    def usage(self, tier: TierConfig, result: ChatResult) -> TokenUsage:
        """The upstream's reported usage, else tiktoken's count of what was sent and received (the
        text and every tool call's name and arguments)."""
        if result.usage is not None:
            return result.usage
        answer = result.content + "".join(c.name + c.arguments for c in result.tool_calls)
        return TokenUsage(input_tokens=self.of(tier), output_tokens=self.text(tier, answer))


class CallProgress:
    """The tier in flight and the text it has streamed, kept as the call goes."""

    def __init__(self) -> None:
        self._tier: TierConfig | None = None
        self._prompt: PromptTokens | None = None
        self._parts: list[str] = []
        self._tool_calls = ToolCallAssembler()
        self._billed: PartialAnswer | None = None  # counted once: the budget and the spend record both ask
        self._charged = False  # the budget was charged (or released): billed() says _charge from then on
        self._charge: PartialAnswer | None = None

    def start(self, tier: TierConfig, prompt: PromptTokens) -> None:
        """The request to ``tier`` is about to be sent."""
        self._tier, self._prompt, self._parts, self._billed = tier, prompt, [], None
        self._tool_calls = ToolCallAssembler()

    def add(self, event: TextDelta | ToolCallDelta) -> StreamDelta:
        """Keep a piece the tier streamed; what the caller is sent of it."""
        self._billed = None
        if isinstance(event, TextDelta):
            self._parts.append(event.text)
            return StreamDelta(event.text)
        self._tool_calls.add(event)
        self._parts.append("")  # the tier has streamed: a break from here on is billed
        return StreamDelta(tool_call=event)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls the current tier has streamed, put together."""
        return self._tool_calls.calls()

    def ended(self) -> None:
        """The tier answered or failed: no call is in flight. Text it already streamed stays billed
        (a stream that broke mid-way); a failed call that sent nothing is not."""
        if not self._parts:
            self._tier = self._prompt = None
            self._billed = None

    def text(self) -> str:
        """What the current tier has streamed so far."""
        return "".join(self._parts)

    def charge(self, answer: Completion | PartialAnswer | None) -> bool:
        """The budget is about to be charged for ``answer`` (None: released); from now on ``billed``
        says that. False, changing nothing, when the request was charged before: charge it once."""
        if self._charged:
            return False
        self._charged = True
        if isinstance(answer, Completion):
            answer = PartialAnswer(answer.decision.tier, answer.usage, answer.cost_usd)
        self._charge = answer
        return True

    def billed(self) -> PartialAnswer | None:
        """The prompt and the text of the tier in flight; None when no call is under way. Once the
        budget was charged: what it was charged."""
        if self._charged:
            return self._charge
        if self._tier is None or self._prompt is None:
            return None
        if self._billed is None:
            tier, prompt = self._tier, self._prompt
            streamed = self.text() + self._tool_calls.arguments_text()
            usage = TokenUsage(prompt.of(tier), prompt.text(tier, streamed) if self._parts else 0)
            self._billed = PartialAnswer(tier.name, usage, cost_usd(tier.price, usage))
        return self._billed
