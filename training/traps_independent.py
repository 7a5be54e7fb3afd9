"""Cache traps written apart from the near-miss rules: their words are not the rules' words.

``training/make_traps.py`` shares its antonyms and cue words with ``cache/verifier_lexicon.py``,
so the rules catch every one of its near-misses by construction. These traps are held apart
(``tests/test_verifier_traps_independent.py`` checks it): no template or filler uses a word the
rules or their lexicon know, beyond the function words in ``ALLOWED_STOPWORDS``, none of which is a
negation, antonym, quantifier, owner, number, unit or date cue. A negation here is "lacks",
"refuses", "forgets"; a number comes with a unit the rules do not list ("watt", "gallon").

Six categories, each with near-misses (label 0: one answer must not serve both) and paraphrases
(label 1: one answer serves both): ``paraphrase`` (reworded), ``near_repeat`` (a surface edit, or
one content word changed), ``negation``, ``entity_swap``, ``number_date``, ``scope``.

Every row has an ``id`` and a ``split``: templates, not rows, are dealt alternately to
``validation`` and ``test`` (in the order of a hash of their text), so no test template was seen
while tuning. Seeded and deterministic. ``python -m tierwise.training.traps_independent OUT``
writes the rows as JSON lines (``tierwise cache eval --pairs`` reads them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tierwise.training.traps_independent_templates import CATEGORIES, NEAR_REPEAT_EDITS, SLOTS, Template

TrapSplit = Literal["validation", "test"]
SPLITS: tuple[TrapSplit, ...] = ("validation", "test")
DEFAULT_SEED = 19
PER_GROUP = 55  # rows per (category, label): 6 × 55 = 330 near-misses and 330 paraphrases

# Function words the templates may use although the rules' tables list them. None of them is a
# cue any rule reads as answer-changing (the test asserts it): no negation, antonym, owner or
# quantifier, number, unit, date. "to" and "from" are order words only between two swapped names,
# and no template swaps two names in place.
_STOPWORD_TEXT = (
    "a an the of to in on for with at by from and or is are was do does did how what which who why "
    "where when can should would could will i me it be as if into we you they there"
)
ALLOWED_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class TrapRow:
    id: str
    category: str
    label: int
    split: TrapSplit
    a: str
    b: str

    def to_json(self) -> dict[str, Any]:
        # ``kind`` is what ``tierwise cache eval`` reports metrics by.
        return {
            "id": self.id,
            "a": self.a,
            "b": self.b,
            "label": self.label,
            "kind": self.category,
            "split": self.split,
        }


_BEFORE_VOWEL = re.compile(r"\b([Aa]) ([aeiouAEIOU])")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fillings(template: Template) -> list[tuple[str, str]]:
    """Every filling of the template's slots; a slot named twice ("{city}", "{city2}") takes two values."""
    both = template.a + template.b
    names = sorted(name for name in SLOTS if "{" + name + "}" in both)
    second = {name for name in names if "{" + name + "2}" in both}
    choices: list[list[dict[str, str]]] = []
    for name in names:
        if name in second:
            choices.append([{name: x, name + "2": y} for x, y in itertools.permutations(SLOTS[name], 2)])
        else:
            choices.append([{name: value} for value in SLOTS[name]])
    rows = []
    for combination in itertools.product(*choices):
        filled: dict[str, str] = {}
        for part in combination:
            filled |= part
        rows.append((_articles(template.a.format(**filled)), _articles(template.b.format(**filled))))
    return rows


def _articles(text: str) -> str:
    """The article a vowel asks for: "a orchid" becomes "an orchid"."""
    return _BEFORE_VOWEL.sub(r"\1n \2", text)


def _template_splits(templates: tuple[Template, ...]) -> dict[Template, TrapSplit]:
    """Templates in hash order, dealt alternately: balanced halves, and no template in both."""
    ordered = sorted(templates, key=lambda template: _digest(template.a + "\x00" + template.b))
    return {template: SPLITS[index % 2] for index, template in enumerate(ordered)}


def _near_repeat_paraphrases(bases: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """A text and the same text with a surface edit (case, punctuation, a greeting, a typo)."""
    rows = []
    for base in bases:
        edit = NEAR_REPEAT_EDITS[rng.randrange(len(NEAR_REPEAT_EDITS))]
        rows.append((base, edit(base, rng)))
    return rows


def generate(seed: int = DEFAULT_SEED, per_group: int = PER_GROUP) -> list[TrapRow]:
    """All rows, ``per_group`` per (category, label), spread over the group's templates."""
    rng = random.Random(seed)
    rows: list[TrapRow] = []
    for category, label, templates in CATEGORIES:
        splits = _template_splits(templates)
        pools: list[tuple[TrapSplit, list[tuple[str, str]]]] = []
        for template in templates:
            fillings = _fillings(template)
            if category == "near_repeat" and label == 1:
                fillings = _near_repeat_paraphrases([a for a, _ in fillings], rng)
            rng.shuffle(fillings)
            pools.append((splits[template], fillings))
        # Round-robin over templates so that each contributes about the same number of rows.
        taken = 0
        for depth in itertools.count():
            if taken == per_group or all(depth >= len(pool) for _, pool in pools):
                break
            for split, pool in pools:
                if taken == per_group:
                    break
                if depth < len(pool):
                    a, b = pool[depth]
                    rows.append(TrapRow(f"{category}-{label}-{taken:03d}", category, label, split, a, b))
                    taken += 1
        if taken < per_group:
            raise ValueError(f"{category} label {label}: only {taken} fillings for {per_group} rows")
    return rows


def write_rows(path: Path, rows: list[TrapRow]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("independent_traps.jsonl")
    generated = generate()
    write_rows(target, generated)
    print(f"wrote {len(generated)} rows to {target}")
