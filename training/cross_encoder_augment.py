"""Surface-noise pairs for the cross-encoder: the same question typed differently is the same question.

QQP's duplicates are rewordings; real cache traffic also repeats a question with a greeting, a
sign-off, other casing or punctuation, or a slip of the keyboard. A cross-encoder fine-tuned on
QQP alone scores those low (a one-letter slip in a rare word fell to P 0.15–0.45), so training
adds, from the train split only:

* self pairs: a train question against a noisy copy of itself, label 1;
* noisy pairs: a train pair with noise on one side, its label kept (noise changes no meaning).

The greetings and sign-offs below are held apart from ``training/traps_independent_templates.py``'s
(``tests/test_cross_encoder_augment.py`` checks it), so the independent traps still measure
generalisation, not memory. Seeded and deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from tierwise.training.verifier_data import QuestionPair

GREETINGS = ("Hello, ", "Hello folks, ", "Dear all, ", "Good day! ", "Folks, ", "Hiya - ")
SIGN_OFFS = (" Thank you.", " Regards.", " TIA", " Please advise.", " Appreciated!", " ty")

Edit = Callable[[str, random.Random], str]


def _content_word_at(words: list[str], rng: random.Random) -> int | None:
    candidates = [i for i, word in enumerate(words) if sum(ch.isalpha() for ch in word) >= 4]
    return rng.choice(candidates) if candidates else None


def _slip(text: str, rng: random.Random) -> str:
    """One keyboard slip inside a word of four letters or more: two letters swapped, one dropped or doubled."""
    words = text.split(" ")
    index = _content_word_at(words, rng)
    if index is None:
        return text
    word = words[index]
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    at = rng.choice(letters[1:-1]) if len(letters) > 2 else letters[0]
    kind = rng.randrange(3)
    if kind == 0 and at + 1 < len(word) and word[at + 1].isalpha():
        word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    elif kind == 1:
        word = word[:at] + word[at + 1 :]
    else:
        word = word[:at] + word[at] + word[at:]
    words[index] = word
    return " ".join(words)


def _greet(text: str, rng: random.Random) -> str:
    return rng.choice(GREETINGS) + (text[:1].lower() + text[1:])


def _sign_off(text: str, rng: random.Random) -> str:
    return text + rng.choice(SIGN_OFFS)


def _casing(text: str, rng: random.Random) -> str:
    return text.lower() if rng.random() < 0.5 else text.upper()


def _punctuation(text: str, rng: random.Random) -> str:
    stripped = text.rstrip("?!. ")
    return stripped if stripped != text else text + "?"


EDITS: tuple[Edit, ...] = (_slip, _slip, _greet, _sign_off, _casing, _punctuation)


def noisy(text: str, rng: random.Random) -> str:
    """``text`` with one or two surface edits; unchanged only when no edit applies (a slip needs a
    word of four letters, and swapping two equal letters changes nothing: then another edit is tried)."""
    for _ in range(8):
        edited = rng.choice(EDITS)(text, rng)
        if rng.random() < 0.3:
            edited = rng.choice(EDITS)(edited, rng)
        if edited != text:
            return edited
    return text


def surface_noise_pairs(
    train: Sequence[QuestionPair], *, self_share: float, noisy_share: float, seed: int
) -> list[QuestionPair]:
    """Extra training pairs made from ``train`` alone: ``self_share`` of its distinct questions as self
    pairs, ``noisy_share`` of its pairs again with noise on one side."""
    rng = random.Random(seed)
    questions = sorted({text for pair in train for text in (pair.a, pair.b)})
    extra = [
        QuestionPair(question, noisy(question, rng), 1)
        for question in rng.sample(questions, int(self_share * len(questions)))
    ]
    for pair in rng.sample(list(train), int(noisy_share * len(train))):
        if rng.random() < 0.5:
            extra.append(QuestionPair(noisy(pair.a, rng), pair.b, pair.label))
        else:
            extra.append(QuestionPair(pair.a, noisy(pair.b, rng), pair.label))
    return [pair for pair in extra if pair.a != pair.b]
