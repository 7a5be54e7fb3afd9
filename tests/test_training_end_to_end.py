"""Train on a slice of the real RouterBench data, register, evaluate; the same evaluation on a
wide-layout copy whose model columns are named differently (mapped with score_col_map)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.trained_registry import priced_tiers_config, routerbench_slice
from tierwise.cache.embedder import SentenceEmbedder
from tierwise.classifier import ModelRegistry, load_model
from tierwise.router.config import Config
from tierwise.training.commands import parse_score_cols
from tierwise.training.crossval import FoldTraining, cross_validate, summary_lines
from tierwise.training.dataset import load_routing_data
from tierwise.training.evaluate import evaluate, summary_table
from tierwise.training.fit import Candidate
from tierwise.training.plots import plot_report
from tierwise.training.routerbench import Layout, load_rows
from tierwise.training.train import train

ROWS_PER_FILE = 40
TIERS = [  # name, RouterBench model, price in/out per million tokens, wide-layout column
    ("small", "mistralai/mistral-7b-chat", "0.2", "0.2", "answer_quality_a"),
    ("medium", "mistralai/mixtral-8x7b-chat", "0.6", "0.6", "answer_quality_b"),
    ("standard", "gpt-3.5-turbo-1106", "1", "2", "answer_quality_c"),
    ("large", "gpt-4-1106-preview", "10", "30", "answer_quality_d"),
]
KEY = "sentence-transformers/all-MiniLM-L6-v2@384"


def slice_config() -> Config:
    return priced_tiers_config(
        [(name, model, price_in, price_out) for name, model, price_in, price_out, _ in TIERS]
    )


@pytest.fixture(scope="module")
def slices(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The first rows of each RouterBench file, as RouterBench CSVs and as one wide CSV."""
    root = tmp_path_factory.mktemp("slice")
    routerbench_dir = routerbench_slice(shared_data, root / "routerbench", ROWS_PER_FILE)
    wide = root / "wide.csv"
    with wide.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        columns = [c for *_, c in TIERS]
        writer.writerow(["id", "prompt", "task", *columns, *(f"{c}|total_cost" for c in columns)])
        for row in load_rows(routerbench_dir):
            scores = ["" if row.scores[m] is None else row.scores[m] for _, m, *_ in TIERS]
            costs = ["" if row.costs[m] is None else row.costs[m] for _, m, *_ in TIERS]
            writer.writerow([row.sample_id, row.prompt, row.eval_name, *scores, *costs])
    return routerbench_dir, wide


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(device="cpu")


def test_train_register_evaluate_in_both_layouts(
    slices: tuple[Path, Path], embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    routerbench_dir, wide = slices
    config = slice_config()
    result = train(
        routerbench_dir,
        config,
        tmp_path / "registry",
        candidates=[Candidate("per_tier", 8, rounds=30), Candidate("joint", 8, rounds=30)],
        cache_dir=tmp_path / "embeddings",
        embedder=lambda: embedder,
    )
    manifest = result.manifest
    assert manifest.tiers == config.tier_names and manifest.calibration is not None
    assert {c.candidate["layout"] for c in result.candidates} == {"per_tier", "joint"}
    assert manifest.metrics["onnx_lightgbm_max_gap"] <= 1e-5
    assert 0.0 < manifest.metrics["gate"]["value"] <= 1.0
    # the kNN memory holds the training split, no validation or test prompt
    assert manifest.neighbours is not None and manifest.neighbours.weight == 0.5
    assert manifest.neighbours.size == manifest.training["rows"]["train"]

    registry = ModelRegistry(tmp_path / "registry")
    assert registry.versions() == [result.version]
    registry.promote(result.version, expected_tiers=config.tier_names)
    model = load_model(registry.version_dir(result.version), config.tier_names, device="cpu")

    def no_embedding() -> SentenceEmbedder:
        raise AssertionError("the prompts were embedded while training: the cache must serve them")

    reports = {}
    layouts: list[tuple[Layout, Path, dict[str, str] | None]] = [
        ("routerbench", routerbench_dir, None),
        ("wide", wide, parse_score_cols([f"{name}={column}" for name, *_, column in TIERS])),
    ]
    for layout, path, mapping in layouts:
        data = load_routing_data(
            path, config, no_embedding, KEY, tmp_path / "embeddings", format=layout, score_col_map=mapping
        )
        reports[layout] = evaluate(model, data, config, strong="large", weak="medium")

    report = reports["wide"]
    json.dumps(report)  # JSON-ready
    assert report["split"] == "test" and report["prompts"] > 5
    routers = report["tier_set"]["routers"]
    expected = {
        "classifier-threshold",
        "classifier-utility",
        "classifier-utility-by-target",
        "knn-threshold",
        "knn-utility",
        "task-prior-threshold",
        "task-prior-utility",
        "length",
        "random",
        "cheapest",
        "strongest",
        "oracle",
    }
    assert set(routers) == expected and set(report["pair"]["routers"]) == expected
    assert routers["oracle"]["aiq"] >= max(r["aiq"] for r in routers.values()) - 1e-9
    assert routers["strongest"]["cost_to_95pct"]["share_of_strongest_cost"] == pytest.approx(1.0)
    pair = report["pair"]
    assert (pair["weak"], pair["strong"]) == ("medium", "large")
    for entry in pair["routers"].values():
        assert np.isfinite(entry["apgr"]) and 0.0 <= entry["cpt50"] <= entry["cpt80"] <= 1.0
    # The rule called better is the one with the higher APGR, as the pair view measured it.
    rules = report["rules"]["pair"]
    assert rules["apgr"] == {rule: pair["routers"][f"classifier-{rule}"]["apgr"] for rule in rules["apgr"]}
    assert rules["apgr"][rules["better"]] == max(rules["apgr"].values())
    # Cost to 95 % is read off the test curve (its operating point picked on these prompts), and says so.
    assert routers["strongest"]["cost_to_95pct"]["read_off"] == "test curve"
    assert "read off the test curve" in summary_table(report)
    # the wide copy, columns renamed, is the same evaluation as the RouterBench files
    for view in ("tier_set", "pair"):
        for name in ("classifier-threshold", "classifier-utility", "knn-utility", "task-prior-utility"):
            assert report[view]["routers"][name] == reports["routerbench"][view]["routers"][name]
    assert "classifier-utility" in summary_table(report)
    png = plot_report(report, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_validation_runs_the_pipeline_per_fold_without_the_test_split(
    slices: tuple[Path, Path], embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    routerbench_dir, _ = slices
    config = slice_config()
    data = load_routing_data(routerbench_dir, config, lambda: embedder, KEY, tmp_path / "embeddings")
    training = FoldTraining(candidates=[Candidate("per_tier", 8, rounds=30)], strong="large", weak="medium")
    result = cross_validate(data, config, folds=3, training=training)
    pool = int(np.isin(data.splits, ["train", "validation"]).sum())
    assert pool < len(data) and result["prompts"] == pool  # the test split's rows are never dealt
    assert result["folds"] == 3 and len(result["per_fold"]) == 3
    summary = result["summary"]
    assert summary["strongest"]["cost_to_95pct"] == {"mean": 1.0, "sd": 0.0}
    assert summary["oracle"]["aiq"]["mean"] >= summary["classifier-utility"]["aiq"]["mean"]
    for entry in result["per_fold"]:
        assert np.isfinite(entry["classifier-threshold"]["apgr"])
    assert "classifier-utility" in summary_lines(result)

    # tuning reads the validation split; the report says which split it is
    model_registry = tmp_path / "registry"
    trained = train(
        [], config, model_registry, candidates=[Candidate("per_tier", 8, rounds=30)], prepared=data
    )
    model = load_model(trained.directory, config.tier_names, device="cpu")
    report = evaluate(model, data, config, split="validation")
    assert report["split"] == "validation"
    assert report["prompts"] == int(data.split("validation").complete().sum())
    assert summary_table(report).startswith(f"model {model.version}, validation split")
