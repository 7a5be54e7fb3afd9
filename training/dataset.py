"""Recorded answers turned into training arrays: features, adequacy labels, costs, splits.

Rows come from ``tierwise.training.routerbench.load_rows`` (RouterBench or wide layout);
each configured tier reads the score column ``score_col_map`` names for it (by
default the tier's model name). Texts are embedded through the same clip the
server uses, with vectors cached on disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tierwise.cache.embedder import EmbedderInfo, Matrix, TextEmbedder
from tierwise.classifier.features import EMBEDDING_DIM, embedding_input, prompt_features
from tierwise.router.config import Config
from tierwise.router.pricing import expected_cost_usd
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage
from tierwise.training.routerbench import Layout, csv_files, load_rows, split_of
from tierwise.training.verifier_data import EmbeddingDiskCache, embed_cached

FloatMatrix = npt.NDArray[np.float64]
IntMatrix = npt.NDArray[np.int64]
Progress = Callable[[int], None]


class LazyEmbedder:
    """Loads the real embedder on the first ``encode``: a fully cached run never loads the model."""

    def __init__(self, info: EmbedderInfo, factory: Callable[[], TextEmbedder]) -> None:
        self.info = info
        self._factory = factory
        self._loaded: TextEmbedder | None = None

    def encode(self, texts: list[str]) -> Matrix:
        if self._loaded is None:
            self._loaded = self._factory()
            if self._loaded.info != self.info:
                raise ValueError(f"the embedder is {self._loaded.info.key!r}, expected {self.info.key!r}")
        return self._loaded.encode(texts)


def embedder_info(key: str) -> EmbedderInfo:
    """The ``EmbedderInfo`` an embedder key (``name@dim``) stands for."""
    name, _, dim = key.rpartition("@")
    if not name or not dim.isdigit():
        raise ValueError(f"an embedder key looks like 'model-name@dimension', got {key!r}")
    return EmbedderInfo(name, int(dim))


@dataclass(frozen=True)
class RoutingData:
    """One row per prompt; per-tier columns in ``tiers`` order (cheapest first)."""

    tiers: tuple[str, ...]
    sample_ids: tuple[str, ...]
    texts: tuple[str, ...]
    tasks: tuple[str, ...]
    splits: npt.NDArray[np.str_]
    scores: FloatMatrix  # NaN where the score is missing
    costs: FloatMatrix  # recorded cost of each tier's answer; NaN where unknown
    expected_costs: FloatMatrix  # what the router expects to pay before the call (config prices)
    input_tokens: npt.NDArray[np.int64]
    embeddings: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]
    data_hash: str
    weights: npt.NDArray[np.float64] | None = None  # training weight per row; None: all 1
    # Judged rows: the prompt each request asked (repeats share one). None: each row is its own prompt.
    prompt_keys: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, mask: npt.NDArray[np.bool_]) -> RoutingData:
        index = np.flatnonzero(mask)
        return replace(
            self,
            sample_ids=tuple(self.sample_ids[i] for i in index),
            texts=tuple(self.texts[i] for i in index),
            tasks=tuple(self.tasks[i] for i in index),
            splits=self.splits[index],
            scores=self.scores[index],
            costs=self.costs[index],
            expected_costs=self.expected_costs[index],
            input_tokens=self.input_tokens[index],
            embeddings=self.embeddings[index],
            features=self.features[index],
            weights=None if self.weights is None else self.weights[index],
            prompt_keys=None if self.prompt_keys is None else tuple(self.prompt_keys[i] for i in index),
        )

    def prompts(self) -> tuple[str, ...]:
        """Each row's prompt identity: its prompt key, or its sample id where it has none."""
        return self.prompt_keys if self.prompt_keys is not None else self.sample_ids

    def split(self, name: str) -> RoutingData:
        return self.subset(self.splits == name)

    def adequate(self, quality_bar: float) -> FloatMatrix:
        """1.0 where the tier's score reaches the bar, 0.0 below it, NaN where the score is missing."""
        with np.errstate(invalid="ignore"):
            labels = (self.scores >= quality_bar).astype(np.float64)
        labels[np.isnan(self.scores)] = np.nan
        return labels

    def realized_costs(self) -> FloatMatrix:
        """Recorded costs, with the router's estimate where none was recorded."""
        return np.where(np.isnan(self.costs), self.expected_costs, self.costs)

    def complete(self) -> npt.NDArray[np.bool_]:
        """Rows with a score for every tier (evaluations compare tiers on the same prompts)."""
        return np.asarray(~np.isnan(self.scores).any(axis=1))


def column_map(config: Config, score_col_map: Mapping[str, str] | None) -> dict[str, str]:
    """Tier -> score column; tiers not in ``score_col_map`` read the column named after their model."""
    mapping = dict(score_col_map or {})
    unknown = sorted(set(mapping) - set(config.tier_names))
    if unknown:
        raise ValueError(
            f"score_col_map names tiers that are not configured: {unknown}; tiers: {config.tier_names}"
        )
    return {t.name: mapping.get(t.name, t.model) for t in config.tiers}


def data_hash(paths: Sequence[Path], columns: Mapping[str, str], layout: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps({"columns": dict(columns), "layout": layout}, sort_keys=True).encode())
    return digest.hexdigest()


def prompt_tokens_by_tier(config: Config, texts: Sequence[str], tokens: TokenCounter) -> IntMatrix:
    """Each text sent as one user turn, counted as the pipeline counts it for each tier (its encoding)."""
    counts = np.zeros((len(texts), len(config.tiers)), dtype=np.int64)
    counted: dict[str, list[int]] = {}
    for j, tier in enumerate(config.tiers):
        encoding = tier.encoding or tokens.encoding_for_model(tier.model)
        if encoding not in counted:
            counted[encoding] = [
                tokens.count_messages([ChatMessage("user", t)], tier.model, encoding=encoding) for t in texts
            ]
        counts[:, j] = counted[encoding]
    return counts


def _expected_costs(config: Config, texts: Sequence[str], tokens: TokenCounter) -> FloatMatrix:
    """As the pipeline estimates before a call: prompt tokens and the assumed output length at list prices."""
    counts = prompt_tokens_by_tier(config, texts, tokens)
    costs = np.zeros(counts.shape, dtype=np.float64)
    for j, tier in enumerate(config.tiers):
        output = min(tier.max_output_tokens, config.routing.expected_output_tokens)
        for i in range(len(texts)):
            costs[i, j] = float(expected_cost_usd(tier.price, int(counts[i, j]), Decimal(output)))
    return costs


def load_routing_data(
    paths: str | Path | Sequence[str | Path],
    config: Config,
    embedder: Callable[[], TextEmbedder],
    embedder_key: str,
    cache_dir: str | Path,
    format: Layout = "routerbench",
    score_col_map: Mapping[str, str] | None = None,
    progress: Callable[[int], Progress] | None = None,
    tokens: TokenCounter | None = None,
) -> RoutingData:
    """Read, label, split, count tokens, embed (cached) and featurise every row.

    ``progress(total)`` is called once with the number of texts to embed and returns
    the per-batch callback.
    """
    files = csv_files(paths if isinstance(paths, (str, Path)) else list(paths))
    columns = column_map(config, score_col_map)
    rows = load_rows(files, format=format, score_col_map=columns)
    if not rows:
        raise ValueError(f"no rows in {[str(f) for f in files]}")
    tokens = tokens or TokenCounter()
    tiers = config.tier_names
    texts = tuple(r.prompt for r in rows)
    # The pipeline counts the prompt with the first tier's model and encoding; the features see that count.
    first = config.tiers[0]
    input_tokens = np.array(
        [
            tokens.count_messages([ChatMessage("user", t)], first.model, encoding=first.encoding)
            for t in texts
        ],
        dtype=np.int64,
    )
    scores = np.array(
        [[np.nan if r.scores[t] is None else r.scores[t] for t in tiers] for r in rows], np.float64
    )
    costs = np.array(
        [[np.nan if r.costs[t] is None else r.costs[t] for t in tiers] for r in rows], np.float64
    )
    clipped = [embedding_input(t) for t in texts]
    info = embedder_info(embedder_key)
    if info.dim != EMBEDDING_DIM:
        raise ValueError(
            f"the features expect {EMBEDDING_DIM}-dimensional embeddings, {embedder_key!r} has {info.dim}"
        )
    cache = EmbeddingDiskCache(Path(cache_dir), info)
    try:
        ticks: Callable[[int, int], None] | None = None
        if progress is not None:
            missing = len(set(clipped) - set(cache.get_many(list(set(clipped)))))
            advance = progress(missing) if missing else None
            last = [0]

            def ticks(done: int, _total: int) -> None:
                if advance is not None:
                    advance(done - last[0])
                last[0] = done

        vectors = embed_cached(LazyEmbedder(info, embedder), clipped, cache, chunk_size=64, on_progress=ticks)
    finally:
        cache.close()
    embeddings = np.stack([vectors[c] for c in clipped]).astype(np.float32)
    features = np.stack(
        [prompt_features(embeddings[i], texts[i], int(input_tokens[i]), 1) for i in range(len(rows))]
    )
    return RoutingData(
        tiers=tiers,
        sample_ids=tuple(r.sample_id for r in rows),
        texts=texts,
        tasks=tuple(r.eval_name for r in rows),
        splits=np.array([split_of(r.sample_id) for r in rows]),
        scores=scores,
        costs=costs,
        expected_costs=_expected_costs(config, texts, tokens),
        input_tokens=input_tokens,
        embeddings=embeddings,
        features=features.astype(np.float32),
        data_hash=data_hash(files, columns, format),
    )
