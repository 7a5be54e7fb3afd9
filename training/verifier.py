"""Train the cache's pair verifier (LightGBM → ONNX) and choose its operating point on validation.

Steps: split QQP pairs by question group (``verifier_data``), embed every text once
(disk-cached), fit the feature assets on the train split (word frequencies, the principal
directions of the embedding interactions), compute ``tierwise.cache.verifier_features`` rows, fit LightGBM on the train
split plus the training share of the hand-written traps, export to ONNX, check the
ONNX probabilities against LightGBM's, pick the cosine floor and the probability
threshold that give the most recall while validation precision holds the target
with 95% confidence, and write the model directory with its manifest. The test
split is scored once, at the chosen point, and recorded in the manifest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tierwise.cache.embedder import TextEmbedder
from tierwise.cache.verifier_features import (
    EMBEDDING_COMPONENTS,
    FEATURE_NAMES,
    FEATURE_VERSION,
    EmbeddingProjection,
    FeatureAssets,
    pair_features,
)
from tierwise.cache.verifier_model import MANIFEST_NAME, VerifierManifest, VerifierModel, file_sha256
from tierwise.cache.verifier_rules import RULES, RULES_BY_NAME, RuleVerifier
from tierwise.training.cache_metrics import ServeMetrics, serve_metrics
from tierwise.training.make_traps import generate as generate_traps
from tierwise.training.verifier_data import (
    EmbeddingDiskCache,
    QuestionPair,
    Split,
    embed_cached,
    pairs_by_split,
    read_pairs,
)

MODEL_FILE = "verifier.onnx"
IDF_FILE = "idf.json.gz"
PROJECTION_FILE = "projection.json.gz"
# Words seen in fewer training texts are treated as unseen (keeps the shipped table small).
MIN_DOCUMENT_FREQUENCY = 2
TARGET_OPSET = 15
PRECISION_TARGET = 0.90
# The cosine floors tried on validation; below 0.70 MiniLM neighbours are rarely the same question.
COSINE_GRID = tuple(round(0.70 + 0.01 * step, 2) for step in range(26))
PROBABILITY_GRID = tuple(round(0.30 + 0.01 * step, 2) for step in range(70))
# Chosen on the validation split: with the embedding features, 800 trees of 31 leaves at rate 0.03
# reached recall 0.31 at the precision target (95% bound) where 300 x 15 at 0.05 reached 0.26.
LIGHTGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 800,
    "learning_rate": 0.03,
    "num_leaves": 31,
    "min_child_samples": 40,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "n_jobs": 2,
    "verbose": -1,
}

Floats = npt.NDArray[np.float32]
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class PairBlock:
    """Aligned arrays for a set of pairs."""

    features: Floats
    labels: npt.NDArray[np.int64]
    cosines: Floats
    rules_pass: npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    min_cosine: float
    threshold: float
    metrics: ServeMetrics


_WORDS = re.compile(r"\w+")


def fit_feature_assets(pairs: Sequence[QuestionPair]) -> FeatureAssets:
    """Document frequencies of the training texts' words (rare ones dropped)."""
    texts = list(dict.fromkeys(text for pair in pairs for text in (pair.a, pair.b)))
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(_WORDS.findall(text.lower())))
    frequent = {word: count for word, count in counts.items() if count >= MIN_DOCUMENT_FREQUENCY}
    return FeatureAssets(len(texts), frequent)


def _interactions(pairs: Sequence[QuestionPair], vectors: dict[str, np.ndarray]) -> tuple[Floats, Floats]:
    left = np.stack([vectors[pair.a] for pair in pairs]).astype(np.float32)
    right = np.stack([vectors[pair.b] for pair in pairs]).astype(np.float32)
    return np.abs(left - right), left * right


def _principal(rows: Floats) -> tuple[Floats, Floats]:
    """Mean and the first ``EMBEDDING_COMPONENTS`` principal directions (signs fixed: largest entry > 0)."""
    if rows.shape[0] < EMBEDDING_COMPONENTS or rows.shape[1] < EMBEDDING_COMPONENTS:
        raise ValueError(
            f"the embedding projection needs at least {EMBEDDING_COMPONENTS} pairs and dimensions, "
            f"got {rows.shape}"
        )
    mean = rows.mean(axis=0, dtype=np.float64)
    _, _, directions = np.linalg.svd(rows - mean, full_matrices=False)
    components = directions[:EMBEDDING_COMPONENTS]
    signs = np.sign(components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)])
    return mean.astype(np.float32), (components * signs[:, None]).astype(np.float32)


def fit_embedding_projection(
    pairs: Sequence[QuestionPair], vectors: dict[str, np.ndarray]
) -> EmbeddingProjection:
    """Principal directions of |u−v| and u⊙v over the training pairs."""
    diff, product = _interactions(pairs, vectors)
    diff_mean, diff_components = _principal(diff)
    product_mean, product_components = _principal(product)
    return EmbeddingProjection(diff_mean, diff_components, product_mean, product_components)


def pair_block(
    pairs: Sequence[QuestionPair],
    vectors: dict[str, np.ndarray],
    rules: RuleVerifier,
    assets: FeatureAssets,
    projection: EmbeddingProjection,
) -> PairBlock:
    rows, cosines = [], []
    for pair in pairs:
        left, right = vectors[pair.a], vectors[pair.b]
        cosine = float(np.dot(left, right))
        cosines.append(cosine)
        rows.append(pair_features(pair.a, pair.b, cosine, (left, right), assets, projection))
    return PairBlock(
        features=np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32),
        labels=np.array([pair.label for pair in pairs], dtype=np.int64),
        cosines=np.array(cosines, dtype=np.float32),
        rules_pass=np.array([rules.first_difference(pair.a, pair.b) is None for pair in pairs], dtype=bool),
    )


def guarded_served(
    block: PairBlock, probabilities: Floats, min_cosine: float, threshold: float
) -> npt.NDArray[np.bool_]:
    """What ``GuardedVerifier`` serves: cosine floor, then hard rules, then P ≥ threshold."""
    served: npt.NDArray[np.bool_] = (
        (block.cosines >= min_cosine) & block.rules_pass & (probabilities >= threshold)
    )
    return served


def metrics_of(served: npt.NDArray[np.bool_], labels: npt.NDArray[np.int64]) -> ServeMetrics:
    return serve_metrics(served.tolist(), labels.tolist())


def choose_operating_point(
    block: PairBlock,
    probabilities: Floats,
    precision_target: float = PRECISION_TARGET,
    cosine_grid: Sequence[float] = COSINE_GRID,
    probability_grid: Sequence[float] = PROBABILITY_GRID,
) -> OperatingPoint:
    """Most recall whose precision's 95% lower bound still meets the target; ties go to the stricter point."""
    best: OperatingPoint | None = None
    for min_cosine in cosine_grid:
        for threshold in probability_grid:
            metrics = metrics_of(guarded_served(block, probabilities, min_cosine, threshold), block.labels)
            if metrics.served == 0 or metrics.precision_lower_bound < precision_target:
                continue
            if best is None or metrics.recall > best.metrics.recall:
                best = OperatingPoint(min_cosine, threshold, metrics)
    if best is None:
        raise ValueError(f"no operating point reaches precision {precision_target} on validation")
    return best


def fit_lightgbm(train: PairBlock, seed: int) -> Any:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(random_state=seed, **LIGHTGBM_PARAMS)
    model.fit(train.features, train.labels)
    return model


def export_onnx(model: Any, path: Path, target_opset: int = TARGET_OPSET) -> None:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_lightgbm(
        model,
        initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        zipmap=False,
        target_opset=target_opset,
    )
    # The converter names the graph with a random UUID; a fixed name keeps re-runs byte-identical.
    onnx_model.graph.name = "tierwise_cache_verifier"
    path.write_bytes(onnx_model.SerializeToString())


def trap_pairs() -> list[QuestionPair]:
    """The training share of the hand-written traps (plain-text pairs only)."""
    return [
        QuestionPair(row["a"], row["b"], int(row["label"]))
        for row in generate_traps("train")
        if isinstance(row["a"], str) and isinstance(row["b"], str)
    ]


def embed_pairs(
    embedder: TextEmbedder, pairs: Sequence[QuestionPair], cache_dir: Path, log: Log
) -> dict[str, np.ndarray]:
    cache = EmbeddingDiskCache(cache_dir, embedder.info)
    try:
        texts = [text for pair in pairs for text in (pair.a, pair.b)]
        log(f"embedding {len(set(texts))} distinct texts (cache: {cache.path})")
        return embed_cached(
            embedder,
            texts,
            cache,
            on_progress=lambda done, total: log(f"  embedded {done}/{total} new texts"),
        )
    finally:
        cache.close()


def train_verifier_model(
    pairs_path: Path,
    out_dir: Path,
    embedder: TextEmbedder,
    cache_dir: Path,
    *,
    use_traps: bool = True,
    precision_target: float = PRECISION_TARGET,
    seed: int = 0,
    target_opset: int = TARGET_OPSET,
    log: Log = print,
) -> dict[str, Any]:
    """Train, export, choose the operating point on validation, score test once; returns the report."""
    splits = pairs_by_split(read_pairs(pairs_path))
    traps = trap_pairs() if use_traps else []
    log("pairs per split: " + ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))
    vectors = embed_pairs(
        embedder, [pair for rows in splits.values() for pair in rows] + traps, cache_dir, log
    )
    rules = RuleVerifier(RULES)
    assets = fit_feature_assets(splits["train"] + traps)
    projection = fit_embedding_projection(splits["train"] + traps, vectors)
    fitted: dict[Split, list[QuestionPair]] = {**splits, "train": splits["train"] + traps}
    blocks = {name: pair_block(rows, vectors, rules, assets, projection) for name, rows in fitted.items()}
    log(f"fitting LightGBM on {len(blocks['train'].labels)} pairs ({len(traps)} of them traps)")
    model = fit_lightgbm(blocks["train"], seed)

    validation_lgb = model.predict_proba(blocks["validation"].features)[:, 1].astype(np.float32)
    point = choose_operating_point(blocks["validation"], validation_lgb, precision_target)
    # Score through the exported file itself: the numbers below are the ONNX model's.
    served_model = write_model_dir(
        model,
        assets,
        projection,
        out_dir,
        embedder_key=embedder.info.key,
        threshold=point.threshold,
        min_cosine=point.min_cosine,
        target_opset=target_opset,
    )
    onnx_probabilities = {name: served_model.predict(block.features) for name, block in blocks.items()}
    parity = float(np.max(np.abs(onnx_probabilities["validation"] - validation_lgb)))
    if parity > 1e-5:
        raise RuntimeError(f"ONNX export disagrees with LightGBM by {parity:.2e} on validation")
    test_metrics = metrics_of(
        guarded_served(blocks["test"], onnx_probabilities["test"], point.min_cosine, point.threshold),
        blocks["test"].labels,
    )
    report: dict[str, Any] = {
        "training": {
            "pairs": str(pairs_path.name),
            "train_pairs": len(splits["train"]),
            "trap_pairs": len(traps),
            "validation_pairs": len(splits["validation"]),
            "test_pairs": len(splits["test"]),
            "seed": seed,
            "lightgbm": {key: value for key, value in LIGHTGBM_PARAMS.items() if key != "n_jobs"},
            "target_opset": target_opset,
            "precision_target": precision_target,
        },
        "validation": {
            "guarded": point.metrics.to_json(),
            "cosine_only": _cosine_table(blocks["validation"]),
        },
        "test": {"guarded": test_metrics.to_json(), "cosine_only": _cosine_table(blocks["test"])},
        "onnx_parity_max_abs": parity,
    }
    write_manifest(out_dir, served_model.manifest, report)
    return report


def _cosine_table(block: PairBlock) -> dict[str, dict[str, float | int]]:
    """The cosine-only baseline at a few thresholds, for comparison in the manifest."""
    return {
        f"{floor:.2f}": metrics_of(block.cosines >= floor, block.labels).to_json()
        for floor in (0.80, 0.85, 0.90, 0.95)
    }


def write_model_dir(
    model: Any,
    assets: FeatureAssets,
    projection: EmbeddingProjection,
    out_dir: Path,
    *,
    embedder_key: str,
    threshold: float,
    min_cosine: float,
    target_opset: int = TARGET_OPSET,
) -> VerifierModel:
    """Export ``model`` and its assets with a manifest pinning their hashes; returns the model as served."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out_dir / MODEL_FILE, target_opset)
    (out_dir / IDF_FILE).write_bytes(assets.to_bytes())
    (out_dir / PROJECTION_FILE).write_bytes(projection.to_bytes())
    manifest = VerifierManifest(
        model_file=MODEL_FILE,
        idf_file=IDF_FILE,
        projection_file=PROJECTION_FILE,
        sha256={name: file_sha256(out_dir / name) for name in (MODEL_FILE, IDF_FILE, PROJECTION_FILE)},
        feature_version=FEATURE_VERSION,
        feature_names=FEATURE_NAMES,
        embedder_key=embedder_key,
        threshold=threshold,
        min_cosine=min_cosine,
        # Every rule hard: the guards past RULES add only what RULES cannot see (two names swapped).
        hard_rules=tuple(RULES_BY_NAME),
    )
    write_manifest(out_dir, manifest, {"target_opset": target_opset})
    return VerifierModel(out_dir, expected_embedder_key=embedder_key)


def write_manifest(out_dir: Path, manifest: VerifierManifest, report: dict[str, Any]) -> None:
    payload = {**manifest.to_json(), **report}
    (out_dir / MANIFEST_NAME).write_text(
        json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
