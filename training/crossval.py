"""K-fold cross-validation of the whole training pipeline on the training and validation splits.

One held-out split of a few hundred prompts is noisy (an APGR moves by a few
hundredths between splits of the same data), so a change to the router is
judged here before the test split is read. The test split is never used: the
rows of the other two splits are dealt into ``folds`` groups by a hash of the
sample id; for each fold, that group is the held-out "test", the next group is
"validation" (model selection, early stopping, utility calibration) and the rest
is "train". Each fold runs the real ``train`` (ONNX export included) and the
real ``evaluate``, so the numbers are those ``tierwise router eval`` would print.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from tierwise.classifier.model import ClassifierModel, load_model
from tierwise.router.config import Config
from tierwise.training.dataset import RoutingData
from tierwise.training.evaluate import evaluate
from tierwise.training.fit import DEFAULT_GRID, Candidate
from tierwise.training.policy_sweeps import serving_guard, trusting
from tierwise.training.train import DEFAULT_NEIGHBOUR_WEIGHT, train

DEFAULT_FOLDS = 5
DEFAULT_FOLD_SEED = "tierwise-cv-1"


def hash_bucket(key: str, buckets: int) -> int:
    """``key``'s bucket in 0..buckets-1, from its SHA-256: stable across runs, files and row order."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % buckets


def fold_of(sample_id: str, folds: int, seed: str = DEFAULT_FOLD_SEED) -> int:
    """The fold of a sample: the bucket of (seed, id)."""
    return hash_bucket(f"{seed}\x00{sample_id}", folds)


def fold_splits(fold_ids: npt.NDArray[np.int64], fold: int, folds: int) -> npt.NDArray[np.str_]:
    """Split names for one fold: ``fold`` is the held-out test, the next fold validation, the rest train."""
    splits = np.full(len(fold_ids), "train", dtype="<U10")
    splits[fold_ids == fold] = "test"
    splits[fold_ids == (fold + 1) % folds] = "validation"
    return splits


def headline(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per router: pair APGR and the tier set's AIQ and cost to 95% (share of the strongest tier's cost)."""
    out: dict[str, dict[str, float | None]] = {}
    pair = report.get("pair", {}).get("routers", {})
    for name, entry in report["tier_set"]["routers"].items():
        reached = entry["cost_to_95pct"]
        out[name] = {
            "aiq": entry["aiq"],
            "cost_to_95pct": None if reached is None else reached["share_of_strongest_cost"],
            "apgr": pair[name]["apgr"] if name in pair else None,
        }
    return out


UNGUARDED = " (trusting the model)"


def judged(
    model: ClassifierModel, rows: RoutingData, config: Config, strong: str | None, weak: str | None
) -> tuple[dict[str, Any], dict[str, dict[str, float | None]]]:
    """The report on ``rows``' test split and its headline; where the unfamiliar guard ran, the headline
    also holds the classifier's curves with the model trusted everywhere (the same model, so the two differ
    only by the guard) and the share of prompts the guard flagged (as router "unfamiliar", metric "share")."""
    report = evaluate(model, rows, config, strong=strong, weak=weak, split="test")
    numbers = headline(report)
    if serving_guard(model, config) is None:
        return report, numbers
    plain = headline(evaluate(model, rows, trusting(config), strong=strong, weak=weak, split="test"))
    for name, entry in plain.items():
        if name.startswith("classifier-"):
            numbers[name + UNGUARDED] = entry
    numbers["unfamiliar"] = {"share": report["unfamiliar"]["unfamiliar_share"]}
    return report, numbers


def summarise(per_fold: Sequence[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation over the folds (or repeats); a fold where a router never reached 95%
    counts as 1.0."""
    summary: dict[str, dict[str, Any]] = {}
    for name in per_fold[0]:
        entry: dict[str, Any] = {}
        for metric in ("apgr", "aiq", "cost_to_95pct", "share"):
            raw = [fold[name].get(metric) for fold in per_fold]
            if all(v is None for v in raw) and metric in ("apgr", "share"):
                continue
            if metric not in per_fold[0][name]:
                continue
            values = [1.0 if v is None else float(v) for v in raw]
            entry[metric] = {"mean": round(float(np.mean(values)), 6), "sd": round(float(np.std(values)), 6)}
        summary[name] = entry
    return summary


@dataclass(frozen=True)
class FoldTraining:
    """How every fold's model is trained (the real ``train``, ONNX export included) and judged (the real
    ``evaluate`` on the fold's "test" rows, with the pair ``strong`` / ``weak``)."""

    quality_bar: float = 0.5
    candidates: Sequence[Candidate] = DEFAULT_GRID
    strong: str | None = None
    weak: str | None = None
    lightgbm_seed: int = 0
    threads: int = 1
    neighbour_weight: float = DEFAULT_NEIGHBOUR_WEIGHT

    def run(
        self, rows: RoutingData, config: Config, directory: Path, console: Console, repeat: int = 0
    ) -> tuple[dict[str, Any], dict[str, dict[str, float | None]]]:
        """Train on ``rows``' train split (LightGBM seed ``lightgbm_seed + repeat``), select on its
        validation split, judge on its test split: the report and its headline."""
        result = train(
            [],
            config,
            directory,
            quality_bar=self.quality_bar,
            candidates=self.candidates,
            seed=self.lightgbm_seed + repeat,
            threads=self.threads,
            console=console,
            prepared=rows,
            neighbour_weight=self.neighbour_weight,
        )
        model = load_model(result.directory, config.tier_names, device="cpu")
        return judged(model, rows, config, self.strong, self.weak)


def cross_validate(
    data: RoutingData,
    config: Config,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: str = DEFAULT_FOLD_SEED,
    training: FoldTraining = FoldTraining(),
    console: Console | None = None,
) -> dict[str, Any]:
    """Train and evaluate once per fold on the training and validation splits; the test split is left out."""
    if folds < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (test, validation, train), got {folds}")
    console = console or Console(stderr=True)
    pool = data.subset(np.isin(data.splits, ["train", "validation"]))
    fold_ids = np.array([fold_of(s, folds, seed) for s in pool.sample_ids], dtype=np.int64)
    per_fold = []
    with tempfile.TemporaryDirectory(prefix="tierwise-cv-") as scratch:
        for fold in range(folds):
            relabelled = replace(pool, splits=fold_splits(fold_ids, fold, folds))
            report, numbers = training.run(relabelled, config, Path(scratch) / f"fold-{fold}", console)
            per_fold.append(numbers)
            console.log(
                f"fold {fold}: {report['prompts']} prompts, classifier-utility "
                f"APGR {numbers['classifier-utility']['apgr']}, "
                f"cost to 95% {numbers['classifier-utility']['cost_to_95pct']}"
            )
    return {
        "folds": folds,
        "seed": seed,
        "neighbour_weight": training.neighbour_weight,
        "prompts": len(pool),
        "note": "train and validation splits only, dealt into folds by sample id; the test split is unused",
        "summary": summarise(per_fold),
        "per_fold": per_fold,
    }


def summary_lines(result: dict[str, Any]) -> str:
    lines = [
        f"{result['folds']}-fold cross-validation over {result['prompts']} prompts (train+validation only)",
        f"{'router':40s} {'APGR':>15s} {'AIQ':>15s} {'cost@95%':>15s}",
    ]

    def cell(entry: dict[str, Any], metric: str) -> str:
        if metric not in entry:
            return f"{'':>15s}"
        return f"{entry[metric]['mean']:8.4f} ±{entry[metric]['sd']:.3f}"

    for name, entry in result["summary"].items():
        if "share" in entry:
            lines.append(f"{'share flagged unfamiliar':40s} {cell(entry, 'share')}")
            continue
        lines.append(f"{name:40s} {cell(entry, 'apgr')} {cell(entry, 'aiq')} {cell(entry, 'cost_to_95pct')}")
    lines.append("cost@95%: share of the strongest tier's cost; a fold that never reached 95% counts as 1.0")
    return "\n".join(lines)
