"""Baseline estimates of P(adequate) that the trained classifier is compared against.

Both fit on the training split only and are decided by the same rules as the
classifier, so a comparison measures the estimates, not the rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float64]


def _column_means(labels: FloatMatrix) -> npt.NDArray[np.float64]:
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(labels)).sum(axis=0)
        sums = np.nansum(labels, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.5)


class TaskPrior:
    """P(adequate | tier) = the tier's adequacy rate on training prompts of the same task."""

    def __init__(self, tasks: Sequence[str], labels: FloatMatrix) -> None:
        self._overall = _column_means(labels)
        names = np.array(tasks)
        self._by_task = {task: _column_means(labels[names == task]) for task in sorted(set(tasks))}

    def predict(self, tasks: Sequence[str]) -> FloatMatrix:
        return np.stack([self._by_task.get(task, self._overall) for task in tasks])


class NearestNeighbours:
    """P(adequate | tier) = the tier's adequacy rate over the k most similar training prompts (cosine)."""

    def __init__(self, embeddings: npt.NDArray[np.float32], labels: FloatMatrix, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self._embeddings = np.asarray(embeddings, dtype=np.float32)
        self._labels = labels
        self._prior = _column_means(labels)
        self.k = min(k, len(labels))

    def predict(self, embeddings: npt.NDArray[np.float32]) -> FloatMatrix:
        similarity = np.asarray(embeddings, dtype=np.float32) @ self._embeddings.T
        nearest = np.argpartition(-similarity, self.k - 1, axis=1)[:, : self.k]
        neighbour_labels = self._labels[nearest]  # (rows, k, tiers)
        known = ~np.isnan(neighbour_labels)
        counts = known.sum(axis=1)
        sums = np.where(known, neighbour_labels, 0.0).sum(axis=1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), self._prior)


def log_loss(probabilities: FloatMatrix, labels: FloatMatrix) -> float:
    known = ~np.isnan(labels)
    p = np.clip(probabilities[known], 1e-4, 1 - 1e-4)
    y = labels[known]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def pick_k(
    train_embeddings: npt.NDArray[np.float32],
    train_labels: FloatMatrix,
    val_embeddings: npt.NDArray[np.float32],
    val_labels: FloatMatrix,
    choices: Sequence[int] = (5, 10, 20, 50, 100),
) -> int:
    """The k whose estimates have the lowest validation log-loss."""
    losses = {
        k: log_loss(NearestNeighbours(train_embeddings, train_labels, k).predict(val_embeddings), val_labels)
        for k in choices
        if k <= len(train_labels)
    }
    if not losses:
        return max(1, len(train_labels))
    return min(losses, key=lambda k: (losses[k], k))
