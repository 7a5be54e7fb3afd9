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
("Chicago before Berlin" vs "Berlin before Chicago").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from tierwise.cache.verification import PairVectors, VerifierVerdict
from tierwise.cache.verifier_lexicon import (
    AMBIGUOUS_MONTHS,
    ANTONYMS,
    FUNCTION_WORDS,
    MONTHS,
    NEGATIONS,
    NOT_ENTITIES,
    NUMBER_WORDS,
    ORDER_WORDS,
    ORDINALS,
    OWNERS,
    RELATIVE_DAYS,
    SCALES,
    SCOPE_CLASSES,
    UNITS,
    WEEKDAYS,
)

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'+#]*|\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!]\s+|\n")

_ATTACHED = re.compile(
    r"(?<![\w.])([$€£₹])?(\d+(?:,\d{3})*(?:\.\d+)?)(st|nd|rd|th|k|m|bn|%|[a-z]{1,3})?\b", re.I
)
_RELATIVE_PERIOD = re.compile(
    r"\b(this|next|last|previous|coming|past)\s+(week|month|year|weekend|morning|evening|night|summer|winter|"
    r"spring|fall|autumn|quarter|semester)\b",
    re.I,
)
_CLOCK = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?m\.?(?![a-z])|\b(\d{1,2}):(\d{2})\b", re.I)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_SLASH_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?\b")
_QUOTED = re.compile(r"\"([^\"]{1,80})\"|“([^”]{1,80})”|(?<![A-Za-z])'([^']{2,80})'(?![A-Za-z])")


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


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _number_value(token: str) -> float | None:
    cleaned = token.replace(",", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def _written_numbers(tokens: list[str]) -> list[tuple[float, int, int]]:
    """(value, first index, last index) of runs like "twenty one", "two hundred", "third", "a week"."""
    found: list[tuple[float, int, int]] = []
    index = 0
    while index < len(tokens):
        word = tokens[index]
        if word in ("a", "an", "per") and index + 1 < len(tokens) and tokens[index + 1] in UNITS:
            # "a month" = "per month" = "one month" = "1 month".
            found.append((1.0, index, index))
            index += 1
            continue
        if word in ORDINALS:
            found.append((float(ORDINALS[word]), index, index))
            index += 1
            continue
        if word not in NUMBER_WORDS:
            index += 1
            continue
        start, total, current = index, 0, 0
        while index < len(tokens) and (tokens[index] in NUMBER_WORDS or tokens[index] in SCALES):
            word = tokens[index]
            if word in NUMBER_WORDS:
                current += NUMBER_WORDS[word]
            elif word == "hundred":
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * SCALES[word]
                current = 0
            index += 1
            # "two hundred and fifty": "and" joins a scale word to the rest of the same number.
            if (
                word in SCALES
                and index + 1 < len(tokens)
                and tokens[index] == "and"
                and tokens[index + 1] in NUMBER_WORDS
            ):
                index += 1
        run_end = index - 1
        # "one" alone is usually a pronoun ("how can one learn"): keep it only before a unit.
        if tokens[start] == "one" and run_end == start:
            following = tokens[index] if index < len(tokens) else ""
            if following not in UNITS:
                continue
        found.append((float(total + current), start, run_end))
    return found


def _numbers(text: str) -> frozenset[tuple[float, str]]:
    quantities: set[tuple[float, str]] = set()
    for match in _ATTACHED.finditer(text):
        currency, digits, suffix = match.group(1), match.group(2), (match.group(3) or "").lower()
        value = _number_value(digits)
        if value is None:
            continue
        unit = UNITS.get(currency or "", "")
        if suffix in SCALES and suffix not in ("m",):
            value *= SCALES[suffix]
        elif suffix in UNITS:
            unit = unit or UNITS[suffix]
        else:
            # A unit written after a space ("5 km", "500 rupees") or a scale word ("2 million").
            rest = _words(text[match.end() : match.end() + 24].lower())
            if rest and rest[0] in SCALES and rest[0] not in ("m", "k"):
                value *= SCALES[rest[0]]
                rest = rest[1:]
            if rest and rest[0] in UNITS and not unit:
                unit = UNITS[rest[0]]
        quantities.add((value, unit))
    tokens = [token.lower() for token in _words(text)]
    for value, _, end in _written_numbers(tokens):
        following = tokens[end + 1] if end + 1 < len(tokens) else ""
        quantities.add((value, UNITS.get(following, "")))
    return frozenset(quantities)


def _strip_dates(text: str) -> tuple[str, set[str]]:
    """Date/time mentions found, and the text with them blanked so their digits are not numbers too."""
    found: set[str] = set()

    def clock(match: re.Match[str]) -> str:
        if match.group(3):
            hour = int(match.group(1)) % 12 + (12 if match.group(3).lower() == "p" else 0)
            minute = int(match.group(2) or 0)
        else:
            hour, minute = int(match.group(4)), int(match.group(5))
            if hour > 23 or minute > 59:
                return match.group(0)
        found.add(f"time:{hour:02d}:{minute:02d}")
        return " "

    def iso(match: re.Match[str]) -> str:
        found.add(f"date:{int(match.group(1))}-{int(match.group(2))}-{int(match.group(3))}")
        return " "

    def slash(match: re.Match[str]) -> str:
        year = match.group(3)
        found.add(
            f"date:{int(match.group(1))}/{int(match.group(2))}" + (f"/{int(year) % 100}" if year else "")
        )
        return " "

    text = _ISO_DATE.sub(iso, text)
    text = _CLOCK.sub(clock, text)
    text = _SLASH_DATE.sub(slash, text)
    for match in _RELATIVE_PERIOD.finditer(text):
        found.add(f"rel:{match.group(1).lower()} {match.group(2).lower()}")
    return text, found


def _calendar_words(raw_tokens: list[str], starts: set[int]) -> set[str]:
    found: set[str] = set()
    for index, raw in enumerate(raw_tokens):
        word = raw.lower()
        if word in WEEKDAYS:
            found.add(f"weekday:{WEEKDAYS[word]}")
        elif word in RELATIVE_DAYS:
            found.add(f"rel:{word}")
        elif word in MONTHS:
            near_number = any(
                0 <= other < len(raw_tokens) and raw_tokens[other][0].isdigit()
                for other in (index - 1, index + 1)
            )
            capitalised_mid = raw[0].isupper() and index not in starts
            if word not in AMBIGUOUS_MONTHS or near_number or capitalised_mid:
                found.add(f"month:{MONTHS[word]}")
    return found


def _tokens_and_starts(text: str) -> tuple[list[str], set[int]]:
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


def _entity_token(word: str) -> str:
    return word[:-2] if word.endswith("'s") else word


def _entities(raw_tokens: list[str], tokens: list[str], starts: set[int]) -> list[tuple[int, str]]:
    """(token index, name) of every token that reads as a name, in text order."""
    # Title Case text ("What Is The Best Phone") tells nothing by capitals: there, keep only
    # acronyms and odd case. It shows in function words capitalised mid-sentence.
    function_words = [i for i, word in enumerate(tokens) if word in FUNCTION_WORDS and i not in starts]
    capital_function = sum(1 for i in function_words if raw_tokens[i][0].isupper())
    title_case = capital_function >= 2 and 2 * capital_function >= len(function_words)
    found: list[tuple[int, str]] = []
    for index, raw in enumerate(raw_tokens):
        first = raw[0]
        if not first.isalpha():
            continue
        word = tokens[index]
        if not first.isupper() and raw[1:] == word[1:]:
            continue  # all lower case: not a name by its spelling
        word = _entity_token(word)
        # Units and currencies ("Rs", "INR", "KG") are the number rule's business.
        if word in NOT_ENTITIES or word in MONTHS or word in WEEKDAYS or word in UNITS:
            continue
        bare = raw[:-2] if raw.endswith("'s") else raw
        acronym = len(bare) >= 2 and bare.isupper()
        mixed = not acronym and bare[1:] != word[1:]
        plain_capital = first.isupper() and index not in starts and not title_case
        if acronym or mixed or plain_capital:
            found.append((index, word))
    return found


_ORDER_REACH = 8  # tokens between two names that an order word may link


def _ordered_entities(
    named: list[tuple[int, str]], tokens: list[str], starts: set[int]
) -> frozenset[tuple[str, str, str]]:
    """(a, word, b) for two names of one sentence with an order word between them ("chicago", "before",
    "berlin"): swapping a and b changes the question."""
    found: set[tuple[str, str, str]] = set()
    for (i, first), (j, second) in itertools.pairwise(named):
        between = range(i + 1, j)
        if first == second or j - i > _ORDER_REACH or any(k in starts for k in range(i + 1, j + 1)):
            continue
        word = next((tokens[k] for k in between if tokens[k] in ORDER_WORDS), None)
        if word is not None:
            found.add((first, word, second))
    return frozenset(found)


def _quoted(text: str) -> frozenset[str]:
    return frozenset(
        " ".join(next(g for g in match.groups() if g).lower().split()) for match in _QUOTED.finditer(text)
    )


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _scopes(tokens: list[str]) -> frozenset[tuple[str, str]]:
    """(head noun, scope class) for each determiner: "all my accounts" gives (account, all), (account, self)."""
    found: set[tuple[str, str]] = set()
    index = 0
    while index < len(tokens):
        if tokens[index] not in SCOPE_CLASSES:
            index += 1
            continue
        classes = []
        while index < len(tokens) and tokens[index] in SCOPE_CLASSES:
            classes.append(SCOPE_CLASSES[tokens[index]])
            index += 1
        if index < len(tokens) and tokens[index][0].isalpha():
            head = _singular(tokens[index])
            found.update((head, scope) for scope in classes)
    return frozenset(found)


def _negation_count(tokens: list[str]) -> int:
    count = 0
    for index, token in enumerate(tokens):
        if not (token.replace("'", "") in NEGATIONS or token.endswith("n't")):
            continue
        before = tokens[index - 1] if index else ""
        after = tokens[index + 1] if index + 1 < len(tokens) else ""
        # "... or not?", "why not", "if not, ...", "no matter", "not only": no claim is negated.
        if (token == "not" and (before in ("or", "why", "if") or after == "only")) or (
            token == "no" and after == "matter"
        ):
            continue
        count += 1
    return count


@lru_cache(maxsize=8192)
def signature(text: str) -> TextSignature:
    """Parse one text; memoised because the same cached entry is checked against many queries."""
    text = text.translate(_APOSTROPHES)
    without_dates, dates = _strip_dates(text)
    raw_tokens, starts = _tokens_and_starts(text)
    tokens = [token.lower() for token in raw_tokens]
    dates |= _calendar_words(raw_tokens, starts)
    named = _entities(raw_tokens, tokens, starts)
    return TextSignature(
        lower=" " + " ".join(tokens) + " ",
        words=frozenset(_entity_token(token) for token in tokens),
        numbers=_numbers(without_dates),
        dates=frozenset(dates),
        negations=_negation_count(tokens),
        entities=frozenset(name for _, name in named),
        quoted=_quoted(text),
        scopes=_scopes(tokens),
        ordered_entities=_ordered_entities(named, tokens, starts),
    )


class PairRule(Protocol):
    """One kind of answer-changing difference between two texts."""

    name: str

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        """Human-readable differences; empty when the rule sees none."""
        ...


def _describe(values: Iterable[object]) -> str:
    return ",".join(sorted(str(value) for value in values))


def _unit_values(quantities: frozenset[tuple[float, str]]) -> set[str]:
    return {unit for _, unit in quantities if unit}


def _units_by_value(quantities: frozenset[tuple[float, str]]) -> dict[float, frozenset[str]]:
    grouped: dict[float, set[str]] = {}
    for value, unit in quantities:
        if unit:
            grouped.setdefault(value, set()).add(unit)
    return {value: frozenset(units) for value, units in grouped.items()}


class NumberRule:
    name = "number"

    def sides(self, a: TextSignature, b: TextSignature) -> tuple[list[str], list[str], list[str]]:
        """Numbers only in ``a``, only in ``b``, and same-value unit conflicts, each described."""
        values_a = {value for value, _ in a.numbers}
        values_b = {value for value, _ in b.numbers}
        only_a: list[str] = []
        only_b: list[str] = []
        for value in sorted(values_a ^ values_b):
            own, other = (a, b) if value in values_a else (b, a)
            units = {unit for amount, unit in own.numbers if amount == value}
            # "a day" / "per year" is a count of one only against another count in the same unit.
            if value == 1.0 and "" not in units and not units & _unit_values(other.numbers):
                continue
            (only_a if value in values_a else only_b).append(f"{value:g}")
        # Same value, both with a unit, different units: "5 km" vs "5 miles".
        units_a = _units_by_value(a.numbers)
        units_b = _units_by_value(b.numbers)
        conflicts = [
            f"{value:g} {_describe(units_a[value])} vs {value:g} {_describe(units_b[value])}"
            for value in sorted(units_a.keys() & units_b.keys())
            if units_a[value] != units_b[value]
        ]
        return only_a, only_b, conflicts

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        only_a, only_b, conflicts = self.sides(a, b)
        one_sided = sorted(only_a + only_b, key=float)
        return [f"{value} only in one text" for value in one_sided] + conflicts


# "today" is what a question without a date means anyway; it differs only from another date.
_IMPLICIT_DATES = frozenset({"rel:today"})


class DateRule:
    name = "date"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        diffs = []
        for mention in sorted(a.dates ^ b.dates):
            other = b if mention in a.dates else a
            if mention in _IMPLICIT_DATES and not other.dates:
                continue
            diffs.append(f"{mention} only in one text")
        return diffs


class NegationRule:
    name = "negation"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        if (a.negations > 0) != (b.negations > 0):
            return [f"negated {a.negations} vs {b.negations} times"]
        return []


def _mentioned(word: str, other: TextSignature) -> bool:
    """Whether ``other`` names ``word``, allowing plurals/derivations ("India" ~ "Indian")."""
    if f" {word} " in other.lower or word in other.words:
        return True
    return len(word) >= 4 and any(
        len(candidate) >= 4
        and abs(len(candidate) - len(word)) <= 2
        and (candidate.startswith(word) or word.startswith(candidate))
        for candidate in other.words
    )


class EntityRule:
    name = "entity"

    @staticmethod
    def _one_sided(a: TextSignature, b: TextSignature) -> tuple[list[str], list[str], list[str], list[str]]:
        """Described names only in ``a``, only in ``b``, then quoted strings only in ``a``, only in ``b``."""
        names_a = [f"{name!r}" for name in sorted(a.entities) if not _mentioned(name, b)]
        names_b = [f"{name!r}" for name in sorted(b.entities) if not _mentioned(name, a)]
        quotes_a: list[str] = []
        quotes_b: list[str] = []
        for quote in sorted(a.quoted ^ b.quoted):
            other = b if quote in a.quoted else a
            if f" {' '.join(_words(quote))} " not in other.lower:
                (quotes_a if quote in a.quoted else quotes_b).append(f"quoted {quote!r}")
        return names_a, names_b, quotes_a, quotes_b

    def sides(self, a: TextSignature, b: TextSignature) -> tuple[list[str], list[str], list[str]]:
        """Names only in ``a`` and only in ``b`` (quoted strings after the names); no conflicts."""
        names_a, names_b, quotes_a, quotes_b = self._one_sided(a, b)
        return names_a + quotes_a, names_b + quotes_b, []

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        names_a, names_b, quotes_a, quotes_b = self._one_sided(a, b)
        return [f"{item} missing from one text" for item in names_a + names_b + sorted(quotes_a + quotes_b)]


class ScopeRule:
    name = "scope"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        heads_a: dict[str, set[str]] = {}
        heads_b: dict[str, set[str]] = {}
        for head, scope in a.scopes:
            heads_a.setdefault(head, set()).add(scope)
        for head, scope in b.scopes:
            heads_b.setdefault(head, set()).add(scope)
        diffs = []
        for head in sorted(heads_a.keys() & heads_b.keys()):
            scopes_a, scopes_b = heads_a[head], heads_b[head]
            owners_a, owners_b = scopes_a & OWNERS, scopes_b & OWNERS
            # "all accounts" vs "my account"; "all my accounts" vs "my accounts" is the same set.
            all_vs_owned = ("all" in scopes_a and not owners_a and owners_b and "all" not in scopes_b) or (
                "all" in scopes_b and not owners_b and owners_a and "all" not in scopes_a
            )
            # "my/your/our" are often generic in questions; a third party's is not ("hack his phone").
            third_party = (
                bool(owners_a) and bool(owners_b) and (("other" in owners_a) != ("other" in owners_b))
            )
            if all_vs_owned or third_party:
                diffs.append(f"{head}: {_describe(scopes_a)} vs {_describe(scopes_b)}")
        return diffs


def _opposite_pairs(only_a: set[str], only_b: set[str]) -> list[str]:
    found: list[str] = []
    for word in sorted(only_a):
        opposites = ANTONYMS.get(word, frozenset()) & only_b
        for prefix in ("un", "dis"):
            if prefix + word in only_b:
                opposites = opposites | {prefix + word}
            if word.startswith(prefix) and word[len(prefix) :] in only_b and len(word) - len(prefix) >= 3:
                opposites = opposites | {word[len(prefix) :]}
        found.extend(f"{word} vs {opposite}" for opposite in sorted(opposites))
    return found


class AntonymRule:
    name = "antonym"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        return _opposite_pairs(set(a.words - b.words), set(b.words - a.words))


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


class EntityOrderRule:
    """The same two names in swapped order around an order word: "Chicago before Berlin" vs "Berlin
    before Chicago", "from Paris to Rome" vs "from Rome to Paris" (every name is in both texts, so the
    entity rules see nothing)."""

    name = "entity_order"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        swapped = [
            (first, word, second)
            for first, word, second in sorted(a.ordered_entities)
            if (second, word, first) in b.ordered_entities and (first, word, second) not in b.ordered_entities
        ]
        return [
            f"{first!r} {word} {second!r} vs {second!r} {word} {first!r}" for first, word, second in swapped
        ]


# Not model features (the feature layout counts ``RULES``), only guards a verifier may name.
GUARD_RULES: tuple[PairRule, ...] = (
    ReplacedRule(NumberRule()),
    ReplacedRule(EntityRule()),
    EntityOrderRule(),
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
