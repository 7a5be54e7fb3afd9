"""Folds of the cross-validation: dealt by sample id, one test and one validation fold each."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.training.crossval import fold_of, fold_splits


def test_folds_depend_on_the_sample_id_and_seed_only() -> None:
    ids = [f"sample-{i}" for i in range(600)]
    folds = [fold_of(s, 5) for s in ids]
    assert folds == [fold_of(s, 5) for s in reversed(ids)][::-1]  # not on row order
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 80  # roughly even
    assert folds != [fold_of(s, 5, seed="another") for s in ids]


def test_each_fold_is_test_once_and_validation_once() -> None:
    fold_ids = np.array([fold_of(f"id-{i}", 4) for i in range(200)], dtype=np.int64)
    as_test = np.zeros(len(fold_ids), dtype=int)
    as_validation = np.zeros(len(fold_ids), dtype=int)
    for fold in range(4):
        splits = fold_splits(fold_ids, fold, 4)
        assert set(splits) == {"train", "validation", "test"}
        assert (splits[fold_ids == fold] == "test").all()
        as_test += splits == "test"
        as_validation += splits == "validation"
    assert (as_test == 1).all() and (as_validation == 1).all()


def test_too_few_folds_are_refused() -> None:
    from tierwise.training.crossval import cross_validate

    with pytest.raises(ValueError, match="at least 3 folds"):
        cross_validate(None, None, folds=2)  # type: ignore[arg-type]
