"""Cheap, explainable rules that reject cache candidates differing in what changes the answer.

Embeddings of "cancel my subscription" and "don't cancel my subscription" are nearly
identical, yet one answer is wrong for the other. Each rule below reads a small,
regex-built signature of both texts and lists the differences it sees; a candidate
with any difference is rejected. Rules run in microseconds (pure Python + regex,
signatures are memoised per text) and every rejection says which rule fired and why.

Rules (``RULES``):

* ``number``   numbers differ: digits, written numbers ("five", "twenty one"), scale words
  ("5k", "2 million"), and the unit/currency attached to the same value ("5 km" vs "5 mi").
* ``date``     dates and times differ: months, weekdays, years in ISO/slash dates, clock times
  (5pm ≠ 5am, 17:00 = 5pm), and relative days (today / tomorrow / next week).
* ``negation`` one text is negated and the other is not (not, no, never, without, don't, can't, except, unless, ...).
* ``entity``   a named thing of one text is missing from the other: capitalised words away from the
  sentence start, acronyms, mixed-case names (iPhone), quoted strings.
* ``scope``    the same noun is owned or quantified differently ("my account" vs "all accounts",
  "my account" vs "his account").
* ``antonym``  a word of one text is replaced by its opposite in the other (buy/sell, best/worst,
  install/uninstall).

Guards (``GUARD_RULES``, not model features): ``number_replaced`` and ``entity_replaced`` are
the strict cores of ``number`` and ``entity``: they fire only when each text has a number (a
name) the other lacks, or a unit conflicts, so a verifier can keep them hard while a mere
omission only raises its bar. ``entity_order`` sees two names swapped around an order word
("Chicago before Berlin" vs "Berlin before Chicago"). ``substitution`` sees one text made from
the other by replacing a single content word ("contain" vs "lack", "repair" vs "replace"), whatever
the word: no table of opposites needed.

The rules live by family beside this module: ``verifier_rules_quantities`` (number, date),
``verifier_rules_entities`` (entity, entity_order), ``verifier_rules_wording`` (negation,
scope, antonym); ``verifier_text`` holds the signature they compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

from tierwise.cache.verification import PairVectors, VerifierVerdict
from tierwise.cache.verifier_rules_entities import (
    EntityOrderRule,
    EntityRule,
    find_entities,
    find_ordered_entities,
    find_quoted,
)
from tierwise.cache.verifier_rules_quantities import (
    DateRule,
    NumberRule,
    find_calendar_words,
    find_numbers,
    strip_dates,
)
from tierwise.cache.verifier_rules_wording import (
    AntonymRule,
    NegationRule,
    ScopeRule,
    SubstitutionRule,
    count_negations,
    find_scopes,
)
from tierwise.cache.verifier_text import TextSignature, entity_token, tokens_and_starts

__all__ = [
    "GUARD_RULES",
    "RULES",
    "RULES_BY_NAME",
    "AntonymRule",
    "DateRule",
    "EntityOrderRule",
    "EntityRule",
    "NegationRule",
    "NumberRule",
    "PairRule",
    "ReplacedRule",
    "RuleVerifier",
    "ScopeRule",
    "SidedRule",
    "SubstitutionRule",
    "TextSignature",
    "rule_differences",
    "signature",
]

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})


@lru_cache(maxsize=8192)
def signature(text: str) -> TextSignature:
    """Parse one text; memoised because the same cached entry is checked against many queries."""
    text = text.translate(_APOSTROPHES)
    without_dates, dates = strip_dates(text)
    raw_tokens, starts = tokens_and_starts(text)
    tokens = [token.lower() for token in raw_tokens]
    dates |= find_calendar_words(raw_tokens, starts)
    named = find_entities(raw_tokens, tokens, starts)
    return TextSignature(
        lower=" " + " ".join(tokens) + " ",
        words=frozenset(entity_token(token) for token in tokens),
        numbers=find_numbers(without_dates),
        dates=frozenset(dates),
        negations=count_negations(tokens),
        entities=frozenset(name for _, name in named),
        quoted=find_quoted(text),
        scopes=find_scopes(tokens),
        ordered_entities=find_ordered_entities(named, tokens, starts),
    )


class PairRule(Protocol):
    """One kind of answer-changing difference between two texts."""

    name: str

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        """Human-readable differences; empty when the rule sees none."""
        ...


RULES: tuple[PairRule, ...] = (
    NumberRule(),
    DateRule(),
    NegationRule(),
    EntityRule(),
    ScopeRule(),
    AntonymRule(),
)


class SidedRule(PairRule, Protocol):
    def sides(self, a: TextSignature, b: TextSignature) -> tuple[list[str], list[str], list[str]]: ...


class ReplacedRule:
    """Fires only when each text holds a value of the kind the other lacks, or the two conflict.

    "A table for 4" vs "a table for 5" and "the capital of France" vs "of Germany" are
    replacements; "Trump" vs "Donald Trump" or "the best laptops" vs "the top 10 laptops"
    only leave a detail out, which its base rule also counts.
    """

    def __init__(self, base: SidedRule) -> None:
        self.base = base
        self.name = f"{base.name}_replaced"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        only_a, only_b, conflicts = self.base.sides(a, b)
        replaced = [f"{only_a[0]} vs {only_b[0]}"] if only_a and only_b else []
        return conflicts + replaced


# Not model features (the feature layout counts ``RULES``), only guards a verifier may name.
GUARD_RULES: tuple[PairRule, ...] = (
    ReplacedRule(NumberRule()),
    ReplacedRule(EntityRule()),
    EntityOrderRule(),
    SubstitutionRule(),
)
RULES_BY_NAME: dict[str, PairRule] = {rule.name: rule for rule in (*RULES, *GUARD_RULES)}


def rule_differences(a_text: str, b_text: str, rules: Iterable[PairRule] = RULES) -> dict[str, list[str]]:
    """Differences per rule name (every rule listed, possibly with none)."""
    a, b = signature(a_text), signature(b_text)
    return {rule.name: rule.differences(a, b) for rule in rules}


class RuleVerifier:
    """CandidateVerifier that rejects on the first rule reporting a difference."""

    def __init__(self, rules: Iterable[PairRule] = RULES) -> None:
        self.rules = tuple(rules)

    def first_difference(self, query_text: str, candidate_text: str) -> str | None:
        query, candidate = signature(query_text), signature(candidate_text)
        for rule in self.rules:
            diffs = rule.differences(query, candidate)
            if diffs:
                return f"{rule.name}: {diffs[0]}"
        return None

    def verify(
        self, query_text: str, candidate_text: str, cosine: float, vectors: PairVectors | None = None
    ) -> VerifierVerdict:
        reason = self.first_difference(query_text, candidate_text)
        if reason is not None:
            return VerifierVerdict(accept=False, score=0.0, reason=reason)
        return VerifierVerdict(accept=True, score=1.0, reason="rules: no difference")
