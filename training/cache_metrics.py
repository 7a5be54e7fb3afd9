"""Serve metrics of a semantic cache on labelled pairs: precision, recall, wrong-serve rate.

Shared by verifier training (choosing the operating point on validation) and by
``tierwise cache eval``, so both count the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# One-sided 95% normal quantile: operating points must hold their precision with this confidence.
CONFIDENCE_Z = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class ServeMetrics:
    """``served`` answers of which ``right`` had label 1, over ``positives`` label-1 and ``negatives`` label-0 pairs."""

    served: int
    right: int
    positives: int
    negatives: int

    @property
    def wrong(self) -> int:
        return self.served - self.right

    @property
    def precision(self) -> float:
        """Right / served; 1.0 when nothing was served (no wrong answer was given)."""
        return self.right / self.served if self.served else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.positives if self.positives else 0.0

    @property
    def wrong_serve_rate(self) -> float:
        return self.wrong / self.negatives if self.negatives else 0.0

    @property
    def precision_lower_bound(self) -> float:
        return wilson_lower_bound(self.right, self.served)

    def to_json(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "wrong": self.wrong,
            "precision": self.precision,
            "recall": self.recall,
            "wrong_serve_rate": self.wrong_serve_rate,
        }


def serve_metrics(
    served: Sequence[bool], labels: Sequence[int], right: Sequence[bool] | None = None
) -> ServeMetrics:
    """Count per pair: ``served[i]`` says an answer was given; it is right when ``labels[i]`` is 1.

    ``right`` overrides what counts as right (corpus mode: a hit on another pair's entry is wrong
    even for a label-1 pair).
    """
    if len(served) != len(labels) or (right is not None and len(right) != len(labels)):
        raise ValueError("served, labels (and right) must have one entry per pair")
    if any(label not in (0, 1) for label in labels):
        raise ValueError("labels must be 0 or 1")
    correct = right if right is not None else [label == 1 for label in labels]
    return ServeMetrics(
        served=sum(1 for hit in served if hit),
        right=sum(1 for hit, ok in zip(served, correct, strict=True) if hit and ok),
        positives=sum(1 for label in labels if label == 1),
        negatives=sum(1 for label in labels if label == 0),
    )


def wilson_lower_bound(successes: int, trials: int, z: float = CONFIDENCE_Z) -> float:
    """Lower end of the Wilson score interval of a binomial proportion (0 when there are no trials)."""
    if trials <= 0:
        return 0.0
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = share + z * z / (2 * trials)
    spread = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / denominator
