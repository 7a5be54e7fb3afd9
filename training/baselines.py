"""Baseline estimates of P(adequate) that the trained classifier is compared against.

The task prior here; the kNN vote (``tierwise.classifier.neighbours.NeighbourVote``,
which a model version may also blend into its own estimate). Both fit on the
training split only and are decided by the same rules as the classifier, so a
comparison measures the estimates, not the rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tierwise.classifier.neighbours import NeighbourVote, adequacy_rates
from tierwise.training.dataset import RoutingData

FloatMatrix = npt.NDArray[np.float64]


class TaskPrior:
    """P(adequate | tier) = the tier's adequacy rate on training prompts of the same task."""

    def __init__(self, tasks: Sequence[str], labels: FloatMatrix) -> None:
        self._overall = adequacy_rates(labels)
        names = np.array(tasks)
        self._by_task = {task: adequacy_rates(labels[names == task]) for task in sorted(set(tasks))}

    def predict(self, tasks: Sequence[str]) -> FloatMatrix:
        return np.stack([self._by_task.get(task, self._overall) for task in tasks])


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
        k: log_loss(NeighbourVote(train_embeddings, train_labels, k).predict(val_embeddings), val_labels)
        for k in choices
        if k <= len(train_labels)
    }
    if not losses:
        return max(1, len(train_labels))
    return min(losses, key=lambda k: (losses[k], k))


def fit_vote(train: RoutingData, validation: RoutingData, quality_bar: float) -> NeighbourVote:
    """The kNN vote over ``train``'s prompts, k picked on ``validation``'s log-loss."""
    labels = train.adequate(quality_bar)
    k = pick_k(train.embeddings, labels, validation.embeddings, validation.adequate(quality_bar))
    return NeighbourVote(train.embeddings, labels, k)
