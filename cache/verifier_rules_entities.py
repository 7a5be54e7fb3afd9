"""The ``entity`` and ``entity_order`` rules, and how names, quoted strings and ordered name pairs are read."""

from __future__ import annotations

import itertools
import re

from tierwise.cache.verifier_lexicon import FUNCTION_WORDS, MONTHS, NOT_ENTITIES, ORDER_WORDS, UNITS, WEEKDAYS
from tierwise.cache.verifier_text import TextSignature, entity_token, tokenize_words

_QUOTED = re.compile(r"\"([^\"]{1,80})\"|“([^”]{1,80})”|(?<![A-Za-z])'([^']{2,80})'(?![A-Za-z])")


def find_entities(raw_tokens: list[str], tokens: list[str], starts: set[int]) -> list[tuple[int, str]]:
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
        word = entity_token(word)
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


def find_ordered_entities(
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


def find_quoted(text: str) -> frozenset[str]:
    return frozenset(
        " ".join(next(g for g in match.groups() if g).lower().split()) for match in _QUOTED.finditer(text)
    )


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
            if f" {' '.join(tokenize_words(quote))} " not in other.lower:
                (quotes_a if quote in a.quoted else quotes_b).append(f"quoted {quote!r}")
        return names_a, names_b, quotes_a, quotes_b

    def sides(self, a: TextSignature, b: TextSignature) -> tuple[list[str], list[str], list[str]]:
        """Names only in ``a`` and only in ``b`` (quoted strings after the names); no conflicts."""
        names_a, names_b, quotes_a, quotes_b = self._one_sided(a, b)
        return names_a + quotes_a, names_b + quotes_b, []

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        names_a, names_b, quotes_a, quotes_b = self._one_sided(a, b)
        return [f"{item} missing from one text" for item in names_a + names_b + sorted(quotes_a + quotes_b)]


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
