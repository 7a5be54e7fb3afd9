"""Work on a prompt stays linear in its length, or bounded: the classifier's wh-question test answers
what its former regex answered without rescanning from every wh-word, and the clip of the text
embedded is read from windows at the text's ends, equal to the clip that reads every piece."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tierwise.cache.batching import (
    DEFAULT_HEAD_PIECES,
    MODEL_WINDOW_PIECES,
    clip_in_windows,
    clip_whole,
    embedding_text,
)
from tierwise.classifier.features import asks_wh_question, prompt_statistics

# The pattern the statistic was defined by (quadratic: kept here as the reference only).
REFERENCE = re.compile(r"\b(?:what|why|how|which|who)\b[^.?!]*\?", re.I)

PIECES = st.sampled_from(
    ["what", "Why", "HOW", "which", "who", "somewhat", "whom", " ", "\n", ".", "?", "!", "x", "é", "_", "1"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=30).map("".join))
def test_wh_question_agrees_with_the_reference_pattern(text: str) -> None:
    assert asks_wh_question(text) == (REFERENCE.search(text) is not None)


def test_a_long_prompt_of_wh_words_without_a_stop_is_read_in_one_pass() -> None:
    # The reference pattern takes minutes on this text (every "why" rescans to the end).
    text = "tell me " + "why " * 250_000
    assert not asks_wh_question(text)
    assert asks_wh_question(text + "?")
    stats = prompt_statistics(text, 250_000, 1)
    assert len(stats) > 0


TEXT_PIECES = st.sampled_from(
    ["word", "a", "supercalifragilistic", "12345678", "ab12cd", " ", "  ", "\n", ".", "é", "日本", "x" * 40]
)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(TEXT_PIECES, max_size=80).map("".join),
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=0, max_value=12),
)
def test_clipping_from_windows_at_the_ends_equals_reading_the_whole_text(
    text: str, window: int, head: int
) -> None:
    assert clip_in_windows(text, 40, head, window) == clip_whole(text, 40, head)


def test_a_huge_prompt_is_clipped_from_its_ends() -> None:
    text = "start here " + "filler words " * 100_000 + "the question at the end?"
    clipped = embedding_text(text)
    assert clipped == clip_whole(text, MODEL_WINDOW_PIECES, DEFAULT_HEAD_PIECES)
    assert clipped.startswith("start here") and clipped.endswith("the question at the end?")
