"""LightGBM adequacy models: fit the candidates on the training split, pick one on validation.

Labels are per tier: 1 where the tier's score reaches the quality bar, 0 below
it; a tier's rows with no score are left out of that tier's training (never
read as 0). Candidates differ in layout (one model per tier, or one model with
the tier as input), embedding projection size and tree size; the caller's
validation score picks one (``train`` scores how well each routes: the AIQ of
both decision rules), the mean validation log-loss over the tiers otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx

from tierwise.classifier.features import FeatureSpec
from tierwise.training.onnx_export import (
    Projection,
    fit_projection,
    joint_model,
    per_tier_model,
    projection_model,
    run_model,
)

Layout = Literal["per_tier", "joint"]
FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Candidate:
    layout: Layout = "per_tier"
    pca_components: int = 16  # 0: the trees read the raw embedding
    num_leaves: int = 4
    min_data_in_leaf: int = 40
    learning_rate: float = 0.03
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    path_smooth: float = 0.0  # shrink each leaf towards its parent: less variance per prompt
    rounds: int = 200  # the most boosting rounds
    early_stopping: int = 0  # stop when validation log-loss has not improved for this many rounds (0: never)

    def lightgbm_params(self, seed: int, threads: int) -> dict[str, Any]:
        return {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "learning_rate": self.learning_rate,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "path_smooth": self.path_smooth,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": threads,
            "verbose": -1,
        }


# Chosen by 5-fold cross-validation over the training and validation splits of RouterBench
# (never the test split); train() picks among them on the validation split.
DEFAULT_GRID: tuple[Candidate, ...] = (
    Candidate("per_tier", 16, path_smooth=50.0),
    Candidate("per_tier", 32, path_smooth=50.0),
    Candidate("per_tier", 16),
    Candidate("joint", 16, num_leaves=8, rounds=300),
)


@dataclass
class FittedModel:
    candidate: Candidate
    tiers: tuple[str, ...]
    projection: Projection | None
    boosters: list[lgb.Booster]  # one per tier, or the single joint model
    rounds: list[int] = field(default_factory=list)

    def onnx(self, spec: FeatureSpec) -> onnx.ModelProto:
        if self.candidate.layout == "per_tier":
            return per_tier_model(spec, self.projection, self.boosters)
        return joint_model(spec, self.projection, self.boosters[0], len(self.tiers))

    def predict_projected(self, projected: npt.NDArray[np.float32]) -> FloatMatrix:
        """P(adequate) from LightGBM itself (the reference the ONNX graph must match)."""
        if self.candidate.layout == "per_tier":
            return np.column_stack([b.predict(projected) for b in self.boosters])
        return np.column_stack(
            [
                self.boosters[0].predict(_with_tier(projected, t, len(self.tiers)))
                for t in range(len(self.tiers))
            ]
        )


def project(
    spec: FeatureSpec, projection: Projection | None, features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The trees' input, computed by the same ONNX nodes that serve."""
    return run_model(projection_model(spec, projection), features)


def _with_tier(projected: npt.NDArray[np.float32], tier: int, tiers: int) -> npt.NDArray[np.float32]:
    one_hot = np.zeros((projected.shape[0], tiers), dtype=np.float32)
    one_hot[:, tier] = 1.0
    return np.hstack([projected, one_hot])


def _float32_floor(value: float) -> float:
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def float32_thresholds(booster: lgb.Booster, rounds: int) -> lgb.Booster:
    """The booster's first ``rounds`` trees, every split threshold moved down to the largest float32
    not above it.

    For float32 inputs ``x <= t`` and ``x <= floor32(t)`` agree, so the trees decide exactly as
    before; and ONNX, which stores thresholds as float32, then makes the very same comparisons
    (rounding a threshold to the nearest float32 instead would flip inputs that fall between).
    """
    lines = booster.model_to_string(num_iteration=rounds).splitlines()
    if any(line.startswith("num_cat=") and line != "num_cat=0" for line in lines):
        raise ValueError("categorical splits are not supported")
    for i, line in enumerate(lines):
        if line.startswith("threshold="):
            values = (_float32_floor(float(v)) for v in line.removeprefix("threshold=").split())
            lines[i] = "threshold=" + " ".join(repr(v) for v in values)
    # The header's tree byte sizes no longer hold; without them LightGBM finds the trees by their headers.
    lines = [line for line in lines if not line.startswith("tree_sizes=")]
    return lgb.Booster(model_str="\n".join(lines) + "\n")


def _train_one(
    params: dict[str, Any],
    x: npt.NDArray[np.float32],
    y: FloatMatrix,
    x_val: npt.NDArray[np.float32],
    y_val: FloatMatrix,
    candidate: Candidate,
    weight: npt.NDArray[np.float64] | None = None,
) -> tuple[lgb.Booster, int]:
    train_set = lgb.Dataset(x, y, weight=weight, free_raw_data=False)
    usable_validation = len(y_val) > 0 and 0 < y_val.sum() < len(y_val)
    if not usable_validation or candidate.early_stopping <= 0:
        booster = lgb.train(params, train_set, num_boost_round=candidate.rounds)
        return float32_thresholds(booster, booster.current_iteration()), booster.current_iteration()
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=candidate.rounds,
        valid_sets=[lgb.Dataset(x_val, y_val, reference=train_set)],
        callbacks=[lgb.early_stopping(candidate.early_stopping, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    return float32_thresholds(booster, best), best


def fit_candidate(
    candidate: Candidate,
    spec: FeatureSpec,
    tiers: Sequence[str],
    train_features: npt.NDArray[np.float32],
    train_labels: FloatMatrix,
    val_features: npt.NDArray[np.float32],
    val_labels: FloatMatrix,
    seed: int = 0,
    threads: int = 0,
    weights: npt.NDArray[np.float64] | None = None,
) -> FittedModel:
    """``weights``: one training weight per row (None: all 1), e.g. judged traffic against base data."""
    embeddings = train_features[:, : spec.embedding_dim]
    projection = fit_projection(embeddings, candidate.pca_components) if candidate.pca_components else None
    x_train = project(spec, projection, train_features)
    x_val = project(spec, projection, val_features)
    params = candidate.lightgbm_params(seed, threads)
    boosters: list[lgb.Booster] = []
    rounds: list[int] = []
    if candidate.layout == "per_tier":
        for t in range(len(tiers)):
            known, known_val = ~np.isnan(train_labels[:, t]), ~np.isnan(val_labels[:, t])
            if not known.any():
                raise ValueError(f"tier {tiers[t]!r} has no scored training rows")
            booster, best = _train_one(
                params,
                x_train[known],
                train_labels[known, t],
                x_val[known_val],
                val_labels[known_val, t],
                candidate,
                None if weights is None else weights[known],
            )
            boosters.append(booster)
            rounds.append(best)
    else:
        stacked = _stack(x_train, train_labels)
        stacked_val = _stack(x_val, val_labels)
        stacked_weights = None
        if weights is not None:
            stacked_weights = np.concatenate(
                [weights[~np.isnan(train_labels[:, t])] for t in range(train_labels.shape[1])]
            )
        booster, best = _train_one(params, *stacked, *stacked_val, candidate, stacked_weights)
        boosters.append(booster)
        rounds.append(best)
    return FittedModel(candidate, tuple(tiers), projection, boosters, rounds)


def _stack(x: npt.NDArray[np.float32], labels: FloatMatrix) -> tuple[npt.NDArray[np.float32], FloatMatrix]:
    """Rows of the joint layout: every (prompt, tier) pair with a label, tier one-hot appended."""
    tiers = labels.shape[1]
    parts = [_with_tier(x[~np.isnan(labels[:, t])], t, tiers) for t in range(tiers)]
    targets = [labels[~np.isnan(labels[:, t]), t] for t in range(tiers)]
    return np.vstack(parts), np.concatenate(targets)


def mean_log_loss(probabilities: FloatMatrix, labels: FloatMatrix) -> float:
    """Log-loss per tier over its scored rows, averaged over the tiers."""
    losses = []
    for t in range(labels.shape[1]):
        known = ~np.isnan(labels[:, t])
        if not known.any():
            continue
        p = np.clip(probabilities[known, t], 1e-7, 1 - 1e-7)
        y = labels[known, t]
        losses.append(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))))
    return float(np.mean(losses)) if losses else math.nan


@dataclass(frozen=True)
class CandidateReport:
    candidate: dict[str, Any]
    validation_log_loss: float
    validation_score: float
    rounds: list[int]


Scorer = Callable[[FloatMatrix], float]


def select(
    candidates: Sequence[Candidate],
    spec: FeatureSpec,
    tiers: Sequence[str],
    train: tuple[npt.NDArray[np.float32], FloatMatrix],
    validation: tuple[npt.NDArray[np.float32], FloatMatrix],
    score: Scorer | None = None,
    seed: int = 0,
    threads: int = 0,
    train_weights: npt.NDArray[np.float64] | None = None,
) -> tuple[FittedModel, list[CandidateReport]]:
    """Fit every candidate on ``train`` (features, labels); keep the best on ``validation``.

    ``score`` rates a candidate's validation P(adequate) matrix (higher is better);
    without it, the lower mean log-loss wins.
    """
    if not candidates:
        raise ValueError("no candidates to fit")
    best: tuple[float, FittedModel] | None = None
    reports = []
    for candidate in candidates:
        fitted = fit_candidate(
            candidate, spec, tiers, *train, *validation, seed=seed, threads=threads, weights=train_weights
        )
        probabilities = fitted.predict_projected(project(spec, fitted.projection, validation[0]))
        loss = mean_log_loss(probabilities, validation[1])
        value = score(probabilities) if score is not None else -loss
        reports.append(CandidateReport(asdict(candidate), loss, value, fitted.rounds))
        if best is None or value > best[0]:
            best = (value, fitted)
    assert best is not None
    return best[1], reports
