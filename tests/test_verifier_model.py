"""The learned verifier: ONNX export parity, manifest pinning, and the guarded verifier's order of checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_cache_embedding import load_sentence_embedder
from tierwise.cache.verifier_features import FEATURE_NAMES
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.cache.verifier_model import DEFAULT_MODEL_DIR, MANIFEST_NAME, VerifierModel, VerifierModelError
from tierwise.cache.verifier_rules import RuleVerifier
from tierwise.training.make_traps import generate
from tierwise.training.verifier import (
    IDF_FILE,
    MODEL_FILE,
    PROJECTION_FILE,
    PairBlock,
    fit_embedding_projection,
    fit_feature_assets,
    fit_lightgbm,
    pair_block,
    write_model_dir,
)
from tierwise.training.verifier_data import QuestionPair

EMBEDDER_KEY = "test/embedder@48"
DIM = 48
PLAN = ("How do I cancel my plan?", "How can I cancel my plan?")


def _vectors(rng: np.random.Generator, texts: set[str]) -> dict[str, np.ndarray]:
    vectors = {}
    for text in sorted(texts):
        vector = rng.normal(size=DIM).astype(np.float32)
        vectors[text] = vector / np.linalg.norm(vector)
    return vectors


# Made-up embeddings of the texts the verifier tests below judge (unit vectors of the test dimension).
PAIR_VECTORS = _vectors(
    np.random.default_rng(3), {*PLAN, "cancel my subscription", "don't cancel my subscription"}
)


def _pair(query: str, candidate: str) -> tuple[np.ndarray, np.ndarray]:
    return PAIR_VECTORS[query], PAIR_VECTORS[candidate]


def _trap_block() -> tuple[PairBlock, list[QuestionPair], object]:
    """Real features of the trap pairs with made-up vectors: enough rows to grow real trees."""
    pairs = [
        QuestionPair(str(row["a"]), str(row["b"]), int(str(row["label"])))
        for row in generate("train") + generate("eval")
        if isinstance(row["a"], str)
    ]
    vectors = _vectors(np.random.default_rng(7), {text for pair in pairs for text in (pair.a, pair.b)})
    assets = fit_feature_assets(pairs)
    projection = fit_embedding_projection(pairs, vectors)
    return pair_block(pairs, vectors, RuleVerifier(), assets, projection), pairs, projection


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, PairBlock]:
    block, pairs, projection = _trap_block()
    model = fit_lightgbm(block, seed=0)
    out = tmp_path_factory.mktemp("verifier")
    write_model_dir(
        model,
        fit_feature_assets(pairs),
        projection,  # type: ignore[arg-type]
        out,
        embedder_key=EMBEDDER_KEY,
        threshold=0.5,
        min_cosine=-1.0,
    )
    return model, out, block


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_onnx_matches_lightgbm(trained: tuple[object, Path, PairBlock]) -> None:
    model, out, block = trained
    served = VerifierModel(out, expected_embedder_key=EMBEDDER_KEY)
    expected = model.predict_proba(block.features)[:, 1]  # type: ignore[attr-defined]
    np.testing.assert_allclose(served.predict(block.features), expected, atol=1e-5)
    assert served.manifest.feature_names == FEATURE_NAMES


def test_tampered_model_file_is_refused(trained: tuple[object, Path, PairBlock], tmp_path: Path) -> None:
    _, out, _ = trained
    copy = _copy(out, tmp_path / "tampered")
    payload = bytearray((copy / MODEL_FILE).read_bytes())
    payload[len(payload) // 2] ^= 0x01
    (copy / MODEL_FILE).write_bytes(bytes(payload))
    with pytest.raises(VerifierModelError, match="SHA-256"):
        VerifierModel(copy)


@pytest.mark.parametrize("asset", [IDF_FILE, PROJECTION_FILE])
def test_tampered_assets_are_refused(
    trained: tuple[object, Path, PairBlock], tmp_path: Path, asset: str
) -> None:
    _, out, _ = trained
    copy = _copy(out, tmp_path / "tampered")
    (copy / asset).write_bytes(b"\x1f\x8b" + (copy / asset).read_bytes()[2:-1])
    with pytest.raises(VerifierModelError, match="SHA-256"):
        VerifierModel(copy)


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"feature_names": ["cosine"]}, "feature layout"),
        ({"feature_version": 999}, "feature layout"),
        ({"format": 99}, "manifest format"),
        ({"model_file": "../verifier.onnx"}, "bare file names"),
        ({"threshold": 1.5}, "threshold"),
        ({"sha256": {}}, "no SHA-256 pinned"),
        ({"soft_rule_threshold": 0.1}, "soft_rule_threshold"),
        ({"soft_rules": ["number"]}, "both hard and soft"),
    ],
)
def test_mismatching_manifest_is_refused(
    trained: tuple[object, Path, PairBlock], tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    _, out, _ = trained
    copy = _copy(out, tmp_path / "edited")
    _edit_manifest(copy, **changes)
    with pytest.raises(VerifierModelError, match=message):
        VerifierModel(copy)


def test_missing_or_broken_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VerifierModelError, match="no verifier manifest"):
        VerifierModel(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(VerifierModelError, match="cannot read"):
        VerifierModel(tmp_path)


def test_other_embedder_is_refused(trained: tuple[object, Path, PairBlock]) -> None:
    _, out, _ = trained
    with pytest.raises(VerifierModelError, match="cosines of test/embedder@48"):
        VerifierModel(out, expected_embedder_key="other/model@384")


def test_guarded_verifier_checks_floor_then_rules_then_model(trained: tuple[object, Path, PairBlock]) -> None:
    _, out, _ = trained
    model = VerifierModel(out)
    verifier = GuardedVerifier(model, min_cosine=0.5, threshold=0.0)
    low = verifier.verify(*PLAN, 0.3, _pair(*PLAN))
    assert not low.accept and low.reason.startswith("cosine")
    negated = ("cancel my subscription", "don't cancel my subscription")
    rule = verifier.verify(*negated, 0.99, _pair(*negated))
    assert not rule.accept and rule.reason.startswith("rule negation")
    scored = verifier.verify(*PLAN, 0.99, _pair(*PLAN))
    assert scored.accept and scored.reason.startswith("P(same answer)")
    probability = model.probability(*PLAN, 0.99, _pair(*PLAN))
    assert scored.score == pytest.approx(probability)
    # Without the embeddings the model cannot judge: nothing is served.
    blind = verifier.verify(*PLAN, 0.99)
    assert not blind.accept and blind.reason == "no embeddings to compare"
    strict = GuardedVerifier(model, min_cosine=0.5, threshold=1.0)
    assert not strict.verify(*PLAN, 0.99, _pair(*PLAN)).accept


def test_soft_rule_raises_the_bar_instead_of_rejecting(trained: tuple[object, Path, PairBlock]) -> None:
    _, out, _ = trained
    model = VerifierModel(out)
    paris = ("What is the capital of France?", "What is the capital of Germany?")
    vectors = _vectors(np.random.default_rng(5), set(paris))
    pair = (vectors[paris[0]], vectors[paris[1]])
    probability = model.probability(*paris, 0.99, pair)
    assert "entity_order" in model.manifest.hard_rules  # train-verifier keeps every guard hard
    hard = GuardedVerifier(model, min_cosine=0.5, threshold=0.0)
    assert hard.verify(*paris, 0.99, pair).reason.startswith("rule entity")
    # Soft: the same difference now asks for P ≥ soft_rule_threshold instead of rejecting.
    model.manifest = type(model.manifest)(
        **{
            **_fields(model.manifest),
            # entity_replaced would still reject France / Germany: it leaves the hard rules too.
            "hard_rules": tuple(
                name
                for name in model.manifest.hard_rules
                if name not in ("entity", "entity_replaced", "substitution")
            ),
            "soft_rules": ("entity",),
            "soft_rule_threshold": min(1.0, probability + 0.01),
        }
    )
    soft = GuardedVerifier(model, min_cosine=0.5, threshold=0.0)
    above_bar = soft.verify(*paris, 0.99, pair)
    assert not above_bar.accept and "soft rule entity" in above_bar.reason
    model.manifest = type(model.manifest)(**{**_fields(model.manifest), "soft_rule_threshold": probability})
    assert GuardedVerifier(model, min_cosine=0.5, threshold=0.0).verify(*paris, 0.99, pair).accept
    # A pair no soft rule sees keeps the plain threshold.
    assert GuardedVerifier(model, min_cosine=0.5, threshold=0.0).verify(*PLAN, 0.99, _pair(*PLAN)).accept


def test_guarded_verifier_rejects_unknown_rules_and_thresholds(
    trained: tuple[object, Path, PairBlock],
) -> None:
    _, out, _ = trained
    model = VerifierModel(out)
    with pytest.raises(ValueError, match="threshold"):
        GuardedVerifier(model, threshold=2.0)
    model.manifest = type(model.manifest)(**{**_fields(model.manifest), "hard_rules": ("telepathy",)})
    with pytest.raises(ValueError, match="unknown rules"):
        GuardedVerifier(model)


def _fields(manifest: object) -> dict[str, object]:
    return {name: getattr(manifest, name) for name in manifest.__dataclass_fields__}  # type: ignore[attr-defined]


CLASSIC_TRAPS = [
    ("Cancel my subscription.", "Don't cancel my subscription."),
    ("Book a table for 4 people.", "Book a table for 5 people."),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Set an alarm for 7am.", "Set an alarm for 7pm."),
    ("Delete my account.", "Delete all accounts."),
    ("How do I buy bitcoin?", "How do I sell bitcoin?"),
    ("Is the museum open on Monday?", "Is the museum open on Sunday?"),
]


def _embedded(query: str, candidate: str) -> tuple[np.ndarray, np.ndarray]:
    """Real all-MiniLM-L6-v2 vectors, as the cache hands them to the shipped verifier."""
    left, right = load_sentence_embedder().encode([query, candidate])
    return left, right


@pytest.mark.parametrize(("query", "candidate"), CLASSIC_TRAPS)
def test_shipped_model_loads_and_rejects_classic_traps(query: str, candidate: str) -> None:
    verifier = GuardedVerifier.load(
        DEFAULT_MODEL_DIR, expected_embedder_key="sentence-transformers/all-MiniLM-L6-v2@384"
    )
    left, right = _embedded(query, candidate)
    # Even at a cosine no real pair reaches, a near-miss is not served.
    for cosine in (0.95, 0.999):
        assert not verifier.verify(query, candidate, cosine, (left, right)).accept
        assert not verifier.verify(candidate, query, cosine, (right, left)).accept


def test_shipped_model_serves_a_plain_paraphrase() -> None:
    verifier = GuardedVerifier.load()
    query, candidate = "How do I reset my password?", "How can I reset my password?"
    left, right = _embedded(query, candidate)
    verdict = verifier.verify(query, candidate, float(np.dot(left, right)), (left, right))
    assert verdict.accept, verdict.reason
    assert 0.0 <= verdict.score <= 1.0


def test_shipped_model_rejects_a_one_word_substitution() -> None:
    verifier = GuardedVerifier.load()
    assert "substitution" in verifier.model.manifest.hard_rules
    query, candidate = "Which dog foods contain grain?", "Which dog foods lack grain?"
    left, right = _embedded(query, candidate)
    verdict = verifier.verify(query, candidate, float(np.dot(left, right)), (left, right))
    assert not verdict.accept
    assert verdict.reason == "rule substitution: contain vs lack"
