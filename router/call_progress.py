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
from tierwise.router.outcome import Completion, PartialAnswer
from tierwise.router.pricing import cost_usd
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import RequestSpec, TokenUsage


class PromptTokens:
    """The prompt's token count per encoding, counted once per request (long prompts are costly to count)."""

    def __init__(self, counter: TokenCounter, spec: RequestSpec) -> None:
        self._counter = counter
        self._messages = spec.messages
        self._counts: dict[str, int] = {}

    def encoding(self, tier: TierConfig) -> str:
        return tier.encoding or self._counter.encoding_for_model(tier.model)

    def of(self, tier: TierConfig) -> int:
        encoding = self.encoding(tier)
        if encoding not in self._counts:
            self._counts[encoding] = self._counter.count_messages(
                self._messages, tier.model, encoding=encoding
            )
        return self._counts[encoding]

    def text(self, tier: TierConfig, text: str) -> int:
        return self._counter.count_text(text, encoding=self.encoding(tier))

    def usage(self, tier: TierConfig, reported: TokenUsage | None, answer: str) -> TokenUsage:
        """The upstream's reported usage, else tiktoken's count of what was sent and received."""
        if reported is not None:
            return reported
        return TokenUsage(input_tokens=self.of(tier), output_tokens=self.text(tier, answer))


class CallProgress:
    """The tier in flight and the text it has streamed, kept as the call goes."""

    def __init__(self) -> None:
        self._tier: TierConfig | None = None
        self._prompt: PromptTokens | None = None
        self._parts: list[str] = []
        self._billed: PartialAnswer | None = None  # counted once: the budget and the spend record both ask
        self._charged = False  # the budget was charged (or released): billed() says _charge from then on
        self._charge: PartialAnswer | None = None

    def start(self, tier: TierConfig, prompt: PromptTokens) -> None:
        """The request to ``tier`` is about to be sent."""
        self._tier, self._prompt, self._parts, self._billed = tier, prompt, [], None

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._billed = None

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
            usage = TokenUsage(prompt.of(tier), prompt.text(tier, self.text()) if self._parts else 0)
            self._billed = PartialAnswer(tier.name, usage, cost_usd(tier.price, usage))
        return self._billed
