"""Judges: score an answer to a prompt in [0, 1].

``LlmJudge`` asks a configured tier with a versioned judging prompt and reads
the score from its reply; a reply with no readable score in [0, 1] is a judge
failure, never a guessed score. Other judges are plugins: a package registers a
``JudgeFactory`` under the ``tierwise.judges`` entry-point group and
``learning.judge.kind`` names it (tierwise.training registers ``replay``, the
recorded-score judge of the simulations), so serving never imports them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from tierwise.router.config import JudgeConfig, TierConfig
from tierwise.router.pricing import cost_usd, expected_cost_usd
from tierwise.router.providers.base import ChatCall, Provider
from tierwise.router.providers.errors import ProviderError
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, TokenUsage

# Versioned: a judgment records the version that produced it; change the text only under a new key.
JUDGE_PROMPTS: dict[str, tuple[str, str]] = {
    "v1": (
        "You are a strict grader. You read a user's request and an assistant's answer and rate how "
        "well the answer fulfils the request: correct, complete, and following its instructions. "
        "Reply with JSON only.",
        "Request:\n<<<\n{prompt}\n>>>\n\nAnswer:\n<<<\n{answer}\n>>>\n\n"
        'Reply with exactly {{"score": S}} where S is a number from 0 (useless or wrong) to 1 '
        "(fully correct and complete).",
    ),
}

_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_SCORE_FIELD = re.compile(r"score[\"']?\s*(?:[:=]|is)?\s*(-?\d+(?:\.\d+)?|-?\.\d+)", re.I)
_BARE_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


@dataclass(frozen=True, slots=True)
class JudgeItem:
    request_id: str
    messages: Sequence[ChatMessage]
    answer: str
    tier: str
    model: str


@dataclass(frozen=True, slots=True)
class Judgment:
    score: float | None  # None: the judge failed (``error`` says why)
    judge: str  # which judge, e.g. "llm:large:v1" or REPLAY_LABEL
    error: str = ""
    tier: str = ""  # the tier that judged ("" when no model was called)
    model: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost_usd: Decimal = Decimal(0)


class Judge(Protocol):
    @property
    def label(self) -> str: ...

    def max_cost_usd(self, item: JudgeItem) -> Decimal:
        """The most judging ``item`` can cost (reserved against the sampling budget first)."""
        ...

    async def judge(self, item: JudgeItem) -> Judgment: ...


def in_range(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and 0.0 <= number <= 1.0 else None


def parse_score(reply: str) -> float | None:
    """The score in a judge's reply: a JSON ``{"score": x}``, else ``score: x``, else a bare number.

    Anything else, or a number outside [0, 1], is None (a judge failure).
    """
    for match in _JSON_OBJECT.finditer(reply):
        try:
            data = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(data, dict) and "score" in data:
            return in_range(data["score"])
    field = _SCORE_FIELD.search(reply)
    if field is not None:
        return in_range(field.group(1))
    bare = reply.strip().rstrip(".")
    return in_range(bare) if _BARE_NUMBER.fullmatch(bare) else None


class LlmJudge:
    def __init__(
        self,
        tier: TierConfig,
        provider: Provider,
        tokens: TokenCounter,
        *,
        prompt_version: str = "v1",
        max_output_tokens: int = 64,
        timeout_s: float = 60.0,
    ) -> None:
        if prompt_version not in JUDGE_PROMPTS:
            raise ValueError(
                f"unknown judging prompt version {prompt_version!r}; known: {sorted(JUDGE_PROMPTS)}"
            )
        self._tier, self._provider, self._tokens = tier, provider, tokens
        self._version = prompt_version
        self._max_output = max_output_tokens
        self._timeout_s = timeout_s

    @property
    def label(self) -> str:
        return f"llm:{self._tier.name}:{self._version}"

    def _messages(self, item: JudgeItem) -> list[ChatMessage]:
        system, template = JUDGE_PROMPTS[self._version]
        prompt = "\n\n".join(f"[{m.role}] {m.content}" for m in item.messages)
        return [
            ChatMessage("system", system),
            ChatMessage("user", template.format(prompt=prompt, answer=item.answer)),
        ]

    def _input_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self._tokens.count_messages(messages, self._tier.model, encoding=self._tier.encoding)

    def max_cost_usd(self, item: JudgeItem) -> Decimal:
        return expected_cost_usd(self._tier.price, self._input_tokens(self._messages(item)), self._max_output)

    async def judge(self, item: JudgeItem) -> Judgment:
        messages = self._messages(item)
        call = ChatCall(
            self._tier.model, messages, self._timeout_s, max_tokens=self._max_output, temperature=0.0
        )
        try:
            result = await self._provider.complete(call)
        except ProviderError as exc:
            return Judgment(
                None, self.label, f"judge call failed: {exc.message}", self._tier.name, self._tier.model
            )
        usage = result.usage or TokenUsage(
            self._input_tokens(messages), self._tokens.count_text(result.content, model=self._tier.model)
        )
        score = parse_score(result.content)
        return Judgment(
            score,
            self.label,
            "" if score is not None else "no score in [0, 1] in the judge's reply",
            self._tier.name,
            self._tier.model,
            usage,
            cost_usd(self._tier.price, usage),
        )


class JudgeFactory(Protocol):
    """What a ``tierwise.judges`` entry point loads: builds its judge from ``learning.judge``.

    It raises ``ValueError`` (or ``OSError``) with a message for a setting it cannot use.
    """

    def __call__(self, settings: JudgeConfig) -> Judge: ...
