"""Question pairs for the cache verifier: loading, a leak-free split, and an on-disk embedding cache.

The split groups questions, not rows: two pairs that share a question (after light
canonicalisation) are joined by union-find, and a whole connected group goes to one
split chosen by a hash of its text. So no question that appears in a test pair is
ever seen in training, and the assignment does not depend on row order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tierwise.cache.embedder import EmbedderInfo, Matrix, TextEmbedder

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
# Shares of groups per split, in hash order; test is what remains.
TRAIN_SHARE = 0.70
VALIDATION_SHARE = 0.15


@dataclass(frozen=True, slots=True)
class QuestionPair:
    a: str
    b: str
    label: int


def read_pairs(path: Path) -> list[QuestionPair]:
    """Plain-text pairs from a .jsonl or .jsonl.gz file of ``{"a", "b", "label"}`` objects."""
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: list[QuestionPair] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("a"), str) or not isinstance(row.get("b"), str):
                raise ValueError(f"{path}:{line_no}: 'a' and 'b' must be strings for verifier training")
            label = row.get("label")
            if label not in (0, 1):
                raise ValueError(f"{path}:{line_no}: 'label' must be 0 or 1, got {label!r}")
            pairs.append(QuestionPair(row["a"], row["b"], int(label)))
    return pairs


_NON_WORD = re.compile(r"[^\w\s]")


def canonical_question(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: "What is X?" and "what is x" are one question."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(pairs: list[QuestionPair]) -> list[Split]:
    """Split per pair; every pair of a question-connected group lands in the same split."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    canon = [(canonical_question(p.a), canonical_question(p.b)) for p in pairs]
    for left, right in canon:
        root_left, root_right = find(left), find(right)
        if root_left != root_right:
            # Deterministic union (smaller text is the root), so the group's name is order-free.
            low, high = sorted((root_left, root_right))
            parent[high] = low
    splits: list[Split] = []
    for left, _ in canon:
        position = _unit_hash(find(left))
        if position < TRAIN_SHARE:
            splits.append("train")
        elif position < TRAIN_SHARE + VALIDATION_SHARE:
            splits.append("validation")
        else:
            splits.append("test")
    return splits


def pairs_by_split(pairs: list[QuestionPair]) -> dict[Split, list[QuestionPair]]:
    grouped: dict[Split, list[QuestionPair]] = {split: [] for split in SPLITS}
    for pair, split in zip(pairs, assign_splits(pairs), strict=True):
        grouped[split].append(pair)
    return grouped


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "tierwise"


class EmbeddingDiskCache:
    """Vectors in SQLite keyed by sha256(embedder key, text): re-runs and other commands reuse them."""

    def __init__(self, directory: Path, info: EmbedderInfo) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "embeddings.sqlite3"
        self._info = info
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._db.commit()

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self._info.key}\x00{text}".encode()).hexdigest()

    def get_many(self, texts: list[str]) -> dict[str, np.ndarray]:
        keys = {self.key(text): text for text in texts}
        found: dict[str, np.ndarray] = {}
        key_list = list(keys)
        for start in range(0, len(key_list), 900):  # SQLite caps bound parameters per statement
            chunk = key_list[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk):
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape[0] == self._info.dim:
                    found[keys[key]] = vector
        return found

    def put_many(self, texts: list[str], vectors: Matrix) -> None:
        rows = [
            (self.key(text), np.ascontiguousarray(vector, dtype=np.float32).tobytes())
            for text, vector in zip(texts, vectors, strict=True)
        ]
        self._db.executemany("INSERT OR REPLACE INTO vectors (key, vec) VALUES (?, ?)", rows)
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_cached(
    embedder: TextEmbedder,
    texts: Iterable[str],
    cache: EmbeddingDiskCache,
    chunk_size: int = 2048,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Vectors for every distinct text; only texts missing from the disk cache are embedded."""
    distinct = list(dict.fromkeys(texts))
    vectors = cache.get_many(distinct)
    missing = [text for text in distinct if text not in vectors]
    done = 0
    for chunk in _chunks(missing, chunk_size):
        encoded = embedder.encode(chunk)
        cache.put_many(chunk, encoded)  # committed per chunk: an interrupted run keeps its work
        vectors.update(zip(chunk, encoded, strict=True))
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, len(missing))
    return vectors


class DiskCachedEmbedder:
    """A TextEmbedder that serves repeated texts from the disk cache and embeds the rest for real."""

    def __init__(self, inner: TextEmbedder, cache: EmbeddingDiskCache) -> None:
        self.info = inner.info
        self._inner = inner
        self._cache = cache

    def encode(self, texts: list[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        vectors = embed_cached(self._inner, texts, self._cache)
        return np.stack([vectors[text] for text in texts]).astype(np.float32, copy=False)
