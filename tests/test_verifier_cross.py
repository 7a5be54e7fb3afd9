"""The cross-encoder: tokenisation, export, manifest pinning, and how the guarded verifier asks it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_cache_embedding import load_sentence_embedder
from tierwise.cache.verifier_cross import (
    CrossEncoderSpec,
    PairTokenizer,
    embedder_tokenizer_path,
    tokenizer_sha256,
)
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.cache.verifier_model import (
    DEFAULT_MODEL_DIR,
    MANIFEST_NAME,
    VerifierModel,
    VerifierModelError,
    file_sha256,
)
from tierwise.cache.verifier_rules import RULES_BY_NAME
from tierwise.training.cross_encoder import CROSS_ENCODER_FILE, FineTuning, export_cross_encoder, fine_tune
from tierwise.training.cross_encoder_choice import WEIGHT_GRID, NearMissLimit, PairChecks, choose_setting
from tierwise.training.verifier import trap_pairs

PAIRS = [
    ("How do I cancel my plan?", "How can I cancel my plan?"),
    ("cancel my subscription", "don't cancel my subscription"),
    ("What is 2 + 2?", "What is 3 + 5?"),
    ("Who wrote Hamlet? " * 40, "Which author wrote the play Hamlet?"),
]


@pytest.fixture(scope="module")
def tuned() -> Any:
    """A cross-encoder fine-tuned for two steps: real weights, real export, no claim of quality."""
    pytest.importorskip("torch")
    return fine_tune(trap_pairs(), FineTuning(max_pairs=32, batch_size=16), "cpu", lambda _: None)


@pytest.fixture(scope="module")
def model_dir(tuned: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped verifier with the tiny cross-encoder attached at weight 0.5."""
    directory = tmp_path_factory.mktemp("cross") / "verifier"
    shutil.copytree(DEFAULT_MODEL_DIR, directory)
    export_cross_encoder(tuned, directory / CROSS_ENCODER_FILE)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data["sha256"][CROSS_ENCODER_FILE] = file_sha256(directory / CROSS_ENCODER_FILE)
    data["cross_encoder"] = CrossEncoderSpec(CROSS_ENCODER_FILE, tokenizer_sha256(), 0.5).to_json()
    (directory / MANIFEST_NAME).write_text(json.dumps(data))
    return directory


def _edited(source: Path, target: Path, **cross: object) -> Path:
    shutil.copytree(source, target)
    data = json.loads((target / MANIFEST_NAME).read_text())
    data["cross_encoder"].update(cross)
    (target / MANIFEST_NAME).write_text(json.dumps(data))
    return target


def test_pair_tokenizer_matches_transformers() -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(embedder_tokenizer_path().parent)
    ours = PairTokenizer(embedder_tokenizer_path().read_bytes(), 128)
    for query, candidate in PAIRS:
        expected = reference(query, candidate, truncation=True, max_length=128)
        got = ours.encode([(query, candidate)])
        assert got["input_ids"][0].tolist() == expected["input_ids"]
        assert got["token_type_ids"][0].tolist() == expected["token_type_ids"]
    assert ours.encode([PAIRS[3]])["input_ids"].shape[1] == 128  # the long pair is truncated


def test_exported_cross_encoder_tracks_torch(tuned: Any, model_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    cross = VerifierModel(model_dir).cross_encoder
    assert cross is not None
    tokenizer = AutoTokenizer.from_pretrained(embedder_tokenizer_path().parent)
    for query, candidate in PAIRS:
        inputs = tokenizer(query, candidate, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            expected = float(torch.sigmoid(tuned(**inputs)).item())
        # int8 weights: close to the float model, not equal.
        assert cross.probability(query, candidate) == pytest.approx(expected, abs=0.05)
    # A padded batch reads each pair as it reads it alone (the attention mask made it through the export).
    batch = cross.probabilities(PAIRS)
    singles = [cross.probability(query, candidate) for query, candidate in PAIRS]
    np.testing.assert_allclose(batch, singles, atol=0.02)


def test_verdict_mixes_classifier_and_cross_encoder(model_dir: Path) -> None:
    model = VerifierModel(model_dir)
    verifier = GuardedVerifier(model, threshold=0.0, min_cosine=-1.0, rules=[], soft_rules=[])
    vectors = (np.ones(384, dtype=np.float32) / np.sqrt(384), np.ones(384, dtype=np.float32) / np.sqrt(384))
    query, candidate = PAIRS[0]
    verdict = verifier.verify(query, candidate, 1.0, vectors)
    classifier = model.probability(query, candidate, 1.0, vectors)
    assert model.cross_encoder is not None
    crossed = model.cross_encoder.probability(query, candidate)
    assert verdict.score == pytest.approx(0.5 * classifier + 0.5 * crossed, abs=1e-6)
    assert "cross-encoder" in verdict.reason and verdict.accept


def test_cross_encoder_is_not_asked_when_it_cannot_lift_the_pair(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = VerifierModel(model_dir)
    assert model.cross_encoder is not None

    def refuse(*_: object) -> float:
        raise AssertionError("the cross-encoder was asked")

    monkeypatch.setattr(model.cross_encoder, "probability", refuse)
    vectors = (np.eye(384, dtype=np.float32)[0], np.eye(384, dtype=np.float32)[1])
    query, candidate = PAIRS[0]
    classifier = model.probability(query, candidate, 0.0, vectors)
    # A threshold above what a certain "same" could reach: 0.5 · classifier + 0.5 < threshold.
    threshold = min(1.0, 0.5 * classifier + 0.5 + 1e-3)
    verdict = GuardedVerifier(model, threshold=threshold, min_cosine=-1.0, rules=[], soft_rules=[]).verify(
        query, candidate, 0.0, vectors
    )
    assert not verdict.accept and "not asked" in verdict.reason


def test_tampered_cross_encoder_is_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(model_dir, copy)
    payload = bytearray((copy / CROSS_ENCODER_FILE).read_bytes())
    payload[len(payload) // 3] ^= 0x01
    (copy / CROSS_ENCODER_FILE).write_bytes(bytes(payload))
    with pytest.raises(VerifierModelError, match="SHA-256"):
        VerifierModel(copy)


def test_another_tokenizer_is_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = _edited(model_dir, tmp_path / "foreign", tokenizer_sha256="0" * 64)
    with pytest.raises(VerifierModelError, match="tokenizer"):
        VerifierModel(copy)


@pytest.mark.parametrize("changes", [{"weight": 1.5}, {"max_tokens": 4}, {"model_file": None}])
def test_malformed_cross_encoder_section_is_refused(
    model_dir: Path, tmp_path: Path, changes: dict[str, object]
) -> None:
    copy = _edited(model_dir, tmp_path / "malformed", **changes)
    with pytest.raises(VerifierModelError):
        VerifierModel(copy)


def _checks(labels: np.ndarray, entity: np.ndarray | None = None) -> PairChecks:
    size = len(labels)
    fires = {name: np.zeros(size, dtype=bool) for name in RULES_BY_NAME if name != "entity"}
    fires["entity"] = np.zeros(size, dtype=bool) if entity is None else entity
    return PairChecks(labels.astype(np.int64), np.full(size, 0.99, dtype=np.float32), fires)


def test_weight_follows_what_the_cross_encoder_knows() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.4).astype(np.int64)
    # The classifier knows a little; an informed cross-encoder knows more, a noisy one nothing.
    classifier = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, 4000), 0, 1).astype(np.float32)
    informed = np.clip(0.2 + 0.6 * labels + rng.normal(0, 0.1, 4000), 0, 1).astype(np.float32)
    noise = rng.random(4000).astype(np.float32)
    checks = _checks(labels)
    assert choose_setting(checks, classifier, informed, 0.90)[0].weight > 0.0
    assert choose_setting(checks, classifier, noise, 0.90)[0].weight == 0.0
    assert set(WEIGHT_GRID) >= {0.0, 1.0}


def test_a_rule_that_rejects_good_pairs_becomes_soft_and_one_that_protects_stays_hard() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(4000) < 0.4).astype(np.int64)
    probability = np.clip(0.3 + 0.5 * labels + rng.normal(0, 0.1, 4000), 0, 1).astype(np.float32)
    # The entity rule fires on a fifth of the pairs, whatever their label: rejecting them only loses recall.
    blind_rule = rng.random(4000) < 0.2
    setting, metrics = choose_setting(_checks(labels, blind_rule), probability, probability, 0.90)
    assert "entity" in setting.soft_rules and metrics.precision_lower_bound >= 0.90
    # Fired only on label-0 pairs the model likes: softening it would serve them, so it stays hard.
    trap = (labels == 0) & (rng.random(4000) < 0.5)
    fooled = np.where(trap, 0.95, probability).astype(np.float32)
    setting, _ = choose_setting(_checks(labels, trap), fooled, fooled, 0.90)
    assert "entity" in setting.hard_rules
    assert setting.served(_checks(labels, trap), fooled, fooled)[trap].sum() == 0


def test_a_setting_that_serves_the_held_apart_near_misses_is_not_chosen() -> None:
    rng = np.random.default_rng(2)
    labels = (rng.random(4000) < 0.4).astype(np.int64)
    classifier = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, 4000), 0, 1).astype(np.float32)
    cross = np.clip(0.2 + 0.6 * labels + rng.normal(0, 0.1, 4000), 0, 1).astype(np.float32)
    checks = _checks(labels)
    unconstrained, _ = choose_setting(checks, classifier, cross, 0.90)
    assert unconstrained.weight > 0.0
    # Held-apart pairs: the cross-encoder likes their near-misses (0.9), the classifier does not (0.1).
    trap_labels = np.array([0] * 50 + [1] * 50, dtype=np.int64)
    trap_cross = np.full(100, 0.9, dtype=np.float32)
    trap_classifier = np.where(trap_labels == 1, 0.9, 0.1).astype(np.float32)
    limit = NearMissLimit(_checks(trap_labels), trap_classifier, trap_cross, limit=0.04)
    assert limit.served_shares(unconstrained)["near_misses"] > 0.04
    chosen, metrics = choose_setting(checks, classifier, cross, 0.90, limit)
    assert limit.served_shares(chosen)["near_misses"] <= 0.04 and metrics.precision_lower_bound >= 0.90
    assert limit.served_shares(chosen)["paraphrases"] == 1.0


def test_spec_round_trips() -> None:
    spec = CrossEncoderSpec(CROSS_ENCODER_FILE, "ab" * 32, 0.75, 96)
    assert CrossEncoderSpec.from_json(spec.to_json()) == spec
    assert dataclasses.replace(spec, weight=0.5).weight == 0.5


def test_cross_encoder_answers_from_several_threads(model_dir: Path) -> None:
    # The cache verifies on a pool of worker threads that share one model.
    from concurrent.futures import ThreadPoolExecutor

    cross = VerifierModel(model_dir).cross_encoder
    assert cross is not None
    expected = [cross.probability(query, candidate) for query, candidate in PAIRS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda _: [cross.probability(q, c) for q, c in PAIRS], range(16)))
    for run in runs:
        np.testing.assert_allclose(run, expected, atol=1e-6)


def test_train_cross_encoder_writes_a_verifier_that_loads(tmp_path: Path) -> None:
    """The command's whole path on a small pairs file: fine-tune, export, choose, test, manifest."""
    from tierwise.cache.verifier_rules import RULES_BY_NAME
    from tierwise.training.cross_encoder import attach_cross_encoder
    from tierwise.training.make_traps import generate

    sentence_embedder = load_sentence_embedder()
    pairs_file = tmp_path / "pairs.jsonl"
    rows = [row for row in generate("train") + generate("eval") if isinstance(row["a"], str)]
    pairs_file.write_text(
        "".join(json.dumps({"a": r["a"], "b": r["b"], "label": r["label"]}) + "\n" for r in rows)
    )
    model_dir = tmp_path / "verifier"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    report = attach_cross_encoder(
        model_dir,
        pairs_file,
        sentence_embedder,
        tmp_path / "embeddings",
        settings=FineTuning(max_pairs=32),
        device="cpu",
        precision_target=0.5,
        log=lambda _: None,
    )
    verifier = GuardedVerifier.load(model_dir, expected_embedder_key=sentence_embedder.info.key)
    manifest = verifier.model.manifest
    assert set(manifest.hard_rules) | set(manifest.soft_rules) == set(RULES_BY_NAME)
    assert {"number_replaced", "entity_replaced"} <= set(manifest.hard_rules)
    assert manifest.threshold <= manifest.soft_rule_threshold <= 1.0
    assert (manifest.cross_encoder is None) == (not (model_dir / CROSS_ENCODER_FILE).exists())
    if manifest.cross_encoder is not None:
        assert manifest.cross_encoder.weight in WEIGHT_GRID
    # Scored once on the file's test split, every pair of it and no other: the counts say which pairs.
    from tierwise.training.verifier_data import pairs_by_split, read_pairs

    test_labels = [pair.label for pair in pairs_by_split(read_pairs(pairs_file))["test"]]
    tested = report["test"]["guarded"]
    assert (tested["positives"], tested["negatives"]) == (sum(test_labels), test_labels.count(0))
    assert 0 < sum(test_labels) < len(test_labels) and tested["served"] <= len(test_labels)
    assert "guarded_classifier_only" in report["validation"]
    assert report["cross_encoder_training"]["max_pairs"] == 32
