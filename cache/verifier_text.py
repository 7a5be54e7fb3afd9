"""What the near-miss rules share: the per-text signature they compare, tokenising, describing values."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TOKEN = re.compile(r"[A-Za-z][A-Za-z'+#]*|\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!]\s+|\n")


@dataclass(frozen=True, slots=True)
class TextSignature:
    """What the rules compare, read once per text."""

    lower: str
    words: frozenset[str]
    numbers: frozenset[tuple[float, str]]
    dates: frozenset[str]
    negations: int
    entities: frozenset[str]
    quoted: frozenset[str]
    scopes: frozenset[tuple[str, str]]
    ordered_entities: frozenset[tuple[str, str, str]]  # (first name, order word between, second name)


def tokenize_words(text: str) -> list[str]:
    return _TOKEN.findall(text)


def tokens_and_starts(text: str) -> tuple[list[str], set[int]]:
    """Tokens, and the indexes of those that begin a sentence (capitalised for grammar, not for a name)."""
    boundaries = {match.end() for match in _SENTENCE_END.finditer(text)}
    tokens: list[str] = []
    starts = {0}
    previous_end = 0
    for match in _TOKEN.finditer(text):
        # A sentence ends between the previous token and this one.
        if any(previous_end < boundary <= match.start() for boundary in boundaries):
            starts.add(len(tokens))
        tokens.append(match.group())
        previous_end = match.end()
    return tokens, starts


def entity_token(word: str) -> str:
    return word[:-2] if word.endswith("'s") else word


def describe_values(values: Iterable[object]) -> str:
    return ",".join(sorted(str(value) for value in values))
