"""``tierwise router simulate`` end to end on a small RouterBench slice: it serves train-split prompts through
a real server, judges them with the replay judge, retrains and reports per round; and the judged rows
it learns from carry the recorded score of each tier's own answer, for the served and the shadow tier."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from tests.trained_registry import routerbench_slice
from tierwise.training import simulate
from tierwise.training.dataset import RoutingData
from tierwise.training.judged import judged_rows, read_judgments
from tierwise.training.retrain import metric_value
from tierwise.training.routerbench import csv_files, load_rows, split_of
from tierwise.training.simulate import STRONG, WEAK, SimulationSettings, run_simulation, simulation_config
from tierwise.training.simulate_summary import print_and_plot_summary, summarize

ROWS_PER_FILE = 30  # 90 prompts: 52 train, 21 validation, 17 test


def test_simulate_runs_rounds_and_learns_from_correctly_labelled_traffic(
    shared_data: Path, tmp_path: Path, embeddings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = routerbench_slice(shared_data, tmp_path / "data", ROWS_PER_FILE)
    workdir = tmp_path / "sim"
    # Which base splits the simulation scores models on, one entry per reading.
    readings: list[str] = []

    def recording_metric_value(model: Any, rows: RoutingData, *args: Any) -> Any:
        readings.append("/".join(sorted(set(rows.splits.tolist()))))
        return metric_value(model, rows, *args)

    monkeypatch.setattr(simulate, "metric_value", recording_metric_value)
    report = run_simulation(
        data,
        workdir,
        SimulationSettings(rounds=2, slice_rows=20, rate=1.0, concurrency=2, seed=3),
        console=Console(file=(tmp_path / "log.txt").open("w")),
        cache_dir=embeddings,
    )
    saved = json.loads((workdir / "simulation.json").read_text())
    assert saved == report and (workdir / "simulation.png").stat().st_size > 1000
    rows = load_rows(csv_files(data))
    train_prompts = {r.prompt for r in rows if split_of(r.sample_id) == "train"}
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    # Every train-split prompt but the weak start's slice is served once; none fails.
    assert sum(r["requests"] for r in report["rounds"]) == len(train_prompts) - 20
    assert all(r["failed"] == 0 for r in report["rounds"])
    for entry in (report["final"], report["reference"]):
        for key in ("test_apgr", "validation_apgr"):
            assert 0.0 <= entry[key] <= 1.0
    # The test split is read once per model it reports: the final one and the offline reference, after
    # the loop. Each round reads validation only (the serving model and the candidate).
    assert readings == ["validation"] * 2 * len(report["rounds"]) + ["validation", "test"] * 2
    for r in report["rounds"]:
        assert 0.0 <= r["validation_apgr"] <= 1.0 and not {"test_apgr", "held_out_apgr"} & set(r)
        assert r["candidate"] and set(r["gate"]) >= {"candidate", "serving", "tolerance", "verdict"}
        assert r["gate"]["verdict"]["rule"] == "bootstrap"
        # The gate read the validation split (and held-out judged prompts), never the test split.
        assert r["gate"]["gate_rows"]["base_validation"] == report["splits"]["validation"]["rows"]
        assert float(r["shadow_spend_usd"]) > 0  # gpt-4's or mixtral's recorded answer, at list prices
        assert float(r["judge_spend_usd"]) == 0  # the replay judge calls no model
    # rate 1: both tiers' answers of every served request judged
    assert report["rounds"][-1]["judgments_total"] == 2 * (len(train_prompts) - 20)
    assert report["judge"] == "replay judge (recorded scores)"
    assert report["splits"]["test"]["rows"] == sum(split_of(r.sample_id) == "test" for r in rows)
    assert report["seed"] == 3

    # Repeats are summarised per round on validation, and the final test reading over the runs: here the
    # same run and a copy 0.1 higher on both splits.
    higher = copy.deepcopy(report)
    for entry in (*higher["rounds"], higher["final"]):
        entry["validation_apgr"] += 0.1
    higher["final"]["test_apgr"] += 0.1
    summary = summarize([report, higher])
    assert [e["round"] for e in summary["per_round"]] == [1, 2, "final"]
    first = summary["per_round"][0]
    assert set(first) == {"round", "validation", "promoted"}
    assert first["validation"]["mean"] == round(report["rounds"][0]["validation_apgr"] + 0.05, 4)
    assert first["validation"]["sd"] == round(0.1 / 2**0.5, 4)
    assert summary["final_test"]["mean"] == round(report["final"]["test_apgr"] + 0.05, 4)
    assert summary["gap_to_reference"]["test"]["mean"] == round(report["final"]["gap_to_reference"] - 0.05, 4)
    assert (
        print_and_plot_summary(summary, [report, higher], tmp_path, Console(file=None)).stat().st_size > 1000
    )

    # The labels: each judged request's tier columns are the recorded scores of that tier's model.
    config = simulation_config(workdir, "http://127.0.0.1:1", "unused", data, 1.0)
    judged = judged_rows(config, read_judgments(config, 0, time.time() + 1).records, 1.0)
    assert judged is not None and len(judged) == len(train_prompts) - 20
    by_prompt = {r.prompt: r for r in rows}
    assert set(judged.texts) <= train_prompts  # the simulation keeps its public prompts with the samples
    assert not np.isnan(judged.scores).any()  # the served tier and the shadow tier, both labelled
    for text, scores in zip(judged.texts, judged.scores, strict=True):
        assert scores.tolist() == [by_prompt[text].scores[config.tier(t).model] for t in (WEAK, STRONG)]
