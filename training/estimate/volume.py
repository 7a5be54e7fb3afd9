"""A planned workload given as a token volume: conversations, turns, tokens per turn.

The model of a conversation (``messages`` user turns, each answered):

- turn k (k = 1 … m) sends the system prompt, every earlier user message and
  assistant answer, and its own message, so its input is
  ``S + k·u + (k − 1)·o`` tokens and its output ``o`` tokens;
- a conversation therefore sends ``m·S + u·m(m + 1)/2 + o·m(m − 1)/2`` input
  and ``m·o`` output tokens, in ``m`` requests;
- a month is ``conversations_per_day × days_per_month`` conversations.

Counts are taken as given: chat-format framing tokens are not added.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

FORMULA = (
    "turn k of m: input = S + k*u + (k-1)*o, output = o; per conversation: "
    "input = m*S + u*m(m+1)/2 + o*m(m-1)/2, output = m*o; "
    "per month: x conversations_per_day x days_per_month"
)


class EstimateInputError(ValueError):
    """A bad estimator input; the message names the option."""


@dataclass(frozen=True)
class VolumeSpec:
    conversations_per_day: int
    messages: int  # user turns per conversation, each answered
    tokens_per_message: int
    output_tokens: int
    system_prompt_tokens: int = 0
    days_per_month: int = 30

    def scaled(self, *, messages: int = 1, traffic: int = 1) -> VolumeSpec:
        """Longer conversations (``messages`` times the turns) or more of them (``traffic`` times)."""
        return replace(
            self,
            messages=self.messages * messages,
            conversations_per_day=self.conversations_per_day * traffic,
        )


@dataclass(frozen=True)
class TokenVolume:
    requests: int
    input_tokens: int
    output_tokens: int


_REQUIRED = ("conversations_per_day", "messages", "tokens_per_message", "output_tokens")
_POSITIVE = ("conversations_per_day", "messages", "days_per_month")


def parse_volume(text: str) -> VolumeSpec:
    """``"conversations_per_day=15,messages=6,tokens_per_message=50,output_tokens=150"`` (plus optional
    ``system_prompt_tokens``, ``days_per_month``) as a VolumeSpec; whole numbers only."""
    known = {f.name for f in fields(VolumeSpec)}
    values: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep:
            raise EstimateInputError(f"--volume: expected KEY=VALUE, got {item!r}")
        if key not in known:
            raise EstimateInputError(f"--volume: unknown key {key!r}; known: {', '.join(sorted(known))}")
        if key in values:
            raise EstimateInputError(f"--volume: {key} is given twice")
        if not raw.isdigit():
            raise EstimateInputError(f"--volume: {key} must be a whole number >= 0, got {raw!r}")
        values[key] = int(raw)
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise EstimateInputError(f"--volume: missing {', '.join(missing)}")
    zero = [k for k in _POSITIVE if values.get(k) == 0]
    if zero:
        raise EstimateInputError(f"--volume: {', '.join(zero)} must be at least 1")
    return VolumeSpec(**values)


def conversation_tokens(spec: VolumeSpec) -> TokenVolume:
    """One conversation's requests and tokens, by the closed form in the module docstring."""
    m, s, u, o = spec.messages, spec.system_prompt_tokens, spec.tokens_per_message, spec.output_tokens
    return TokenVolume(
        requests=m,
        input_tokens=m * s + u * m * (m + 1) // 2 + o * m * (m - 1) // 2,
        output_tokens=m * o,
    )


def monthly_tokens(spec: VolumeSpec) -> TokenVolume:
    one = conversation_tokens(spec)
    conversations = spec.conversations_per_day * spec.days_per_month
    return TokenVolume(
        requests=one.requests * conversations,
        input_tokens=one.input_tokens * conversations,
        output_tokens=one.output_tokens * conversations,
    )
