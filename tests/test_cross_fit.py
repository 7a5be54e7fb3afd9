"""Cross-fitting for the cold start's gate: every judged prompt is scored by a model trained without its
group, by the real ``train``; groups are stable and keep repeats of one prompt together."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tierwise.training.cross_fit as cross_fit
from tests.harness import build_config, config_dict
from tests.test_classifier_model import synthetic_data
from tierwise.classifier.features import EMBEDDING_DIM
from tierwise.training.dataset import RoutingData
from tierwise.training.judged import concat
from tierwise.training.routerbench import split_of
from tierwise.training.train import TrainingError, TrainResult

FOLDS = 4


def judged(count: int) -> RoutingData:
    """Rows for the harness's two tiers (small, large), split as judged prompts are: by a hash."""
    features, labels = synthetic_data(count, seed=3)
    labels = labels[:, [0, 2]]
    ids = tuple(f"request-{i}" for i in range(count))
    return RoutingData(
        tiers=("small", "large"),
        sample_ids=ids,
        texts=("",) * count,
        tasks=("judged-traffic",) * count,
        splits=np.array([split_of(i, fractions=(0.7, 0.15, 0.15)) for i in ids]),
        scores=labels,
        costs=np.full(labels.shape, np.nan),
        expected_costs=np.tile([0.001, 0.01], (count, 1)),
        input_tokens=np.full(count, 20, dtype=np.int64),
        embeddings=features[:, :EMBEDDING_DIM].copy(),
        features=features,
        data_hash="judged",
        prompt_keys=tuple(f"prompt-{i}" for i in range(count)),
    )


def test_groups_are_stable_keep_a_prompts_repeats_together_and_use_every_fold() -> None:
    rows = judged(200)
    groups = cross_fit.fold_of(rows.prompts(), FOLDS)
    np.testing.assert_array_equal(groups, cross_fit.fold_of(list(rows.prompts()), FOLDS))
    assert set(groups.tolist()) == set(range(FOLDS))
    # The same five prompts asked again, embedded in other batches: their features differ in the last
    # bits (as a batched encode leaves them), their prompt keys do not.
    first = rows.subset(np.arange(len(rows)) < 5)
    again = replace(
        first,
        sample_ids=tuple(f"repeat-{i}" for i in range(5)),
        features=np.nextafter(first.features, np.float32(2.0)),
    )
    twice = concat([first, again])
    assert (twice.features[:5] != twice.features[5:]).any()
    placed = cross_fit.fold_of(twice.prompts(), FOLDS)
    np.testing.assert_array_equal(placed[:5], placed[5:])
    with pytest.raises(ValueError, match="at least two folds"):
        cross_fit.fold_of(rows.prompts(), 1)


def test_each_group_is_scored_by_a_model_that_never_trained_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = judged(240)
    config = build_config(config_dict(tmp_path / "var", "http://127.0.0.1:9/v1", "http://127.0.0.1:9"))
    seen: list[dict[str, Any]] = []
    real_train = cross_fit.train

    def recording_train(*args: Any, prepared: RoutingData, **kwargs: Any) -> TrainResult:
        seen.append({"splits": prepared.splits.copy(), "directory": args[2]})
        return real_train(*args, prepared=prepared, **kwargs)

    monkeypatch.setattr(cross_fit, "train", recording_train)
    probabilities = cross_fit.out_of_fold_probabilities(rows, config, folds=FOLDS, quality_bar=0.5, seed=0)

    groups = cross_fit.fold_of(rows.prompts(), FOLDS)
    assert len(seen) == FOLDS and len({str(s["directory"]) for s in seen}) == FOLDS
    for group, call in enumerate(seen):
        mine = groups == group
        # The group is the model's test split and nothing else is; the others' held-out share trains.
        np.testing.assert_array_equal(call["splits"] == "test", mine)
        np.testing.assert_array_equal(call["splits"][~mine & (rows.splits == "test")], "train")
        np.testing.assert_array_equal(
            call["splits"][~mine & (rows.splits != "test")], rows.splits[~mine & (rows.splits != "test")]
        )
    assert probabilities.shape == (len(rows), 2)
    assert np.isfinite(probabilities).all() and ((probabilities >= 0) & (probabilities <= 1)).all()
    # Out of fold, the model still ranks the held-apart prompts: adequacy follows the first statistic.
    signal = rows.features[:, EMBEDDING_DIM]
    assert np.corrcoef(signal, probabilities[:, 0])[0, 1] > 0.3


def test_a_group_whose_complement_cannot_train_is_an_error_not_a_silent_gap(tmp_path: Path) -> None:
    rows = judged(40)
    rows = RoutingData(**{**rows.__dict__, "splits": np.full(len(rows), "train")})  # no validation share
    config = build_config(config_dict(tmp_path / "var", "http://127.0.0.1:9/v1", "http://127.0.0.1:9"))
    with pytest.raises(TrainingError, match="validation"):
        cross_fit.out_of_fold_probabilities(rows, config, folds=FOLDS, quality_bar=0.5, seed=0)
