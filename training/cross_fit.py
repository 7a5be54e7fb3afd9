"""Every judged prompt scored by a model that never saw it: the cold start's gate on few labels.

From zero, the first model serves only once it beats the cold-start policy on
held-out judged requests. The held-out share alone is a few dozen prompts after
a few hundred judgments (15 %, fewer with both compared tiers judged): too few
to show a real gain, so a candidate 0.04 APGR above random stayed out in four of
five replays. Cross-fitting spends every judged prompt on that comparison: the
judged prompts are dealt into ``folds`` groups, and each group is scored by a
model trained, by the same ``train`` as the candidate, on the other groups'
rows (their train and validation shares as labelled; the held-out share trains).
The decisions gathered so are the training procedure's on prompts it did not
see; the candidate that is then promoted is that procedure's output on the
usual split.

Groups go by a hash of a row's prompt key (``RoutingData.prompts``), the key the
judged splits use: every request of one prompt lands in the same group. Not by
its features: a batched encode leaves last-bit noise in an embedding (up to
1.2e-7; 136 of 500 cold-start prompts differed between two replays), which split
one prompt's repeats across groups and moved the gate's verdict from run to run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console

from tierwise.classifier.model import load_model
from tierwise.router.config import Config
from tierwise.training.crossval import hash_bucket
from tierwise.training.dataset import RoutingData
from tierwise.training.train import train

FloatMatrix = npt.NDArray[np.float64]


def fold_of(prompts: Sequence[str], folds: int) -> npt.NDArray[np.int64]:
    """Each row's group in 0..folds-1, from a SHA-256 of its prompt key: stable across runs."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least two folds, got {folds}")
    return np.array([hash_bucket(key, folds) for key in prompts], dtype=np.int64)


def out_of_fold_probabilities(
    rows: RoutingData, config: Config, *, folds: int, quality_bar: float, seed: int
) -> FloatMatrix:
    """P(adequate) of every tier for each of ``rows``, from a model trained without the row's group.

    Raises ``TrainingError`` when a group's complement cannot train (no train or no scored validation
    row): the comparison then has no score for that group, and the caller falls back."""
    groups = fold_of(rows.prompts(), folds)
    out = np.full((len(rows), len(config.tiers)), np.nan)
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory(prefix="tierwise-cross-fit-") as scratch:
        for group in range(folds):
            mine = groups == group
            if not mine.any():
                continue
            # The group is the test split; the held-out share of the other groups trains with their train share.
            splits = np.where(mine, "test", np.where(rows.splits == "test", "train", rows.splits))
            result = train(
                [],
                config,
                Path(scratch) / f"group-{group}",
                quality_bar=quality_bar,
                seed=seed,
                console=quiet,
                prepared=replace(rows, splits=splits),
            )
            model = load_model(result.directory, config.tier_names, device="cpu")
            out[mine] = model.predict_matrix(rows.features[mine])
    return out
