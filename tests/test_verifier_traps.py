"""The hand-written trap pairs: the committed file is the generator's output, and splits share no template."""

from __future__ import annotations

import json
from collections import Counter

from tierwise.training.make_traps import DEFAULT_OUTPUT, FAMILIES, _template_split, generate


def test_committed_file_is_the_generated_eval_split() -> None:
    committed = [json.loads(line) for line in DEFAULT_OUTPUT.read_text(encoding="utf-8").splitlines()]
    assert committed == generate("eval")


def test_train_and_eval_traps_share_no_pair() -> None:
    def key(row: dict[str, object]) -> str:
        return json.dumps([row["a"], row["b"]])

    assert not {key(row) for row in generate("train")} & {key(row) for row in generate("eval")}


def test_every_kind_has_templates_in_both_splits() -> None:
    for family in FAMILIES:
        assert set(_template_split(family.templates).values()) == {"train", "eval"}, family.kind


def test_eval_traps_cover_near_misses_paraphrases_and_follow_ups() -> None:
    counts = Counter((row["kind"], row["label"]) for row in generate("eval"))
    for kind in ("negation", "number", "date", "entity", "scope", "antonym", "order", "topic"):
        assert counts[(kind, 0)] >= 5, kind
    assert counts[("paraphrase", 1)] >= 30
    assert counts[("conversation", 0)] >= 3 and counts[("conversation", 1)] >= 3
    follow_up = next(row for row in generate("eval") if row["kind"] == "conversation")
    assert isinstance(follow_up["a"], list) and follow_up["a"][-1]["content"] == follow_up["b"][-1]["content"]
