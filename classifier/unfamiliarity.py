"""How unfamiliar a prompt is to a model version, and the calibration that says when it is too unfamiliar.

A version trained on some kinds of prompt can be confidently wrong on others
(on a domain it never saw, its P(adequate) may order prompts worse than a coin
flip). Two measures, both read off what a version computes for every request
anyway:

- ``neighbour_distance``: 1 - the mean cosine similarity of the prompt's
  ``k`` nearest memory prompts (the kNN vote's memory: training prompts);
- ``disagreement``: the mean gap, over the tiers, between the trees' and the
  vote's P(adequate) (the two estimators err differently off their data).

Training computes both on the validation split and keeps the one whose ranking
best follows the served estimate's error there (Spearman correlation with the
per-prompt Brier score). The calibration holds that measure's validation
distribution (101 quantiles), the threshold past which a prompt counts as
unfamiliar (a high quantile of in-domain prompts), the score at which the
shrink toward the safe prior is complete, and each tier's base rate (its
training adequacy rate: the safe prior). It is written to
``unfamiliarity.json``, listed and SHA-256-pinned in the manifest like every
model file; the manifest's ``unfamiliarity`` section repeats the measure and
the threshold, and a version whose two copies disagree is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

UNFAMILIARITY_FILE = "unfamiliarity.json"
Measure = Literal["neighbour_distance", "disagreement"]
MEASURES: tuple[Measure, ...] = ("neighbour_distance", "disagreement")
REFERENCE_POINTS = 101  # quantiles 0, 0.01, ..., 1 of the validation scores
DISTANCE_NEIGHBOURS = 10  # the nearest memory prompts the distance averages over


def measure_scores(
    measure: Measure,
    trees: npt.ArrayLike,
    vote: npt.ArrayLike,
    closeness: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Per row, the unfamiliarity score: ``closeness`` is the mean similarity of the nearest memory prompts."""
    if measure == "neighbour_distance":
        return np.asarray(1.0 - np.asarray(closeness, dtype=np.float64), dtype=np.float64)
    if measure == "disagreement":
        gap = np.abs(np.asarray(trees, dtype=np.float64) - np.asarray(vote, dtype=np.float64))
        return np.asarray(gap.mean(axis=1), dtype=np.float64)
    raise ValueError(f"unknown unfamiliarity measure {measure!r}; choose one of {MEASURES}")


@dataclass(frozen=True, slots=True)
class UnfamiliarityCalibration:
    """When a prompt is too unfamiliar, and what the safe prior is; see the module docstring."""

    measure: Measure
    k: int  # nearest memory prompts the distance averages over
    threshold: float  # a score above this is unfamiliar
    full: float  # at or above this score P(adequate) is the base rate alone
    quantile: float  # the share of validation prompts at or below ``threshold``
    base_rates: tuple[float, ...]  # per tier, in the manifest's tier order
    reference: tuple[float, ...]  # the validation scores' quantiles 0, 0.01, ..., 1
    statistics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"unfamiliarity.measure must be one of {MEASURES}, got {self.measure!r}")
        if self.k < 1:
            raise ValueError(f"unfamiliarity.k must be at least 1, got {self.k}")
        numbers = (self.threshold, self.full, self.quantile, *self.base_rates, *self.reference)
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError("unfamiliarity: every number must be finite")
        if self.full <= self.threshold:
            raise ValueError(
                f"unfamiliarity.full ({self.full}) must lie above the threshold ({self.threshold})"
            )
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"unfamiliarity.quantile must lie in (0, 1), got {self.quantile}")
        if not self.base_rates or not all(0.0 <= p <= 1.0 for p in self.base_rates):
            raise ValueError("unfamiliarity.base_rates: one rate in [0, 1] per tier")
        if len(self.reference) != REFERENCE_POINTS or any(
            b < a for a, b in zip(self.reference, self.reference[1:], strict=False)
        ):
            raise ValueError(f"unfamiliarity.reference: {REFERENCE_POINTS} ascending quantiles")

    def strength(self, score: float) -> float:
        """How far to move P(adequate) toward the base rates: 0 up to the threshold, 1 from ``full``."""
        if not math.isfinite(score):
            return 1.0  # a score that cannot be measured is no reason to trust the model
        if score <= self.threshold:
            return 0.0
        return min(1.0, (score - self.threshold) / (self.full - self.threshold))

    def percentile(self, score: float) -> float:
        """The share of validation prompts less unfamiliar than ``score`` (0..1)."""
        levels = np.linspace(0.0, 1.0, REFERENCE_POINTS)
        return float(np.interp(score, self.reference, levels, left=0.0, right=1.0))

    def shrink(self, p_adequate: Sequence[float], strength: float) -> list[float]:
        """P(adequate) per tier moved ``strength`` of the way to the base rates."""
        if len(p_adequate) != len(self.base_rates):
            raise ValueError(f"expected {len(self.base_rates)} probabilities, got {len(p_adequate)}")
        return [(1.0 - strength) * p + strength * b for p, b in zip(p_adequate, self.base_rates, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "k": self.k,
            "threshold": self.threshold,
            "full": self.full,
            "quantile": self.quantile,
            "base_rates": list(self.base_rates),
            "reference": list(self.reference),
            "statistics": dict(self.statistics),
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnfamiliarityCalibration:
        measure = data["measure"]
        if measure not in MEASURES:
            raise ValueError(f"unfamiliarity.measure must be one of {MEASURES}, got {measure!r}")
        return cls(
            measure=measure,
            k=int(data["k"]),
            threshold=float(data["threshold"]),
            full=float(data["full"]),
            quantile=float(data["quantile"]),
            base_rates=tuple(float(p) for p in data["base_rates"]),
            reference=tuple(float(x) for x in data["reference"]),
            statistics=dict(data.get("statistics") or {}),
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> UnfamiliarityCalibration:
        """Read a file written by ``to_bytes``; raises ValueError naming what is wrong."""
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError("the top level must be an object")
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an unfamiliarity calibration ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True, slots=True)
class UnfamiliaritySpec:
    """The manifest's ``unfamiliarity`` section: the file, and the measure and threshold it must hold."""

    measure: Measure
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {"file": UNFAMILIARITY_FILE, "measure": self.measure, "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnfamiliaritySpec:
        if data.get("file") != UNFAMILIARITY_FILE:
            raise ValueError(f"unfamiliarity.file must be {UNFAMILIARITY_FILE!r}, got {data.get('file')!r}")
        measure = data.get("measure")
        if measure not in MEASURES:
            raise ValueError(f"unfamiliarity.measure must be one of {MEASURES}, got {measure!r}")
        return cls(measure, float(data["threshold"]))

    def matches(self, calibration: UnfamiliarityCalibration) -> bool:
        return calibration.measure == self.measure and calibration.threshold == self.threshold
