"""The cross-encoder's surface-noise pairs: made from the train split alone, labels kept, and worded
apart from the independent traps so those still measure generalisation."""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

from tierwise.training.cross_encoder_augment import GREETINGS, SIGN_OFFS, noisy, surface_noise_pairs
from tierwise.training.traps_independent import ALLOWED_STOPWORDS
from tierwise.training.verifier_data import QuestionPair

TEMPLATES = Path(__file__).resolve().parents[1] / "training" / "traps_independent_templates.py"
_WORD = re.compile(r"[A-Za-z]+")


def _trap_words() -> set[str]:
    tree = ast.parse(TEMPLATES.read_text(encoding="utf-8"))
    return {
        word.lower()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for word in _WORD.findall(node.value)
    }


def test_greetings_and_sign_offs_share_no_word_with_the_independent_traps() -> None:
    trap_words = _trap_words()
    assert {"hey", "thanks", "cheers"} <= trap_words  # the traps' own edits are read
    ours = {word.lower() for text in GREETINGS + SIGN_OFFS for word in _WORD.findall(text)}
    assert ours & trap_words - ALLOWED_STOPWORDS == set()


def _distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, left in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, right in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (left != right))
    return row[-1]


def test_noise_changes_the_surface_only() -> None:
    rng = random.Random(3)
    text = "How do I learn Python programming quickly?"
    letters = re.compile(r"[^a-z ]")
    for _ in range(300):
        version = noisy(text, rng)
        assert version != text
        for extra in GREETINGS + SIGN_OFFS:
            for form in (extra, extra.rstrip("!. -")):
                version = version.replace(form, "").replace(form.lower(), "").replace(form.upper(), "")
        # What is left is the text, but for casing, punctuation and at most two keyboard slips (a swap
        # of two letters is two edits).
        assert _distance(letters.sub("", version.lower()), letters.sub("", text.lower())) <= 4, version


def test_pairs_come_from_the_train_split_with_their_labels() -> None:
    train = [
        QuestionPair(f"What is the capital city of country number {i}?", f"Capital of country {i}?", i % 2)
        for i in range(100)
    ]
    extra = surface_noise_pairs(train, self_share=0.2, noisy_share=0.3, seed=0)
    assert extra == surface_noise_pairs(train, self_share=0.2, noisy_share=0.3, seed=0)
    pair_of = {text: pair for pair in train for text in (pair.a, pair.b)}
    self_pairs = noisy_pairs = 0
    for made in extra:
        assert made.a != made.b
        if made.a in pair_of and made.b in pair_of:
            raise AssertionError(f"{made} is not new")
        original, edited = (made.a, made.b) if made.a in pair_of else (made.b, made.a)
        kept = pair_of[original]
        partner = kept.b if original == kept.a else kept.a
        if _distance(edited.lower(), original.lower()) < _distance(edited.lower(), partner.lower()):
            self_pairs += 1  # a text against a noisy copy of itself: the same question
            assert made.label == 1
        else:
            noisy_pairs += 1  # a train pair with noise on one side keeps its label
            assert made.label == kept.label
    assert (self_pairs, noisy_pairs) == (40, 30)
