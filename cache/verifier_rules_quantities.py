"""The ``number`` and ``date`` rules, and how numbers (digits, words, units) and dates are read from text."""

from __future__ import annotations

import re

from tierwise.cache.verifier_lexicon import (
    AMBIGUOUS_MONTHS,
    MONTHS,
    NUMBER_WORDS,
    ORDINALS,
    RELATIVE_DAYS,
    SCALES,
    UNITS,
    WEEKDAYS,
)
from tierwise.cache.verifier_text import TextSignature, describe_values, tokenize_words

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


def find_numbers(text: str) -> frozenset[tuple[float, str]]:
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
            rest = tokenize_words(text[match.end() : match.end() + 24].lower())
            if rest and rest[0] in SCALES and rest[0] not in ("m", "k"):
                value *= SCALES[rest[0]]
                rest = rest[1:]
            if rest and rest[0] in UNITS and not unit:
                unit = UNITS[rest[0]]
        quantities.add((value, unit))
    tokens = [token.lower() for token in tokenize_words(text)]
    for value, _, end in _written_numbers(tokens):
        following = tokens[end + 1] if end + 1 < len(tokens) else ""
        quantities.add((value, UNITS.get(following, "")))
    return frozenset(quantities)


def strip_dates(text: str) -> tuple[str, set[str]]:
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


def find_calendar_words(raw_tokens: list[str], starts: set[int]) -> set[str]:
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
            f"{value:g} {describe_values(units_a[value])} vs {value:g} {describe_values(units_b[value])}"
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
