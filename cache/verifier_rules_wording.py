"""The ``negation``, ``scope`` and ``antonym`` rules: wording that flips or narrows what a text asks."""

from __future__ import annotations

from tierwise.cache.verifier_lexicon import ANTONYMS, NEGATIONS, OWNERS, SCOPE_CLASSES, STOPWORDS
from tierwise.cache.verifier_text import TextSignature, describe_values


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def find_scopes(tokens: list[str]) -> frozenset[tuple[str, str]]:
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


def count_negations(tokens: list[str]) -> int:
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


class NegationRule:
    name = "negation"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        if (a.negations > 0) != (b.negations > 0):
            return [f"negated {a.negations} vs {b.negations} times"]
        return []


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
                diffs.append(f"{head}: {describe_values(scopes_a)} vs {describe_values(scopes_b)}")
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


def _spelling_variant(x: str, y: str) -> bool:
    """Same word give or take an inflection or a typo: a shared 4-letter stem, one edit, one transposition."""
    if x[:4] == y[:4] and min(len(x), len(y)) >= 4:
        return True
    if len(x) == len(y):
        differ = [index for index in range(len(x)) if x[index] != y[index]]
        return len(differ) == 1 or (
            len(differ) == 2
            and differ[1] == differ[0] + 1
            and x[differ[0]] == y[differ[1]]
            and x[differ[1]] == y[differ[0]]
        )
    shorter, longer = sorted((x, y), key=len)
    return len(longer) - len(shorter) == 1 and any(
        longer[:index] + longer[index + 1 :] == shorter for index in range(len(longer))
    )


class SubstitutionRule:
    """The two texts are one word sequence but for one content word: that word is what differs.

    "Which foods contain grain?" vs "Which foods lack grain?", "How do I repair a kettle?" vs
    "... replace a kettle?": whatever the word, a question that changes only it usually asks
    something else (on QQP's train split, 19% of such pairs are duplicates against 37% overall).
    Function words (``STOPWORDS``), inflections and typos do not count.
    """

    name = "substitution"

    def differences(self, a: TextSignature, b: TextSignature) -> list[str]:
        left, right = a.lower.split(), b.lower.split()
        prefix = 0
        while prefix < min(len(left), len(right)) and left[prefix] == right[prefix]:
            prefix += 1
        suffix = 0
        while suffix < min(len(left), len(right)) - prefix and left[-1 - suffix] == right[-1 - suffix]:
            suffix += 1
        only_left, only_right = left[prefix : len(left) - suffix], right[prefix : len(right) - suffix]
        if len(only_left) != 1 or len(only_right) != 1:
            return []
        x, y = only_left[0], only_right[0]
        if not (x[0].isalpha() and y[0].isalpha()) or x in STOPWORDS or y in STOPWORDS:
            return []
        return [] if _spelling_variant(x, y) else [f"{x} vs {y}"]
