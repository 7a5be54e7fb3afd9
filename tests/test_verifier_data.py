"""The verifier's pair split and embedding disk cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.recording_embedder import RecordingEmbedder
from tierwise.cache.embedder import EmbedderInfo
from tierwise.training.verifier_data import SPLITS as SPLIT_NAMES
from tierwise.training.verifier_data import (
    DiskCachedEmbedder,
    EmbeddingDiskCache,
    QuestionPair,
    assign_splits,
    canonical_question,
    embed_cached,
    pairs_by_split,
    read_pairs,
)


class CountingEmbedder(RecordingEmbedder):
    """Deterministic vectors per text (from its length), counting what it was asked to embed."""

    info = EmbedderInfo("test/counting", 8)

    def vector(self, text: str) -> NDArray[np.float32]:
        return np.full(self.info.dim, float(len(text) % 7) + 0.5, dtype=np.float32)


def _questions_per_split(pairs: list[QuestionPair], splits: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {name: set() for name in SPLIT_NAMES}
    for pair, split in zip(pairs, splits, strict=True):
        seen[split].update({canonical_question(pair.a), canonical_question(pair.b)})
    return seen


def _chain_pairs() -> list[QuestionPair]:
    # q0-q1, q1-q2, ... chains 40 questions into one group; the rest are independent pairs.
    chain = [QuestionPair(f"Question {i}?", f"question {i + 1}", i % 2) for i in range(40)]
    loose = [QuestionPair(f"Loose a{i}", f"Loose b{i}", 1) for i in range(400)]
    return chain + loose


def test_connected_questions_share_a_split() -> None:
    pairs = _chain_pairs()
    splits = assign_splits(pairs)
    assert len(set(splits[:40])) == 1
    seen = _questions_per_split(pairs, splits)
    for left in SPLIT_NAMES:
        for right in SPLIT_NAMES:
            if left < right:
                assert not seen[left] & seen[right]
    assert set(splits) == set(SPLIT_NAMES)


def test_split_ignores_row_order() -> None:
    pairs = _chain_pairs()
    forward = dict(zip(pairs, assign_splits(pairs), strict=True))
    backward = dict(zip(pairs[::-1], assign_splits(pairs[::-1]), strict=True))
    assert forward == backward


def test_read_pairs_checks_rows(tmp_path: Path) -> None:
    good = tmp_path / "pairs.jsonl.gz"
    with gzip.open(good, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"a": "x", "b": "y", "label": 1}) + "\n\n")
    assert read_pairs(good) == [QuestionPair("x", "y", 1)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"a": "x", "b": "y", "label": 2}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_pairs(bad)


def test_disk_cache_embeds_each_text_once(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    cache = EmbeddingDiskCache(tmp_path, embedder.info)
    first = embed_cached(embedder, ["a", "bb", "a"], cache)
    assert embedder.seen == ["a", "bb"]
    cache.close()
    # A new process (new connection) finds them on disk.
    reopened = EmbeddingDiskCache(tmp_path, embedder.info)
    again = embed_cached(embedder, ["bb", "ccc"], reopened)
    assert embedder.seen == ["a", "bb", "ccc"]
    np.testing.assert_array_equal(again["bb"], first["bb"])
    wrapped = DiskCachedEmbedder(embedder, reopened)
    matrix = wrapped.encode(["ccc", "a"])
    assert matrix.shape == (2, 8) and embedder.seen == ["a", "bb", "ccc"]
    assert wrapped.encode([]).shape == (0, 8)


def test_disk_cache_keys_include_the_embedder(tmp_path: Path) -> None:
    first = EmbeddingDiskCache(tmp_path, EmbedderInfo("m1", 8))
    other = EmbeddingDiskCache(tmp_path, EmbedderInfo("m2", 8))
    assert first.key("text") != other.key("text")
    first.put_many(["text"], np.ones((1, 8), dtype=np.float32))
    assert other.get_many(["text"]) == {}


def test_qqp_split_has_no_question_in_two_splits(shared_data: Path) -> None:
    pairs = read_pairs(shared_data / "qqp" / "pairs.jsonl.gz")
    splits = assign_splits(pairs)
    seen = _questions_per_split(pairs, splits)
    assert not seen["test"] & seen["train"]
    assert not seen["test"] & seen["validation"]
    assert not seen["validation"] & seen["train"]
    sizes = {name: len(rows) for name, rows in pairs_by_split(pairs).items()}
    assert 0.6 < sizes["train"] / len(pairs) < 0.8
