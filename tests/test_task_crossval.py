"""Leave one task out, scoring every row of an unseen set, and the auto layout: on slices of the real
RouterBench and GSM8K files, the two models both record (mixtral vs gpt-4)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.trained_registry import priced_tiers_config, routerbench_slice
from tierwise.cache.embedder import SentenceEmbedder
from tierwise.classifier import load_model
from tierwise.router.config import Config
from tierwise.training.adapt_crossval import adaptation_cv, as_judged
from tierwise.training.adapt_crossval import summary_lines as summary_lines_adapt
from tierwise.training.cli.app import app
from tierwise.training.crossval import FoldTraining
from tierwise.training.dataset import RoutingData, load_routing_data
from tierwise.training.evaluate import evaluate
from tierwise.training.fit import Candidate
from tierwise.training.judged import JUDGED_TASK
from tierwise.training.routerbench import load_rows, split_of
from tierwise.training.task_crossval import leave_one_task_out, summary_lines, task_splits
from tierwise.training.train import train

KEY = "sentence-transformers/all-MiniLM-L6-v2@384"
SMALL = [Candidate("per_tier", 8, rounds=30)]
PAIR = [("weak", "mistralai/mixtral-8x7b-chat", "0.6", "0.6"), ("strong", "gpt-4-1106-preview", "10", "30")]


def pair_config() -> Config:
    return priced_tiers_config(PAIR)


def gsm8k_slice(shared_data: Path, target: Path, rows: int = 40) -> Path:
    source = shared_data / "gsm8k" / "gsm8k.csv"
    if not source.is_file():
        pytest.skip(f"GSM8K not found at {source}")
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        kept = [next(reader), *(row for _, row in zip(range(rows), reader, strict=False))]
    target.mkdir(parents=True)
    with (target / "gsm8k.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(kept)
    return target


@pytest.fixture(scope="module")
def folders(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path
) -> tuple[Path, Path, Path]:
    """(RouterBench slice, GSM8K slice, embedding cache)."""
    root = tmp_path_factory.mktemp("tasks")
    return (
        routerbench_slice(shared_data, root / "routerbench", 40),
        gsm8k_slice(shared_data, root / "gsm8k"),
        embeddings,
    )


@pytest.fixture(scope="module")
def data(folders: tuple[Path, Path, Path]) -> RoutingData:
    routerbench, gsm8k, cache = folders
    embedder = SentenceEmbedder(device="cpu")
    return load_routing_data([routerbench, gsm8k], pair_config(), lambda: embedder, KEY, cache, format="auto")


def test_auto_layout_reads_routerbench_and_wide_files_together(
    folders: tuple[Path, Path, Path], data: RoutingData
) -> None:
    routerbench, _, _ = folders
    assert set(data.tasks) == {row.eval_name for row in load_rows(routerbench)} | {"gsm8k"}
    # RouterBench prompts are list literals, unwrapped; GSM8K's are plain text, kept as they are
    assert not any(text.startswith("['") for text in data.texts)
    gsm8k_rows = [i for i, task in enumerate(data.tasks) if task == "gsm8k"]
    assert len(gsm8k_rows) == 40 and np.isnan(data.costs[gsm8k_rows]).all()  # no recorded costs: priced
    assert (data.realized_costs()[gsm8k_rows] > 0).all()


def test_task_splits_hold_the_left_out_task_out_of_training(data: RoutingData) -> None:
    relabelled = task_splits(data, "gsm8k", "pool")
    tasks = np.array(relabelled.tasks)
    assert set(tasks[relabelled.splits == "test"]) == {"gsm8k"}
    assert "gsm8k" not in set(tasks[relabelled.splits != "test"])
    pool = np.isin(data.splits, ["train", "validation"])
    assert len(relabelled) == int(pool.sum())  # the test split is never read
    final = task_splits(data, "gsm8k", "test")
    mine = np.array(data.tasks) == "gsm8k"
    assert int((final.splits == "test").sum()) == int((mine & (data.splits == "test")).sum())


def test_leave_one_task_out_reports_each_task_with_its_baselines(data: RoutingData) -> None:
    training = FoldTraining(candidates=SMALL, strong="strong", weak="weak")
    result = leave_one_task_out(data, pair_config(), tasks=["gsm8k", "mbpp"], repeats=2, training=training)
    assert list(result["per_task"]) == ["gsm8k", "mbpp"] and result["lightgbm_seeds"] == [0, 1]
    for entry in result["per_task"].values():
        assert len(entry["per_repeat"]) == 2
        for name in ("classifier-utility", "knn-utility", "task-prior-utility", "random"):
            assert 0.0 <= entry["summary"][name]["apgr"]["mean"] <= 1.0
    means = result["mean_over_tasks"]
    expected = np.mean([t["summary"]["random"]["apgr"]["mean"] for t in result["per_task"].values()])
    assert means["random"] == pytest.approx(expected, abs=1e-6)
    text = summary_lines(result)
    assert "mean" in text
    for task, entry in result["per_task"].items():  # each task's line shows the share flagged
        line = next(line for line in text.splitlines() if line.startswith(task))
        assert f"{entry['summary']['unfamiliar']['share']['mean']:.3f}" in line.split()[-3:]
    with pytest.raises(ValueError, match="no rows of task"):
        leave_one_task_out(data, pair_config(), tasks=["trivia"], training=training)


def test_eval_split_all_scores_every_row_with_baselines_fit_elsewhere(
    folders: tuple[Path, Path, Path], data: RoutingData, tmp_path: Path
) -> None:
    config = pair_config()
    routerbench_rows = data.subset(np.array(data.tasks) != "gsm8k")
    gsm8k_rows = data.subset(np.array(data.tasks) == "gsm8k")
    trained = train([], config, tmp_path / "registry", candidates=SMALL, prepared=routerbench_rows)
    model = load_model(trained.directory, config.tier_names, device="cpu")
    report = evaluate(
        model, gsm8k_rows, config, strong="strong", weak="weak", split="all", fit_on=routerbench_rows
    )
    assert report["split"] == "all" and report["prompts"] == len(gsm8k_rows)
    assert report["baselines_fit_on"] == {"data_hash": routerbench_rows.data_hash, "split": "train"}
    with pytest.raises(ValueError, match="fit_on"):
        evaluate(model, gsm8k_rows, config, split="all")

    runner = CliRunner()
    refused = runner.invoke(app, ["router", "eval", "--split", "all", "--registry", str(tmp_path)])
    assert refused.exit_code == 2 and "--fit-data" in refused.output
    bad_by = runner.invoke(app, ["router", "cv", "--by", "prompt"])
    assert bad_by.exit_code == 2 and "'adapt'" in bad_by.output


def test_adaptation_cv_scores_each_traffic_fold_with_the_others_as_judged_traffic(data: RoutingData) -> None:
    config = pair_config()
    tasks = np.array(data.tasks)
    base, traffic = data.subset(tasks != "gsm8k"), data.subset(tasks == "gsm8k")
    pool = int((traffic.splits != "test").sum())
    result = adaptation_cv(base, traffic, config, folds=2, repeats=2, candidates=SMALL)
    assert result["lightgbm_seeds"] == [0, 1]
    folds = result["per_fold"]
    # Every train+validation traffic row is scored once, by a model that judged the others; the test split is unread.
    assert sum(f["rows"] for f in folds) == pool
    assert all(f["rows"] + f["judged"] == pool for f in folds)
    for fold in folds:
        for name in ("start", "adapted", "knn-on-judged"):
            assert 0.0 <= fold[name] <= 1.0 or np.isnan(fold[name])
    gain = result["summary"]["adapted - start"]
    assert gain["mean"] == pytest.approx(np.mean([f["adapted"] - f["start"] for f in folds]), abs=1e-3)
    assert "adapted - knn-on-judged" in summary_lines_adapt(result)


def test_traffic_is_read_as_retrain_reads_judged_prompts(data: RoutingData) -> None:
    config = pair_config()
    traffic = data.subset((np.array(data.tasks) == "gsm8k") & (data.splits != "test"))
    judged = as_judged(traffic, config, base_train_rows=1000)
    assert set(judged.tasks) == {JUDGED_TASK} and judged.weights is not None
    assert set(judged.splits) <= {"train", "validation"} and "validation" in set(judged.splits)
    # Under the data's own split seed these rows would all be "train": the judged split has its own.
    share = config.learning.retrain.judged_validation
    assert {split_of(s, fractions=(1 - share, share, 0.0)) for s in traffic.sample_ids} == {"train"}


def test_cv_by_adapt_needs_traffic() -> None:
    refused = CliRunner().invoke(app, ["router", "cv", "--by", "adapt"])
    assert refused.exit_code == 2 and "--traffic" in refused.output
