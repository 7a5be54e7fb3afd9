"""Adaptation, cross-fitted: how retraining on a traffic domain's judged prompts serves that domain.

``router simulate --traffic`` scores the adapted model on the traffic's test split once: 207 prompts
for GSM8K, where the kNN vote swung 0.53-0.64 APGR between judged subsets. This ruler never reads the
test split and is five times larger: the traffic's train and validation rows are dealt into folds by
sample id; each fold is scored by the model ``retrain`` would train from the base data (train and
validation splits) plus every other fold as judged traffic (weighted by ``judged_row_weight``,
``learning.retrain.judged_validation`` of it selecting and calibrating), beside the start model (the
base data alone) and the kNN vote fit on the same judged prompts (``vote_value``). Each fold is
trained ``repeats`` times with LightGBM seeds ``seed, seed + 1, ...``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from tierwise.classifier.model import ClassifierModel, load_model
from tierwise.router.config import Config
from tierwise.training.crossval import fold_of
from tierwise.training.dataset import RoutingData
from tierwise.training.fit import DEFAULT_GRID, Candidate
from tierwise.training.judged import JUDGED_TASK, concat, judged_row_weight
from tierwise.training.retrain import metric_value, vote_value
from tierwise.training.routerbench import split_of
from tierwise.training.train import train

DEFAULT_FOLD_SEED = "tierwise-adapt-cv"
JUDGED_SPLIT_SEED = (
    "tierwise-adapt-cv-judged"  # not the data's split seed: its pool rows are all "train" under it
)
ROUTERS = ("start", "adapted", "knn-on-judged")


def as_judged(rows: RoutingData, config: Config, base_train_rows: int) -> RoutingData:
    """``rows`` as ``retrain`` reads judged traffic: task ``judged-traffic``, ``judged_validation`` of
    them in the validation split, each weighted by ``judged_row_weight``."""
    settings = config.learning.retrain
    share = settings.judged_validation
    fractions = (1.0 - share, share, 0.0)
    splits = np.array([split_of(s, seed=JUDGED_SPLIT_SEED, fractions=fractions) for s in rows.sample_ids])
    weight = judged_row_weight(settings, base_train_rows, int((splits == "train").sum()))
    return replace(rows, tasks=(JUDGED_TASK,) * len(rows), splits=splits, weights=np.full(len(rows), weight))


@dataclass(frozen=True)
class _Training:
    config: Config
    scratch: Path
    neighbour_weight: float
    candidates: Sequence[Candidate]

    def model(self, prepared: RoutingData, name: str, seed: int) -> ClassifierModel:
        """What ``retrain`` would train on ``prepared`` (its quality bar, LightGBM ``seed``)."""
        result = train(
            [],
            self.config,
            self.scratch / name,
            quality_bar=self.config.learning.retrain.quality_bar,
            seed=seed,
            console=Console(stderr=True, quiet=True),
            prepared=prepared,
            neighbour_weight=self.neighbour_weight,
            candidates=self.candidates,
        )
        return load_model(result.directory, self.config.tier_names, device="cpu")

    def value(self, model: ClassifierModel, scored: RoutingData) -> float:
        return metric_value(model, scored, self.config, self.config.learning.retrain)[0]


def adaptation_cv(
    base: RoutingData,
    traffic: RoutingData,
    config: Config,
    *,
    folds: int = 5,
    fold_seed: str = DEFAULT_FOLD_SEED,
    repeats: int = 1,
    seed: int = 0,
    neighbour_weight: float = 0.5,
    candidates: Sequence[Candidate] = DEFAULT_GRID,
    console: Console | None = None,
) -> dict[str, Any]:
    """Per fold the gate's metric of the start model, the adapted one (means over the seeds) and the
    kNN vote."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    console = console or Console(stderr=True)
    base = base.subset(base.splits != "test")
    pool = traffic.subset(traffic.splits != "test")
    if len(pool) < folds:
        raise ValueError(f"{len(pool)} traffic rows outside the test split, fewer than {folds} folds")
    fold_ids = np.array([fold_of(s, folds, fold_seed) for s in pool.sample_ids])
    base_train_rows = int((base.splits == "train").sum())
    seeds = [seed + r for r in range(repeats)]
    per_fold: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tierwise-adapt-cv-") as scratch:
        training = _Training(config, Path(scratch), neighbour_weight, candidates)
        starts = [training.model(base, f"start-{s}", s) for s in seeds]  # the same for every fold
        for fold in range(folds):
            judged = as_judged(pool.subset(fold_ids != fold), config, base_train_rows)
            scored = pool.subset(fold_ids == fold)
            adapted = concat([base, judged])
            runs = {
                "start": [training.value(model, scored) for model in starts],
                "adapted": [
                    training.value(training.model(adapted, f"adapted-{fold}-{s}", s), scored) for s in seeds
                ],
                "knn-on-judged": [vote_value(judged, scored, config, config.learning.retrain)],
            }
            weight = float(judged.weights[0]) if judged.weights is not None else 1.0
            entry = {"rows": len(scored), "judged": len(judged), "judged_weight": weight}
            entry |= {name: round(float(np.mean(values)), 4) for name, values in runs.items()}
            per_fold.append(entry)
            console.log(
                f"fold {fold}: {len(scored)} rows, start {entry['start']}, adapted {entry['adapted']}, "
                f"kNN on judged {entry['knn-on-judged']}"
            )
    return {
        "by": "adapt",
        "metric": config.learning.retrain.metric,
        "folds": folds,
        "fold_seed": fold_seed,
        "lightgbm_seeds": seeds,
        "neighbour_weight": neighbour_weight,
        "note": "the traffic's train and validation rows, cross-fitted; its test split unread",
        "per_fold": per_fold,
        "summary": _summary(per_fold),
    }


def _summary(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Each router's mean and sd over the folds, and the adapted model's paired gains, fold by fold."""
    values = {name: np.array([f[name] for f in per_fold]) for name in ROUTERS}
    out: dict[str, Any] = {
        name: {"mean": round(float(v.mean()), 4), "sd": round(float(v.std()), 4)}
        for name, v in values.items()
    }
    for other in ("start", "knn-on-judged"):
        gain = values["adapted"] - values[other]
        out[f"adapted - {other}"] = {
            "mean": round(float(gain.mean()), 4),
            "sd": round(float(gain.std()), 4),
            "folds_above": int((gain > 0).sum()),
        }
    return out


def summary_lines(result: dict[str, Any]) -> str:
    seeds = len(result["lightgbm_seeds"])
    lines = [
        f"adaptation, cross-fitted: {result['metric']} on each fold of the traffic's train+validation rows "
        f"(test split unread), mean over {seeds} LightGBM seed(s)",
        f"{'fold':>4s} {'rows':>5s} {'judged':>6s} {'weight':>6s} "
        + " ".join(f"{name:>13s}" for name in ROUTERS),
    ]
    for index, fold in enumerate(result["per_fold"]):
        lines.append(
            f"{index:4d} {fold['rows']:5d} {fold['judged']:6d} {fold['judged_weight']:6.2f} "
            + " ".join(f"{fold[name]:13.4f}" for name in ROUTERS)
        )
    summary = result["summary"]
    lines.append(
        f"{'mean':>4s} {'':>5s} {'':>6s} {'':>6s} "
        + " ".join(f"{summary[n]['mean']:.4f} ±{summary[n]['sd']:.3f}".rjust(13) for n in ROUTERS)
    )
    for other in ("start", "knn-on-judged"):
        gain = summary[f"adapted - {other}"]
        lines.append(
            f"adapted - {other}: {gain['mean']:+.4f} ± {gain['sd']:.4f} over the folds, "
            f"above in {gain['folds_above']} of {len(result['per_fold'])}"
        )
    return "\n".join(lines)
