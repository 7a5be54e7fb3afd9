"""Prompt-blind routing policies. They are real choices, and the baselines every
learned policy is evaluated against."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from tierwise.router.policies.base import RoutingContext, TierChoice


class CheapestPolicy:
    name = "cheapest"
    needs_embedding = False

    def choose(self, context: RoutingContext) -> TierChoice:
        return TierChoice(context.candidates[0].name, "cheapest")


class StrongestPolicy:
    """The last candidate: tiers are configured cheapest (and weakest) first."""

    name = "strongest"
    needs_embedding = False

    def choose(self, context: RoutingContext) -> TierChoice:
        return TierChoice(context.candidates[-1].name, "strongest")


class RandomPolicy:
    """Uniform over the candidates, seeded and keyed by the prompt, so a replay of
    the same traffic routes the same way whatever the arrival order."""

    name = "random"
    needs_embedding = False

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    def choose(self, context: RoutingContext) -> TierChoice:
        key = f"{self._seed}\x00{context.request.prompt_text}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
        return TierChoice(context.candidates[draw % len(context.candidates)].name, "random")


class LengthPolicy:
    """The cheapest tier whose input-token threshold admits the prompt.

    Longer prompts tend to be harder; a tier without a threshold takes any length.
    """

    name = "length"
    needs_embedding = False

    def __init__(self, max_input_tokens: Mapping[str, int]) -> None:
        self._limits = dict(max_input_tokens)

    def choose(self, context: RoutingContext) -> TierChoice:
        for option in context.candidates:
            limit = self._limits.get(option.name)
            if limit is None or context.input_tokens <= limit:
                return TierChoice(option.name, "length")
        return TierChoice(context.candidates[-1].name, "length")
