"""Train a model version: data -> features -> LightGBM -> ONNX -> calibration -> manifest.

The version is assembled in a hidden directory and renamed into
``<registry>/versions/`` only when complete, so a registry never lists half a
version. Training does not promote: ``models promote`` does, behind its gate.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tierwise.cache.embedder import TextEmbedder
from tierwise.classifier.features import FEATURE_SPEC
from tierwise.classifier.manifest import ONNX_FILE, Manifest, sha256_file, write_manifest
from tierwise.classifier.model import DEFAULT_EMBEDDER_KEY, ClassifierModel, load_model
from tierwise.classifier.neighbours import NEIGHBOURS_FILE, NeighbourSpec, NeighbourVote, blend
from tierwise.classifier.registry import ModelRegistry
from tierwise.router.config import Config, load_config
from tierwise.router.policies.classifier import Rule
from tierwise.training.baselines import fit_vote
from tierwise.training.calibrate import utility_calibration
from tierwise.training.dataset import RoutingData, load_routing_data
from tierwise.training.evaluate import Scorer, routing_contexts, tier_set_aiq
from tierwise.training.fit import (
    DEFAULT_GRID,
    Candidate,
    CandidateReport,
    FittedModel,
    mean_log_loss,
    project,
    select,
)
from tierwise.training.metrics import aiq
from tierwise.training.policy_sweeps import classifier_sweeps
from tierwise.training.routerbench import Layout
from tierwise.training.unfamiliarity_fit import DEFAULT_QUANTILE, attach_unfamiliarity, fit_unfamiliarity

PARITY_TOLERANCE = 1e-5
# The served P is this mix of the trees' and the kNN vote's (tierwise.classifier.neighbours): chosen by three
# 5-fold cross-validations on the training and validation splits (fold seeds tierwise-cv-1..3).
DEFAULT_NEIGHBOUR_WEIGHT = 0.5
# The vote compares each request with every memory row (a 384-wide dot product per row): past this many
# training rows (retraining adds judged traffic), the memory keeps a fixed, sample-id-hashed subset.
NEIGHBOUR_MEMORY_LIMIT = 10_000
GATE_METRIC = "aiq_classifier_threshold"


class TrainingError(RuntimeError):
    """Training could not produce a sound model version."""


@dataclass(frozen=True)
class Neighbours:
    vote: NeighbourVote
    spec: NeighbourSpec


def memory_rows(rows: RoutingData, limit: int = NEIGHBOUR_MEMORY_LIMIT) -> RoutingData:
    """``rows`` when they fit the limit, else the ``limit`` rows whose sample ids hash lowest (the same
    subset whatever the row order)."""
    if len(rows) <= limit:
        return rows
    keys = np.array([hashlib.sha256(s.encode()).digest()[:8] for s in rows.sample_ids])
    keep = np.zeros(len(rows), dtype=bool)
    keep[np.argsort(keys, kind="stable")[:limit]] = True
    return rows.subset(keep)


def fit_neighbours(
    train_rows: RoutingData,
    validation: RoutingData,
    quality_bar: float,
    weight: float,
    limit: int = NEIGHBOUR_MEMORY_LIMIT,
) -> Neighbours:
    """The kNN vote over the training prompts (at most ``limit`` of them), k picked on validation log-loss."""
    vote = fit_vote(memory_rows(train_rows, limit), validation, quality_bar)
    return Neighbours(vote, NeighbourSpec(vote.k, weight, vote.size))


@dataclass(frozen=True)
class TrainResult:
    version: str
    directory: Path
    manifest: Manifest
    candidates: list[CandidateReport]


def default_embedder(expected_key: str) -> Callable[[], TextEmbedder]:
    def load() -> TextEmbedder:
        from tierwise.cache.embedder import SentenceEmbedder

        embedder = SentenceEmbedder()
        if embedder.info.key != expected_key:
            raise TrainingError(f"the embedder is {embedder.info.key!r}, expected {expected_key!r}")
        return embedder

    return load


@contextmanager
def embedding_progress(console: Console) -> Iterator[Callable[[int], Callable[[int], None]]]:
    with Progress(
        TextColumn("embedding prompts"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:

        def start(total: int) -> Callable[[int], None]:
            task = progress.add_task("embed", total=total)
            return lambda done: progress.advance(task, done)

        yield start


def load_data(
    data: str | Path | Sequence[str | Path],
    config: Config,
    cache_dir: Path,
    format: Layout,
    score_col_map: Mapping[str, str] | None,
    embedder: Callable[[], TextEmbedder] | None,
    embedder_key: str,
    console: Console,
) -> RoutingData:
    with embedding_progress(console) as progress:
        return load_routing_data(
            data,
            config,
            embedder or default_embedder(embedder_key),
            embedder_key,
            cache_dir,
            format=format,
            score_col_map=score_col_map,
            progress=progress,
        )


def _as_config(config: Config | str | Path) -> Config:
    return config if isinstance(config, Config) else load_config(config)


def _version_name(data_hash: str, candidate: Candidate) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    tag = hashlib.sha256(f"{data_hash}{asdict(candidate)}".encode()).hexdigest()[:8]
    return f"{stamp}-{tag}"


def write_version(
    directory: Path,
    fitted: FittedModel,
    version: str,
    embedder_key: str,
    data_hash: str,
    quality_bar: float,
    training: Mapping[str, Any] | None = None,
    neighbours: Neighbours | None = None,
) -> Manifest:
    """Write the ONNX graph, the boosters, the projection and the neighbour memory into ``directory``,
    and their manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ONNX_FILE).write_bytes(fitted.onnx(FEATURE_SPEC).SerializeToString())
    names = [ONNX_FILE]
    (directory / "lightgbm").mkdir(exist_ok=True)
    labels = list(fitted.tiers) if fitted.candidate.layout == "per_tier" else ["joint"]
    for label, booster in zip(labels, fitted.boosters, strict=True):
        name = f"lightgbm/{label}.txt"
        booster.save_model(str(directory / name))
        names.append(name)
    if fitted.projection is not None:
        np.savez(
            directory / "projection.npz", mean=fitted.projection.mean, components=fitted.projection.components
        )
        names.append("projection.npz")
    if neighbours is not None:
        (directory / NEIGHBOURS_FILE).write_bytes(neighbours.vote.to_bytes())
        names.append(NEIGHBOURS_FILE)
    manifest = Manifest(
        version=version,
        tiers=fitted.tiers,
        feature_spec=FEATURE_SPEC,
        embedder_key=embedder_key,
        data_hash=data_hash,
        files={name: sha256_file(directory / name) for name in names},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        quality_bar=quality_bar,
        training=dict(training or {}),
        neighbours=None if neighbours is None else neighbours.spec,
    )
    write_manifest(directory, manifest)
    return manifest


def _check_parity(fitted: FittedModel, model: ClassifierModel, features: np.ndarray[Any, Any]) -> float:
    reference = fitted.predict_projected(project(FEATURE_SPEC, fitted.projection, features))
    served = model.tree_matrix(features)
    gap = float(np.abs(served - reference).max()) if len(features) else 0.0
    if gap > PARITY_TOLERANCE:
        raise TrainingError(f"the ONNX graph differs from LightGBM by {gap:.2e} (> {PARITY_TOLERANCE})")
    return gap


def classifier_aiq(
    model: ClassifierModel, held_out: RoutingData, config: Config, rule: Rule = "threshold"
) -> float:
    """AIQ of ``ClassifierPolicy`` over every configured tier on ``held_out`` (scored rows only)."""
    rows = held_out.subset(held_out.complete())
    candidates = list(range(len(config.tiers)))
    scorer = Scorer(rows.scores, rows.realized_costs(), candidates[-1])
    contexts = routing_contexts(rows, config, candidates)
    (sweep,) = classifier_sweeps(model, contexts, config.tier_names, rules=(rule,), via_calibration=True)
    singles = [scorer.point(0.0, np.full(len(rows), j, dtype=np.int64)) for j in candidates]
    points = [(p.cost, p.quality) for p in [singles[0], *scorer.curve(sweep)]]
    costs = [p.cost for p in singles]
    return aiq(points, min(costs), max(costs))


def _metrics(
    model: ClassifierModel, dataset: RoutingData, config: Config, quality_bar: float, parity: float
) -> dict[str, Any]:
    validation = dataset.split("validation")
    labels = validation.adequate(quality_bar)
    probabilities = model.predict_matrix(validation.features).astype(np.float64)
    per_tier = {
        tier: round(mean_log_loss(probabilities[:, [j]], labels[:, [j]]), 6)
        for j, tier in enumerate(model.tiers)
    }
    metrics: dict[str, Any] = {
        "validation": {
            "log_loss": round(mean_log_loss(probabilities, labels), 6),
            "log_loss_per_tier": per_tier,
        },
        "onnx_lightgbm_max_gap": parity,
    }
    test = dataset.split("test")
    if test.complete().any():
        metrics["gate"] = {
            "name": GATE_METRIC,
            "split": "test",
            "value": round(classifier_aiq(model, test, config), 6),
            "prompts": int(test.complete().sum()),
        }
    return metrics


def train(
    data: str | Path | Sequence[str | Path],
    config: Config | str | Path,
    registry_dir: str | Path,
    *,
    format: Layout = "routerbench",
    score_col_map: Mapping[str, str] | None = None,
    quality_bar: float = 0.5,
    candidates: Sequence[Candidate] = DEFAULT_GRID,
    cache_dir: str | Path | None = None,
    embedder: Callable[[], TextEmbedder] | None = None,
    embedder_key: str = DEFAULT_EMBEDDER_KEY,
    seed: int = 0,
    threads: int = 1,
    console: Console | None = None,
    prepared: RoutingData | None = None,
    neighbour_weight: float = DEFAULT_NEIGHBOUR_WEIGHT,
    unfamiliar_quantile: float = DEFAULT_QUANTILE,
) -> TrainResult:
    """Fit, select on validation, export, verify, calibrate and register a new model version.

    ``prepared`` skips loading when the caller already holds the data; ``neighbour_weight`` is the
    kNN vote's share of the served P (0: the trees alone, and no unfamiliarity calibration, which
    measures against the vote's memory); ``unfamiliar_quantile``: the share of validation prompts
    below the unfamiliarity threshold.
    """
    if not 0.0 <= quality_bar <= 1.0:
        raise ValueError(f"quality_bar must lie in [0, 1], got {quality_bar}")
    if not 0.0 <= neighbour_weight <= 1.0:
        raise ValueError(f"neighbour_weight must lie in [0, 1], got {neighbour_weight}")
    console = console or Console(stderr=True)
    settings = _as_config(config)
    registry = ModelRegistry(registry_dir)
    cache = Path(cache_dir) if cache_dir is not None else registry.root / "embedding-cache"
    dataset = prepared or load_data(
        data, settings, cache, format, score_col_map, embedder, embedder_key, console
    )
    train_rows, validation = dataset.split("train"), dataset.split("validation")
    if len(train_rows) == 0 or len(validation) == 0:
        raise TrainingError(f"need training and validation rows, got {len(train_rows)} and {len(validation)}")
    console.log(
        f"{len(dataset)} prompts: {len(train_rows)} train, {len(validation)} validation (test held out)"
    )
    scored = validation.subset(validation.complete())
    if len(scored) == 0:
        raise TrainingError("no validation prompt has a score for every tier")
    neighbours = (
        fit_neighbours(train_rows, validation, quality_bar, neighbour_weight)
        if neighbour_weight > 0
        else None
    )
    validation_vote = None if neighbours is None else neighbours.vote.predict(validation.embeddings)

    def routing_quality(probabilities: npt.NDArray[np.float64]) -> float:
        """Candidates are rated on the P they would serve: blended with the vote when there is one."""
        served = probabilities
        if validation_vote is not None:
            served = blend(probabilities.astype(np.float32), validation_vote, neighbour_weight).astype(
                np.float64
            )
        return float(np.mean(list(tier_set_aiq(served[validation.complete()], scored, settings).values())))

    fitted, reports = select(
        candidates,
        FEATURE_SPEC,
        settings.tier_names,
        (train_rows.features, train_rows.adequate(quality_bar)),
        (validation.features, validation.adequate(quality_bar)),
        score=routing_quality,
        seed=seed,
        threads=threads,
        train_weights=train_rows.weights,
    )
    for report in reports:
        console.log(
            f"candidate {report.candidate}: validation AIQ {report.validation_score:.4f}, "
            f"log-loss {report.validation_log_loss:.4f}"
        )
    version = _version_name(dataset.data_hash, fitted.candidate)
    registry.versions_dir.mkdir(parents=True, exist_ok=True)
    staging = registry.versions_dir / f".staging-{version}-{os.getpid()}"
    staging.mkdir()
    try:
        manifest = write_version(
            staging,
            fitted,
            version,
            embedder_key,
            dataset.data_hash,
            quality_bar,
            training={
                "candidate": asdict(fitted.candidate),
                "rounds": fitted.rounds,
                "candidates": [asdict(r) for r in reports],
                "seed": seed,
                "rows": {"train": len(train_rows), "validation": len(validation)},
            },
            neighbours=neighbours,
        )
        model = load_model(staging, settings.tier_names, embedder_key, device="cpu")
        parity = _check_parity(fitted, model, validation.features)
        complete = validation.subset(validation.complete())
        probabilities = model.predict_matrix(complete.features).astype(np.float64)
        contexts = routing_contexts(complete, settings, range(len(settings.tiers)))
        calibration = utility_calibration(probabilities, contexts, complete.adequate(quality_bar))
        metrics = _metrics(model, dataset, settings, quality_bar, parity)
        manifest = replace(manifest, calibration=calibration, metrics=metrics)
        if neighbours is not None:
            unfamiliarity = fit_unfamiliarity(
                model.tree_matrix(validation.features),
                neighbours.vote,
                neighbour_weight,
                validation.embeddings,
                validation.adequate(quality_bar),
                train_rows.adequate(quality_bar),
                unfamiliar_quantile,
            )
            manifest = attach_unfamiliarity(staging, manifest, unfamiliarity)
        write_manifest(staging, manifest)
        final = registry.version_dir(version)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    console.log(f"model version {version} written to {final}")
    return TrainResult(version, final, manifest, reports)
