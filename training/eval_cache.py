"""``tierwise cache eval``: precision, recall and wrong-serve rate of the semantic cache, through its real code path.

Every number comes from ``tierwise.cache.semantic_cache.SemanticCache`` over a temporary SQLite
store: texts are embedded by the real embedder (``embedding_text`` of the last user
turn, as the pipeline does), entries are inserted with ``insert`` and queries answered
by ``lookup`` (exact tier, partition, FAISS search, cosine threshold, verifier). For
each threshold the cache is opened afresh over the same store with that threshold and
each verifier: ``cosine`` (the baseline) and ``guarded`` (rules + learned model).

Modes:
* ``pairs``: each pair alone — its ``a`` is stored under a namespace of its own and
  queried with ``b`` in that namespace, so no other entry can answer.
* ``corpus``: every ``a`` in one namespace, every ``b`` queried against all of them; a
  hit on the pair's own ``a`` counts by its label, a hit on any other entry as wrong.
  (On QQP this over-counts wrong hits: the same question recurs across pairs unlabelled.)
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import Matrix, TextEmbedder
from tierwise.cache.partition import Message, last_user_turn
from tierwise.cache.semantic_cache import CacheQuery, SemanticCache
from tierwise.cache.settings import CacheSettings
from tierwise.cache.sqlite_store import SqliteEntryStore
from tierwise.cache.store import CachedResponse
from tierwise.cache.verification import CandidateVerifier
from tierwise.training.cache_metrics import ServeMetrics, serve_metrics
from tierwise.training.figures import pyplot, save_figure

Mode = Literal["pairs", "corpus"]
VerifierFactory = Callable[[float], CandidateVerifier]
DEFAULT_THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.95)
TENANT = "eval"
_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class EvalPair:
    a: tuple[Message, ...]
    b: tuple[Message, ...]
    label: int
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one query got: ``served`` anything, and whether it was the pair's own ``a``."""

    served: bool
    own: bool
    similarity: float


def _messages(side: object, where: str) -> tuple[Message, ...]:
    if isinstance(side, str):
        return (("user", side),)
    if isinstance(side, list) and side and all(isinstance(m, dict) for m in side):
        try:
            return tuple((str(m["role"]), str(m["content"])) for m in side)
        except KeyError as exc:
            raise ValueError(f"{where}: message without {exc}") from None
    raise ValueError(f"{where}: a side must be a string or a non-empty list of {{role, content}}")


def read_eval_pairs(path: Path) -> list[EvalPair]:
    """``{"a": str | [{role, content}], "b": ..., "label": 0 | 1, "kind"?: str}`` per line (.jsonl or .jsonl.gz)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    pairs = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            where = f"{path}:{number}"
            if row.get("label") not in (0, 1):
                raise ValueError(f"{where}: label must be 0 or 1")
            a, b = _messages(row.get("a"), where), _messages(row.get("b"), where)
            pairs.append(EvalPair(a, b, int(row["label"]), str(row.get("kind", ""))))
    return pairs


def _query_text(messages: tuple[Message, ...]) -> str:
    return embedding_text(last_user_turn(messages))


def _embed_all(embedder: TextEmbedder, pairs: Sequence[EvalPair]) -> dict[str, np.ndarray]:
    texts = list(dict.fromkeys(_query_text(m) for pair in pairs for m in (pair.a, pair.b)))
    matrix: Matrix = embedder.encode(texts)
    return dict(zip(texts, matrix, strict=True))


def _namespace(mode: Mode, index: int) -> str:
    return f"pair-{index}" if mode == "pairs" else "corpus"


def _query(messages: tuple[Message, ...], namespace: str, vectors: dict[str, np.ndarray]) -> CacheQuery:
    return CacheQuery.create(
        tenant=TENANT, namespace=namespace, messages=messages, embedding=vectors[_query_text(messages)]
    )


async def _fill_store(
    path: Path, embedder_info: Any, pairs: Sequence[EvalPair], mode: Mode, vectors: Any
) -> list[str]:
    """Insert every ``a``; returns the entry id per pair (the same id when ``a`` repeats in corpus mode)."""
    settings = CacheSettings(capacity=max(len(pairs) * 2, 1))
    cache = await SemanticCache.open(await SqliteEntryStore.open(path), embedder_info, settings)
    ids: dict[str, str] = {}
    own: list[str] = []
    try:
        for index, pair in enumerate(pairs):
            query = _query(pair.a, _namespace(mode, index), vectors)
            if query.exact_key not in ids:
                response = CachedResponse(content=f"answer {index}", finish_reason="stop", model="eval")
                entry_id = await cache.insert(query, response)
                if entry_id is None:
                    raise RuntimeError(f"the cache refused to store pair {index}")
                ids[query.exact_key] = entry_id
            own.append(ids[query.exact_key])
    finally:
        await cache.aclose()
    return own


async def _lookups(
    path: Path,
    embedder_info: Any,
    pairs: Sequence[EvalPair],
    mode: Mode,
    vectors: Any,
    own_ids: Sequence[str],
    threshold: float,
    verifier: CandidateVerifier,
) -> list[Outcome]:
    settings = CacheSettings(similarity_threshold=threshold, capacity=max(len(pairs) * 2, 1))
    cache = await SemanticCache.open(await SqliteEntryStore.open(path), embedder_info, settings, verifier)

    async def one(index: int) -> Outcome:
        hit = await cache.lookup(_query(pairs[index].b, _namespace(mode, index), vectors))
        if hit is None:
            return Outcome(False, False, 0.0)
        return Outcome(True, hit.entry_id == own_ids[index], hit.similarity)

    outcomes: list[Outcome] = []
    try:
        for start in range(0, len(pairs), _CONCURRENCY):
            batch = range(start, min(start + _CONCURRENCY, len(pairs)))
            outcomes.extend(await asyncio.gather(*(one(index) for index in batch)))
    finally:
        await cache.aclose()
    return outcomes


def outcome_metrics(outcomes: Sequence[Outcome], pairs: Sequence[EvalPair]) -> ServeMetrics:
    """A served answer is right only when it is the pair's own ``a`` and the pair's label is 1."""
    labels = [pair.label for pair in pairs]
    return serve_metrics(
        [outcome.served for outcome in outcomes],
        labels,
        right=[outcome.own and label == 1 for outcome, label in zip(outcomes, labels, strict=True)],
    )


def metrics_by_kind(outcomes: Sequence[Outcome], pairs: Sequence[EvalPair]) -> dict[str, dict[str, Any]]:
    kinds = sorted({pair.kind for pair in pairs if pair.kind})
    report = {}
    for kind in kinds:
        chosen = [index for index, pair in enumerate(pairs) if pair.kind == kind]
        report[kind] = outcome_metrics([outcomes[i] for i in chosen], [pairs[i] for i in chosen]).to_json()
    return report


async def evaluate_cache(
    pairs: Sequence[EvalPair],
    embedder: TextEmbedder,
    verifiers: dict[str, VerifierFactory],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    mode: Mode = "pairs",
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Metrics per threshold and verifier; ``verifiers`` maps a name to a factory taking the threshold."""
    if not pairs:
        raise ValueError("no pairs to evaluate")
    vectors = _embed_all(embedder, pairs)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="tierwise-eval-cache-") as scratch:
        path = Path(scratch) / "cache.sqlite3"
        own_ids = await _fill_store(path, embedder.info, pairs, mode, vectors)
        rows = []
        for threshold in thresholds:
            row: dict[str, Any] = {"threshold": threshold}
            for name, factory in verifiers.items():
                outcomes = await _lookups(
                    path, embedder.info, pairs, mode, vectors, own_ids, threshold, factory(threshold)
                )
                row[name] = outcome_metrics(outcomes, pairs).to_json()
                if any(pair.kind for pair in pairs):
                    row[name]["by_kind"] = metrics_by_kind(outcomes, pairs)
            rows.append(row)
    return {
        "mode": mode,
        "pairs": len(pairs),
        "positives": sum(pair.label for pair in pairs),
        "thresholds": rows,
    }


def plot_curves(report: dict[str, Any], out: Path) -> None:
    """Precision–recall per verifier (one point per threshold) and wrong-serve rate per threshold."""
    plt = pyplot()

    rows = report["thresholds"]
    names = [key for key in rows[0] if key != "threshold"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in names:
        recall = [row[name]["recall"] for row in rows]
        precision = [row[name]["precision"] for row in rows]
        left.plot(recall, precision, marker="o", label=name)
        for row, x, y in zip(rows, recall, precision, strict=True):
            left.annotate(
                f"{row['threshold']:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
        right.plot(
            [row["threshold"] for row in rows],
            [row[name]["wrong_serve_rate"] for row in rows],
            marker="o",
            label=name,
        )
    left.set(xlabel="recall", ylabel="precision", title=f"{report['mode']} mode, {report['pairs']} pairs")
    right.set(xlabel="cosine threshold", ylabel="wrong-serve rate (label-0 served / label-0)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    save_figure(figure, out, dpi=120)


def select_pairs(pairs: list[EvalPair], split: str = "test", sample: int | None = None) -> list[EvalPair]:
    """The pairs of one verifier split (plain-text pairs only), then a hash-chosen sample of them.

    ``test`` by default: the shipped verifier trained on the train split and chose its settings on
    validation, so only the test split's numbers say how the cache does on pairs it has not seen."""
    import hashlib

    from tierwise.training.verifier_data import QuestionPair, assign_splits

    if split != "all":
        if split not in ("train", "validation", "test"):
            raise ValueError(f"split must be all, train, validation or test, got {split!r}")
        if any(len(pair.a) != 1 or len(pair.b) != 1 for pair in pairs):
            raise ValueError(
                "a split can only be taken of plain-text pairs; evaluate a file of conversations "
                "(such as the hand-written traps) whole with split all"
            )
        plain = [QuestionPair(pair.a[0][1], pair.b[0][1], pair.label) for pair in pairs]
        pairs = [pair for pair, name in zip(pairs, assign_splits(plain), strict=True) if name == split]
    if sample is not None and sample < len(pairs):

        def digest(pair: EvalPair) -> str:
            return hashlib.sha256(json.dumps([pair.a, pair.b]).encode("utf-8")).hexdigest()

        pairs = sorted(pairs, key=digest)[:sample]
    return pairs
