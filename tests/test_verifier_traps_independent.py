"""The independent cache traps: held apart from the rules' words, deterministic, sized, split by template."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from tierwise.cache import verifier_lexicon as lexicon
from tierwise.training.traps_independent import ALLOWED_STOPWORDS, generate
from tierwise.training.traps_independent_templates import CATEGORIES, SLOTS

ROOT = Path(__file__).resolve().parents[1]
RULE_SOURCES = [
    *sorted((ROOT / "cache").glob("verifier_rules*.py")),
    ROOT / "cache" / "verifier_lexicon.py",
    ROOT / "cache" / "verifier_text.py",
]
_WORD = re.compile(r"[A-Za-z]+")
_SLOT = re.compile(r"\{\w+\}")


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def rule_vocabulary() -> set[str]:
    """Every word in a string the rules or their lexicon hold: tables, regexes, messages (not docstrings)."""
    words: set[str] = set()
    for source in RULE_SOURCES:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                words |= {word.lower() for word in _WORD.findall(node.value)}
    return words


def _words(text: str) -> set[str]:
    return {word.lower() for word in _WORD.findall(text)}


def test_the_rule_vocabulary_is_read_whole() -> None:
    vocabulary = rule_vocabulary()
    # One word of each table, and one only a regex or a rule's code spells out.
    for word in ("never", "worst", "kilometres", "tomorrow", "crore", "every", "until", "semester"):
        assert word in vocabulary


def test_templates_and_fillers_share_no_word_with_the_rules() -> None:
    vocabulary = rule_vocabulary()
    used: set[str] = set()
    for _, _, templates in CATEGORIES:
        for template in templates:
            used |= _words(_SLOT.sub(" ", template.a)) | _words(_SLOT.sub(" ", template.b))
    for values in SLOTS.values():
        for value in values:
            used |= _words(value)
    rows = generate()
    for row in rows:  # the edits of near repeats (greetings, typos) too
        used |= _words(row.a) | _words(row.b)
    shared = (used & vocabulary) - ALLOWED_STOPWORDS
    assert not shared, f"words the rules know: {sorted(shared)}"


def test_the_allowed_stop_words_hold_no_cue_of_a_rule() -> None:
    quantifiers_and_owners = {word for word, scope in lexicon.SCOPE_CLASSES.items() if scope != "one"}
    cues = (
        set(lexicon.NEGATIONS)
        | set(lexicon.ANTONYMS)
        | quantifiers_and_owners
        | set(lexicon.NUMBER_WORDS)
        | set(lexicon.ORDINALS)
        | set(lexicon.SCALES)
        | set(lexicon.UNITS)
        | set(lexicon.MONTHS)
        | set(lexicon.WEEKDAYS)
        | set(lexicon.RELATIVE_DAYS)
    )
    assert not ALLOWED_STOPWORDS & cues


def test_generation_is_deterministic_and_seeded() -> None:
    first, again = generate(), generate()
    assert first == again
    other = generate(seed=7)
    assert len(other) == len(first)
    assert [(row.a, row.b) for row in other] != [(row.a, row.b) for row in first]


def test_size_labels_and_categories() -> None:
    rows = generate()
    labels = Counter(row.label for row in rows)
    assert labels[0] >= 300 and labels[1] >= 300
    groups = Counter((row.category, row.label) for row in rows)
    categories = {"paraphrase", "near_repeat", "negation", "entity_swap", "number_date", "scope"}
    assert {category for category, _ in groups} == categories
    assert all(groups[(category, label)] >= 50 for category in categories for label in (0, 1))
    assert len({row.id for row in rows}) == len(rows)
    assert all(row.a != row.b for row in rows)


def test_validation_and_test_halves_share_no_template() -> None:
    rows = generate()
    split_of: dict[tuple[str, int, str], set[str]] = {}
    for row in rows:
        split_of.setdefault((row.category, row.label, row.a), set()).add(row.split)
    counts = Counter((row.category, row.label, row.split) for row in rows)
    for category, label, _ in CATEGORIES:
        assert counts[(category, label, "validation")] >= 20
        assert counts[(category, label, "test")] >= 20
    # Within a group, a filled template's first text names it; each belongs to one half only.
    texts_in_both = [key for key, splits in split_of.items() if len(splits) > 1]
    assert texts_in_both == []


def test_rows_read_back_as_evaluation_pairs(tmp_path: Path) -> None:
    from tierwise.training.eval_cache import read_eval_pairs
    from tierwise.training.traps_independent import write_rows

    rows = generate()
    path = tmp_path / "independent.jsonl"
    write_rows(path, rows)
    pairs = read_eval_pairs(path)
    assert [(pair.label, pair.kind) for pair in pairs] == [(row.label, row.category) for row in rows]
