"""eval-cache: metric arithmetic, pair files, and runs through the real SemanticCache path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tierwise.cache.embedder import SentenceEmbedder
from tierwise.cache.verification import CosineOnlyVerifier
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.cache.verifier_model import VerifierModel
from tierwise.training.cache_metrics import ServeMetrics, serve_metrics, wilson_lower_bound
from tierwise.training.eval_cache import (
    EvalPair,
    Outcome,
    VerifierFactory,
    evaluate_cache,
    outcome_metrics,
    read_eval_pairs,
    select_pairs,
)
from tierwise.training.make_traps import DEFAULT_OUTPUT as TRAPS

ROOT = Path(__file__).resolve().parents[1]


def test_metric_arithmetic_on_a_hand_made_example() -> None:
    # 6 pairs: labels 1,1,1,0,0,0; served: yes,yes,no,yes,no,no.
    metrics = serve_metrics([True, True, False, True, False, False], [1, 1, 1, 0, 0, 0])
    assert (metrics.served, metrics.right, metrics.wrong) == (3, 2, 1)
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.recall == pytest.approx(2 / 3)
    assert metrics.wrong_serve_rate == pytest.approx(1 / 3)
    assert metrics.to_json()["precision"] == pytest.approx(2 / 3)


def test_nothing_served_is_precise_but_recalls_nothing() -> None:
    metrics = ServeMetrics(served=0, right=0, positives=4, negatives=2)
    assert (metrics.precision, metrics.recall, metrics.wrong_serve_rate) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one entry per pair"):
        serve_metrics([True], [1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        serve_metrics([True], [2])


def test_wilson_lower_bound() -> None:
    # 90 of 100, z = 1.645: (0.9 + z²/200 − z·sqrt(0.0009 + z²/40000)) / (1 + z²/100) = 0.8396.
    assert wilson_lower_bound(90, 100) == pytest.approx(0.8396, abs=1e-4)
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(1000, 1000) < 1.0


def test_a_hit_on_another_pairs_entry_is_wrong() -> None:
    pairs = [EvalPair((("user", "a"),), (("user", "b"),), 1), EvalPair((("user", "c"),), (("user", "d"),), 1)]
    outcomes = [Outcome(True, True, 0.95), Outcome(True, False, 0.91)]
    metrics = outcome_metrics(outcomes, pairs)
    assert (metrics.served, metrics.right, metrics.recall) == (2, 1, 0.5)


def test_read_eval_pairs_accepts_texts_and_message_lists(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"a": "hi", "b": "hello", "label": 1, "kind": "paraphrase"},
        {"a": [{"role": "user", "content": "x"}], "b": [{"role": "user", "content": "y"}], "label": 0},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    pairs = read_eval_pairs(path)
    assert pairs[0] == EvalPair((("user", "hi"),), (("user", "hello"),), 1, "paraphrase")
    assert pairs[1].a == (("user", "x"),)
    path.write_text(json.dumps({"a": 5, "b": "x", "label": 1}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1"):
        read_eval_pairs(path)


def test_select_pairs_takes_a_split_and_a_stable_sample() -> None:
    pairs = [EvalPair((("user", f"q{i}"),), (("user", f"r{i}"),), i % 2) for i in range(200)]
    test = select_pairs(pairs, "test")
    assert 0 < len(test) < 100
    # The shipped verifier trained on the train split: by default only pairs it never saw are scored.
    assert select_pairs(pairs) == test
    assert select_pairs(pairs, "all", 10) == select_pairs(list(reversed(pairs)), "all", 10)
    with pytest.raises(ValueError, match="split"):
        select_pairs(pairs, "holdout")
    conversation = [EvalPair((("user", "a"), ("user", "b")), (("user", "c"),), 1)]
    with pytest.raises(ValueError, match="plain-text"):
        select_pairs(conversation, "test")


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(device="cpu")


def _verifiers(model: VerifierModel) -> dict[str, VerifierFactory]:
    return {
        "cosine": CosineOnlyVerifier,
        "guarded": lambda threshold: GuardedVerifier(model, min_cosine=threshold),
    }


def test_trap_file_through_the_real_cache(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    pairs = read_eval_pairs(TRAPS)
    model = VerifierModel()
    report = asyncio.run(evaluate_cache(pairs, embedder, _verifiers(model), [0.85], "pairs", tmp_path))
    row = report["thresholds"][0]
    # The target: near-misses served wrongly < 5% with the verifier; cosine alone serves many.
    assert row["guarded"]["wrong_serve_rate"] < 0.05
    assert row["cosine"]["wrong_serve_rate"] > 0.3
    assert row["guarded"]["recall"] > 0.3
    # Follow-ups after a different history live in another partition: never served, by either.
    for name in ("cosine", "guarded"):
        follow_ups = row[name]["by_kind"]["conversation"]
        assert follow_ups["wrong"] == 0
    assert row["cosine"]["by_kind"]["conversation"]["right"] >= 3


def test_corpus_mode_counts_hits_on_other_entries_as_wrong(
    embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    pairs = [
        EvalPair((("user", "How do I reset my password?"),), (("user", "How can I reset my password?"),), 1),
        EvalPair(
            (("user", "What is the capital of France?"),), (("user", "How could I reset my password?"),), 1
        ),
    ]
    verifiers: dict[str, VerifierFactory] = {"cosine": CosineOnlyVerifier}
    corpus = asyncio.run(evaluate_cache(pairs, embedder, verifiers, [0.8], "corpus", tmp_path))
    alone = asyncio.run(evaluate_cache(pairs, embedder, verifiers, [0.8], "pairs", tmp_path))
    assert (corpus["thresholds"][0]["cosine"]["served"], corpus["thresholds"][0]["cosine"]["right"]) == (2, 1)
    assert (alone["thresholds"][0]["cosine"]["served"], alone["thresholds"][0]["cosine"]["right"]) == (1, 1)


def test_the_command_scores_the_test_split_unless_told_and_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tierwise.training.cli.app import app
    from tierwise.training.verifier_data import QuestionPair, assign_splits

    texts = [(f"How do I learn topic {i}?", f"What is the way to learn topic {i}?") for i in range(60)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": a, "b": b, "label": 1}) + "\n" for a, b in texts))
    splits = assign_splits([QuestionPair(a, b, 1) for a, b in texts])
    report_path = tmp_path / "report.json"
    args = ["cache", "eval", "--pairs", str(path), "--thresholds", "0.9", "--json", str(report_path)]
    result = CliRunner().invoke(
        app, [*args, "--cache-dir", str(tmp_path / "embeddings"), "--device", "cpu"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["split"] == "test" and report["pairs"] == splits.count("test") < len(texts)
    assert f"{splits.count('test')} pairs of the test split" in result.output
    assert "test split, pairs mode" in result.output


@pytest.mark.slow
def test_the_onnx_embedder_decides_the_trap_set_as_the_torch_one_does(tmp_path: Path) -> None:
    """The served embedder against the reference: every threshold serves the same pairs, right and wrong
    (the QQP test split gave the same too: 9,583 pairs, too many to embed twice in every run)."""
    from typer.testing import CliRunner

    from tierwise.cache.onnx_embedder import DEFAULT_DIR
    from tierwise.training.cli.app import app

    reports = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.json"
        args = ["cache", "eval", "--pairs", str(TRAPS), "--split", "all", "--embedder", backend]
        args += ["--onnx-dir", str(ROOT / DEFAULT_DIR), "--cache-dir", str(tmp_path / "vectors")]
        result = CliRunner().invoke(app, [*args, "--device", "cpu", "--json", str(out)])
        assert result.exit_code == 0, result.output
        reports[backend] = json.loads(out.read_text())
    assert reports["onnx"]["embedder"] == "onnx" and reports["torch"]["embedder"] == "torch"
    # The bar: precision and recall within 0.005 (on 242 pairs, no pair may flip).
    pairs = [
        (onnx[name], torch[name])
        for onnx, torch in zip(reports["onnx"]["thresholds"], reports["torch"]["thresholds"], strict=True)
        for name in ("cosine", "guarded")
    ]
    for onnx, torch in [*pairs, (reports["onnx"]["default"], reports["torch"]["default"])]:
        assert onnx["precision"] == pytest.approx(torch["precision"], abs=0.005), (onnx, torch)
        assert onnx["recall"] == pytest.approx(torch["recall"], abs=0.005), (onnx, torch)
    assert (tmp_path / "vectors" / "onnx" / "embeddings.sqlite3").is_file()  # not torch's vectors, reused
