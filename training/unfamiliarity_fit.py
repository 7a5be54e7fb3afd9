"""Choosing and calibrating a model version's unfamiliarity measure on the validation split.

Both measures (``tierwise.classifier.unfamiliarity``) are computed for every
validation prompt; the one whose ranking best follows the served estimate's
error there (Spearman correlation with the per-prompt Brier score over the
scored tiers) is kept. Its threshold is the ``quantile`` of the validation
scores: that share of in-domain prompts is trusted as before, and the shrink
toward the base rates grows linearly past it, complete at ``threshold + ramp x
(threshold - median)``. The base rates are the training split's adequacy rates.
The test split is never read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

from tierwise.classifier.manifest import Manifest, sha256_file
from tierwise.classifier.neighbours import NeighbourVote, adequacy_rates, blend
from tierwise.classifier.unfamiliarity import (
    DISTANCE_NEIGHBOURS,
    MEASURES,
    REFERENCE_POINTS,
    UNFAMILIARITY_FILE,
    Measure,
    UnfamiliarityCalibration,
    UnfamiliaritySpec,
    measure_scores,
)

FloatMatrix = npt.NDArray[np.float64]
# Compared on leave-one-task-out over ARC, MBPP, Winogrande and GSM8K (train+validation rows only; see
# docs/architecture.md): flag the top 5% of in-domain validation prompts, the shrink complete three
# median-to-threshold gaps further; no setting tried moved the held-out tasks' APGR by more than noise.
DEFAULT_QUANTILE = 0.95
DEFAULT_RAMP = 3.0


def brier_per_prompt(probabilities: FloatMatrix, labels: FloatMatrix) -> FloatMatrix:
    """Mean squared error of P(adequate) over each prompt's scored tiers (NaN where none is scored)."""
    known = ~np.isnan(labels)
    squared = np.where(known, (probabilities - np.nan_to_num(labels)) ** 2, 0.0)
    counts = known.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        errors: FloatMatrix = np.where(counts > 0, squared.sum(axis=1) / counts, np.nan)
    return errors


def _rank_correlation(scores: FloatMatrix, errors: FloatMatrix) -> float:
    usable = ~np.isnan(errors)
    if usable.sum() < 3 or np.ptp(scores[usable]) == 0:
        return 0.0
    value = float(spearmanr(scores[usable], errors[usable]).statistic)
    return value if np.isfinite(value) else 0.0


def fit_unfamiliarity(
    trees: npt.NDArray[np.float32],
    vote: NeighbourVote,
    weight: float,
    validation_embeddings: npt.NDArray[np.float32],
    validation_labels: FloatMatrix,
    train_labels: FloatMatrix,
    quantile: float = DEFAULT_QUANTILE,
    ramp: float = DEFAULT_RAMP,
    measure: Measure | None = None,
) -> UnfamiliarityCalibration:
    """The calibration for a version whose trees say ``trees`` on the validation prompts and whose vote
    (served with ``weight``) is ``vote``; ``measure`` forces one instead of choosing."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the unfamiliarity quantile must lie in (0, 1), got {quantile}")
    if ramp <= 0:
        raise ValueError(f"the unfamiliarity ramp must be positive, got {ramp}")
    votes, closeness = vote.predict_with_closeness(validation_embeddings, DISTANCE_NEIGHBOURS)
    served = blend(trees, votes, weight).astype(np.float64)
    errors = brier_per_prompt(served, validation_labels)
    scores = {name: measure_scores(name, trees, votes, closeness) for name in MEASURES}
    correlations = {name: round(_rank_correlation(scores[name], errors), 6) for name in MEASURES}
    chosen: Measure = measure if measure is not None else max(MEASURES, key=correlations.__getitem__)
    values = scores[chosen]
    threshold = float(np.quantile(values, quantile))
    median = float(np.median(values))
    full = threshold + ramp * max(threshold - median, 1e-6)
    statistics: dict[str, Any] = {
        "split": "validation",
        "prompts": len(values),
        "spearman_with_brier": correlations,
        "chosen_by": "forced" if measure else "largest spearman_with_brier",
        "mean": round(float(values.mean()), 6),
        "sd": round(float(values.std()), 6),
        "median": round(median, 6),
    }
    return UnfamiliarityCalibration(
        measure=chosen,
        k=DISTANCE_NEIGHBOURS,
        threshold=threshold,
        full=full,
        quantile=quantile,
        base_rates=tuple(float(p) for p in adequacy_rates(train_labels)),
        reference=tuple(float(x) for x in np.quantile(values, np.linspace(0.0, 1.0, REFERENCE_POINTS))),
        statistics=statistics,
    )


def attach_unfamiliarity(
    directory: Path, manifest: Manifest, calibration: UnfamiliarityCalibration
) -> Manifest:
    """Write ``unfamiliarity.json`` into the version directory; the manifest that lists, pins and names it."""
    (directory / UNFAMILIARITY_FILE).write_bytes(calibration.to_bytes())
    files = {**manifest.files, UNFAMILIARITY_FILE: sha256_file(directory / UNFAMILIARITY_FILE)}
    return replace(
        manifest, files=files, unfamiliarity=UnfamiliaritySpec(calibration.measure, calibration.threshold)
    )
