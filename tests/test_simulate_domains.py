"""``tierwise router simulate`` across domains and from zero, on small slices of the shared data: a start
model trained on RouterBench replayed on GSM8K traffic (scored on GSM8K's test split every round, beside
the kNN vote fit on the same judged rows), and the cold start (no base data: the random policy answers
every request until a first model beats it on held-out judged prompts). Also the judged rows' weight."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from tests.trained_registry import csv_head, routerbench_slice
from tierwise.router.config import RetrainConfig
from tierwise.training.judged import judged_row_weight
from tierwise.training.routerbench import load_rows, split_of
from tierwise.training.simulate import SimulationSettings, run_simulation


def _gsm8k_slice(shared_data: Path, folder: Path, rows: int) -> Path:
    source = shared_data / "gsm8k" / "gsm8k.csv"
    if not source.is_file():
        pytest.skip(f"GSM8K not found at {source} (see ../shared/data/README.md)")
    folder.mkdir(parents=True)
    csv_head(source, folder / source.name, rows)
    return folder


def test_start_on_routerbench_then_adapt_to_gsm8k_traffic(
    shared_data: Path, tmp_path: Path, embeddings: Path
) -> None:
    start = routerbench_slice(shared_data, tmp_path / "routerbench", 30)
    traffic = _gsm8k_slice(shared_data, tmp_path / "gsm8k", 90)
    report = run_simulation(
        start,
        tmp_path / "sim",
        SimulationSettings(rounds=2, slice_rows=None, rate=1.0, concurrency=2, traffic=(traffic,)),
        console=Console(file=(tmp_path / "log.txt").open("w")),
        cache_dir=embeddings,
    )
    rows = load_rows(traffic, format="auto")
    train = [r for r in rows if split_of(r.sample_id) == "train"]
    assert report["round_key"] == "traffic_test_apgr" and not report["cold_start"]
    # Every GSM8K train prompt is served once, none fails; the start model serves round 1.
    assert sum(r["requests"] for r in report["rounds"]) == len(train)
    assert all(r["failed"] == 0 for r in report["rounds"])
    first = report["rounds"][0]
    assert 0.0 <= first["traffic_test_apgr"] <= 1.0 and 0.0 <= first["knn_on_judged_apgr"] <= 1.0
    assert float(first["shadow_spend_usd"]) > 0
    # Fewer judged prompts than judged_min_rows: a judged row weighs what judgment_weight says.
    assert first["judged_row_weight"] == 1.0
    assert 0.0 <= report["final"]["traffic_test_apgr"] <= 1.0
    assert report["final"]["traffic_test_apgr"] == report["final"]["test_apgr"]
    # Every train prompt was replayed: the traffic's validation prompts are the ones no model saw.
    validation = sum(split_of(r.sample_id) == "validation" for r in rows)
    assert report["splits"]["unreplayed"]["rows"] == validation > 0
    for r in report["rounds"]:
        value = r["candidate_unreplayed_apgr"]
        assert value is not None and (math.isnan(value) or 0.0 <= value <= 1.0)


def test_cold_start_answers_every_request_and_gates_the_first_model(
    shared_data: Path, tmp_path: Path, embeddings: Path
) -> None:
    data = _gsm8k_slice(shared_data, tmp_path / "gsm8k", 150)
    report = run_simulation(
        data,
        tmp_path / "sim",
        SimulationSettings(rounds=2, slice_rows=0, rate=1.0, concurrency=2),
        console=Console(file=(tmp_path / "log.txt").open("w")),
        cache_dir=embeddings,
    )
    rows = load_rows(data, format="auto")
    assert report["cold_start"] and report["rounds"][0]["model"] is None
    assert report["rounds"][0]["validation_apgr"] is None  # nothing but the random policy served round 1
    assert sum(r["requests"] for r in report["rounds"]) == sum(split_of(r.sample_id) == "train" for r in rows)
    assert all(r["failed"] == 0 for r in report["rounds"])
    assert report["splits"]["unreplayed"]["rows"] == 0  # no --traffic: its own validation split rules
    assert all(r["candidate_unreplayed_apgr"] is None for r in report["rounds"])
    for r in report["rounds"]:
        # Until a model serves, the gate compares the candidate with the cold-start policy, not with nothing.
        if r["model"] is None:
            assert r["gate"]["serving"]["gate_value"] >= 0.0
            assert "cold-start:random" in r["reason"]
            # Every judged prompt is compared, each scored by a model trained without it: more than held out.
            assert "out-of-fold on" in r["reason"] and "(at most 20% promotes)" in r["reason"]
            assert r["gate"]["verdict"]["confidence"] == 0.8  # learning.retrain.cold_start_confidence
            assert r["gate"]["verdict"]["cross_fitted_rows"] > r["gate"]["gate_rows"]["judged_held_out"]


def test_judged_rows_outweigh_base_data_once_there_are_enough() -> None:
    settings = RetrainConfig(judged_share=0.5, judged_min_rows=200, judgment_weight=1.0)
    assert judged_row_weight(settings, 1500, 100) == 1.0  # too few to lean on
    assert judged_row_weight(settings, 1500, 300) == pytest.approx(5.0)  # 300 * 5 = 1500: half the weight
    assert judged_row_weight(settings, 100, 300) == 1.0  # already more than half: never lowered
    assert judged_row_weight(settings, 0, 300) == 1.0  # no base data: nothing to outweigh
    assert judged_row_weight(RetrainConfig(judged_share=None, judgment_weight=3.0), 1500, 900) == 3.0
    assert judged_row_weight(RetrainConfig(judged_share=0.75), 900, 300) == pytest.approx(9.0)
